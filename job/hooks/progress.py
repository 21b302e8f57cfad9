"""Progress of a run: a bar per epoch on a terminal (steps, images/s, loss, top-1, LR, ETA), a log line at most every
30 s otherwise (kubectl logs, CI: carriage returns are noise there), and one line per epoch and its validation."""
from __future__ import annotations

import logging
import os
import sys
import time

from tqdm import tqdm

from job.hooks.base import Hook

log = logging.getLogger("job")


class EpochProgress:
    def __init__(self, epoch: int, total_epochs: int, steps_per_epoch: int, first_step: int,
                 enabled: bool = True, log_seconds: float = 30.0):
        self.started = time.perf_counter()
        self.epoch, self.total_epochs = epoch, total_epochs
        self.steps_per_epoch, self.first, self.done = steps_per_epoch, first_step, first_step
        self.enabled, self.log_seconds = enabled, log_seconds
        self.last_log = self.started
        self.bar = None
        if enabled and (sys.stderr.isatty() or os.environ.get("JOB_PROGRESS") == "bar"):
            self.bar = tqdm(total=steps_per_epoch, initial=first_step, desc=f"epoch {epoch}/{total_epochs}",
                            unit="step", dynamic_ncols=True, leave=True, file=sys.stderr)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def update(self, steps: int, *, loss: float, top1: float, lr: float, images_per_second: float) -> None:
        self.done += steps
        figures = f"loss={loss:.4f} top1={top1:.3f} lr={lr:.3g} {images_per_second:,.0f} img/s"
        if self.bar is not None:
            self.bar.set_postfix_str(figures, refresh=False)
            self.bar.update(steps)
        elif self.enabled and time.perf_counter() - self.last_log >= self.log_seconds:
            self.last_log = time.perf_counter()
            rate = (self.done - self.first) / max(self.elapsed, 1e-9)
            eta = (self.steps_per_epoch - self.done) / max(rate, 1e-9)
            log.info("epoch %d/%d step %d/%d %s ETA %ds", self.epoch, self.total_epochs, self.done,
                     self.steps_per_epoch, figures, eta)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class ProgressHook(Hook):
    """The bar (or periodic line) on the chief; the per-epoch lines on every worker."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.progress: EpochProgress | None = None

    def on_epoch_start(self, state):
        run = state.run
        self.progress = EpochProgress(state.epoch + 1, run.total_epochs, run.steps_per_epoch,
                                      state.step - state.epoch * run.steps_per_epoch, enabled=self.enabled)

    def on_interval_end(self, state):
        stats = state.train
        self.progress.update(stats["steps"], loss=stats["loss"], top1=stats["top1"], lr=stats["lr"],
                             images_per_second=stats["images_per_second"])

    def on_epoch_end(self, state):
        self.progress.close()
        train, validation = state.train, state.validation
        log.info("epoch %d/%d  step %d  loss %.4f  top-1 %.4f  top-5 %.4f  %.0f img/s", state.epoch + 1,
                 state.run.total_epochs, state.step, train["loss"], train["top1"], train["top5"],
                 train["images_per_second"])
        if validation:
            log.info("epoch %d validation: loss %.4f  top-1 %.4f  top-5 %.4f", state.epoch + 1,
                     validation["val_loss"], validation["val_top1"], validation["val_top5"])
        if validation and "ema_val_top1" in validation:
            log.info("epoch %d validation of the averaged weights: loss %.4f  top-1 %.4f  top-5 %.4f",
                     state.epoch + 1, validation["ema_val_loss"], validation["ema_val_top1"],
                     validation["ema_val_top5"])

    def on_train_end(self, state):
        if self.progress is not None:
            self.progress.close()
