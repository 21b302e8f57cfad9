"""The hook interface: everything around the training step plugs into the loop here.

The loop (job/loop.py) calls every hook at each event, in the order of the list it was given; a hook reads what it
needs from the loop (`loop.step`, `loop.cfg`, `loop.parts`, `loop.learning_rate()`) and may act through it:
`loop.save(...)` to checkpoint now, `loop.request_stop(reason, kind)` to end the run (the request goes through the
all-worker agreement of job/stopping.py, so every worker stops after the same step). Every worker runs the same hooks,
so a hook that saves or asks to stop must decide the same way on every worker, or leave the agreement to the request.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from job.loop import Loop


class Hook:
    def on_train_start(self, loop: Loop) -> None:
        """After the model is restored or initialised, before the first step of this process."""

    def on_epoch_start(self, loop: Loop, epoch: int) -> None:
        """Before the epoch's first step (or the first step left in it, on resume). `epoch` counts from 0."""

    def on_first_step(self, loop: Loop, batch: Any) -> None:
        """Once per process, after its first step; `batch` is that step's (possibly per-replica) input."""

    def on_step_end(self, loop: Loop, step: int) -> None:
        """After every step. Only hooks that override this are called: keep it cheap, it is on the hot path."""

    def on_interval_end(self, loop: Loop, stats: dict[str, float]) -> None:
        """The train metrics were read (every run.log_every_steps steps, at an epoch's end, and on a stop):
        `stats` has loss, top1, top5, images_per_second, step_seconds, lr and the steps of the interval."""

    def on_epoch_end(self, loop: Loop, epoch: int, train: dict[str, float], validation: dict[str, float] | None
                     ) -> None:
        """A complete epoch: its train metrics (loss, top1, top5, images_per_second) and, with a validation split,
        val_loss, val_top1 and val_top5. The loop saves the epoch's checkpoint right after."""

    def on_checkpoint_saved(self, loop: Loop, step: int, blocking_seconds: float) -> None:
        """A checkpoint of `step` was snapshotted; its write and commit (checksums, upload, commit object) run in the
        background. `blocking_seconds`: how long training waited (the copy into host memory, and any wait for the
        previous save's write to end)."""

    def on_train_end(self, loop: Loop, outcome: str, evaluation: dict[str, Any] | None) -> None:
        """The last event of this process. `outcome`: finished (all epochs), stopped (a hook's request), or preempted
        (a signal: the next start resumes). `evaluation`: the final test metrics (the chief's, when not preempted)."""

    def on_failure(self, loop: Loop, error: BaseException) -> None:
        """The run failed with `error` after the loop was made (it is re-raised after the hooks): instead of
        on_train_end."""
