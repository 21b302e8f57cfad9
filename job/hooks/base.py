"""The hook interface: everything around the training step plugs into the loop here.

The loop (job/loop.py) owns the run: the step, the metric intervals, the checkpoints and the best validation top-1. At
each `Event` it hands every hook, in the order of its list, a read-only `State`. A hook changes the run only through
what it returns:
- `Stop(reason, kind)` ends the run after the current step, through the all-worker agreement of job/stopping.py, so
  every worker stops after the same step even if only one asked;
- `Save()` checkpoints at the current step (step, interval and epoch events); every worker must ask at the same step,
  since every worker takes part in a save.
Anything else a hook does (files, TensorBoard, a tuner's report) is its own business. Every worker runs the same hooks.

Step events: a hook whose `every_steps` is N > 0 gets `on_step` after every step that is a multiple of N, and only
then. The loop ends a compiled call (train.steps_per_call) at those steps, so a hook sees the same steps at any steps
per call; hooks with every_steps 0 cost nothing per step. (A hook with every_steps 1 makes every call one step long.)
"""
from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from job.stopping import FINISH

if TYPE_CHECKING:
    from job.config import Config


class Event(enum.Enum):
    TRAIN_START = "train_start"  # after the model is restored or initialised, before this process's first step
    EPOCH_START = "epoch_start"  # before the epoch's first step (or the first step left in it, on resume)
    FIRST_STEP = "first_step"  # once per process, after its first step; State.batch is that step's input
    STEP = "step"  # after each step that is a multiple of the hook's every_steps
    INTERVAL_END = "interval_end"  # the train metrics were read (run.log_every_steps, an epoch's end, a stop)
    EPOCH_END = "epoch_end"  # a complete epoch, validated; the loop saves its checkpoint right after
    CHECKPOINT_SAVED = "checkpoint_saved"  # a checkpoint was snapshotted; its write and commit run in the background
    TRAIN_END = "train_end"  # the last event of this process (after the final evaluation, when there is one)
    FAILURE = "failure"  # an exception ended the run (it is re-raised after the hooks), instead of TRAIN_END


@dataclass(frozen=True)
class RunInfo:
    """What stays fixed for a process's run."""
    cfg: Config
    url: str  # the run directory (local path or gs://)
    local: Path  # its local working copy (the run directory itself for local runs)
    steps_per_epoch: int
    total_epochs: int
    total_steps: int
    worker_index: int
    num_workers: int
    is_chief: bool


@dataclass(frozen=True)
class State:
    """The run as the loop sees it at one event. Fields that belong to other events are None."""
    event: Event
    run: RunInfo
    step: int  # steps done
    epoch: int  # the epoch being trained, counted from 0 (at EPOCH_END: the epoch just ended)
    lr: float  # the learning rate of the next step
    best_val_top1: float | None  # the best validation top-1 so far (None before one, or without a split): of the
                                 # averaged weights in a run that keeps them (job.metrics.best_metric)
    epochs_without_improvement: int
    # INTERVAL_END: the interval's loss, top1, top5, images_per_second, step_seconds, lr, steps.
    # EPOCH_END: the epoch's loss, top1, top5, images_per_second.
    train: Mapping[str, float] | None = None
    validation: Mapping[str, float] | None = None  # EPOCH_END with a validation split: val_loss, val_top1, val_top5
    batch: Any = None  # FIRST_STEP: the step's (possibly per-replica) input
    saved_step: int | None = None  # CHECKPOINT_SAVED
    blocking_seconds: float | None = None  # CHECKPOINT_SAVED: how long training waited for the save
    outcome: str | None = None  # TRAIN_END: finished, stopped (a hook's request) or preempted (a signal)
    stop_reason: str | None = None  # TRAIN_END: why the run stopped, when it did
    evaluation: Mapping[str, Any] | None = None  # TRAIN_END: the final test metrics (the chief's, if not preempted)
    error: BaseException | None = None  # FAILURE


@dataclass(frozen=True)
class Stop:
    """A hook's request to end the run after the current step (job/stopping.py: FINISH ends it with the final
    evaluation; PREEMPT commits a checkpoint and exits 75 for a later resume)."""
    reason: str
    kind: str = FINISH


@dataclass(frozen=True)
class Save:
    """A hook's request to checkpoint the current step, with optional metrics stored in its commit object."""
    metrics: Mapping[str, float] | None = None


Action = Stop | Save | None


class Hook:
    every_steps: int = 0  # > 0: on_step after every multiple of it (see the module's docstring)

    def on_train_start(self, state: State) -> Action: ...

    def on_epoch_start(self, state: State) -> Action: ...

    def on_first_step(self, state: State) -> Action: ...

    def on_step(self, state: State) -> Action: ...

    def on_interval_end(self, state: State) -> Action: ...

    def on_epoch_end(self, state: State) -> Action: ...

    def on_checkpoint_saved(self, state: State) -> Action: ...

    def on_train_end(self, state: State) -> Action: ...

    def on_failure(self, state: State) -> Action: ...

    def handle(self, state: State) -> Action:
        return _HANDLERS[state.event](self, state)


_HANDLERS = {  # each event's method, looked up on the hook's class (so overrides count)
    Event.TRAIN_START: lambda hook, state: hook.on_train_start(state),
    Event.EPOCH_START: lambda hook, state: hook.on_epoch_start(state),
    Event.FIRST_STEP: lambda hook, state: hook.on_first_step(state),
    Event.STEP: lambda hook, state: hook.on_step(state),
    Event.INTERVAL_END: lambda hook, state: hook.on_interval_end(state),
    Event.EPOCH_END: lambda hook, state: hook.on_epoch_end(state),
    Event.CHECKPOINT_SAVED: lambda hook, state: hook.on_checkpoint_saved(state),
    Event.TRAIN_END: lambda hook, state: hook.on_train_end(state),
    Event.FAILURE: lambda hook, state: hook.on_failure(state),
}
