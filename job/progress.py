"""Progress of an epoch: images/s, loss, top-1, LR and ETA.

On a terminal it is a tqdm bar. In a log (kubectl logs, CI) carriage returns are noise, so the same figures go out as a
plain log line at most every `log_seconds`.
"""
from __future__ import annotations

import logging
import os
import sys
import time

from tqdm import tqdm

log = logging.getLogger("job")


class EpochProgress:
    def __init__(self, epoch: int, total_epochs: int, steps_per_epoch: int, first_step: int, batch_size: int,
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
