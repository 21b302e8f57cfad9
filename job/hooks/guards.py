"""Hooks that end a run: a diverged loss, a validation top-1 that stopped improving, and the periodic checkpoint."""
from __future__ import annotations

import logging
import math

from job.errors import UserError
from job.hooks.base import Hook, Save, Stop

log = logging.getLogger("job")


class DivergenceGuard(Hook):
    """Stop a run whose loss stays NaN/inf: every later step would be wasted GPU time. One bad interval is tolerated
    (float16 loss scaling skips an overflowing step and recovers by itself). The loss is all-reduced, so every worker
    raises at the same step."""

    def __init__(self):
        self.bad_intervals = 0

    def on_interval_end(self, state):
        loss = state.train["loss"]
        self.bad_intervals = 0 if math.isfinite(loss) else self.bad_intervals + 1
        if self.bad_intervals >= 2:
            raise UserError(f"training diverged: the loss is {loss} at step {state.step} (learning rate "
                            f"{state.train['lr']:.3g}); lower optim.lr, add optim.warmup_epochs or optim.clip_norm, "
                            "and start a new run.dir")


class EarlyStopping(Hook):
    """With train.early_stopping_patience, finishes the run after that many epochs without a better validation top-1
    (the loop counts them, in the checkpoint, so a resume goes on counting)."""

    def __init__(self, patience: int):
        self.patience = patience

    def _exhausted(self, state) -> bool:
        return bool(self.patience) and state.epochs_without_improvement >= self.patience

    def on_train_start(self, state):
        if self._exhausted(state):  # a run that had stopped early and was started again
            return Stop("early stopping: patience already exhausted")

    def on_epoch_end(self, state):
        if state.validation and self._exhausted(state):
            log.info("early stopping: validation top-1 has not improved for %d epochs", self.patience)
            return Stop("early stopping")


class PeriodicCheckpoint(Hook):
    """A checkpoint every checkpoint.every_steps steps inside an epoch (the loop saves at each epoch's end anyway)."""

    def __init__(self, every_steps: int, steps_per_epoch: int):
        self.every_steps, self.steps_per_epoch = every_steps, steps_per_epoch

    def on_step(self, state):
        if state.step % self.steps_per_epoch:
            return Save()
