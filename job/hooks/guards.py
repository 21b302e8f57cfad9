"""Hooks that end a run: a diverged loss, a validation top-1 that stopped improving, and the periodic checkpoint."""
from __future__ import annotations

import logging
import math

from job.errors import UserError
from job.hooks.base import Hook
from job.metrics import BEST_METRIC
from job.stopping import FINISH

log = logging.getLogger("job")


class DivergenceGuard(Hook):
    """Stop a run whose loss stays NaN/inf: every later step would be wasted GPU time. One bad interval is tolerated
    (float16 loss scaling skips an overflowing step and recovers by itself). The loss is all-reduced, so every worker
    raises at the same step."""

    def __init__(self):
        self.bad_intervals = 0

    def on_interval_end(self, loop, stats):
        loss = stats["loss"]
        self.bad_intervals = 0 if math.isfinite(loss) else self.bad_intervals + 1
        if self.bad_intervals >= 2:
            raise UserError(f"training diverged: the loss is {loss} at step {loop.step} (learning rate "
                            f"{stats['lr']:.3g}); lower optim.lr, add optim.warmup_epochs or optim.clip_norm, and "
                            "start a new run.dir")


class EarlyStopping(Hook):
    """Tracks the best validation top-1 in the checkpointed train state (so a resume continues the count) and, with
    train.early_stopping_patience, finishes the run after that many epochs without a better one."""

    def __init__(self, patience: int):
        self.patience = patience

    def _exhausted(self, loop) -> bool:
        return bool(self.patience) and int(loop.parts.state.epochs_without_improvement.numpy()) >= self.patience

    def on_train_start(self, loop):
        if self._exhausted(loop):  # a run that had stopped early and was started again
            loop.request_stop("early stopping: patience already exhausted")

    def on_epoch_end(self, loop, epoch, train, validation):
        if not validation:
            return
        state = loop.parts.state
        if validation[BEST_METRIC] > state.best_val_top1.numpy():
            state.best_val_top1.assign(validation[BEST_METRIC])
            state.epochs_without_improvement.assign(0)
        else:
            state.epochs_without_improvement.assign_add(1)
        if self._exhausted(loop):
            log.info("early stopping: validation top-1 has not improved for %d epochs", self.patience)
            loop.request_stop("early stopping", FINISH)


class PeriodicCheckpoint(Hook):
    """A checkpoint every checkpoint.every_steps steps inside an epoch (the loop saves at each epoch's end anyway)."""

    def __init__(self, every_steps: int, steps_per_epoch: int):
        self.every_steps, self.steps_per_epoch = every_steps, steps_per_epoch

    def on_step_end(self, loop, step):
        if step % self.every_steps == 0 and step % self.steps_per_epoch:
            loop.save()
