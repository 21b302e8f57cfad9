"""Stopping a run early, on every worker after the same step.

Two kinds of request:
- *preempt*: SIGTERM (pod eviction, preemption), SIGINT, or SIGUSR1 (what mpirun passes on to the ranks when an
  MPIJob's launcher is stopped; job/relay.py). Commit a checkpoint and exit 75, so the next start resumes.
- *finish*: a hook decided the run is done (early stopping, a tuner's pruning). Commit, then evaluate and export as
  at the natural end.

A request only sets this worker's flag. The run stops once the flags have been summed over all workers: by each
training step's all-reduce (the step carries this worker's votes), or by `settle` between epochs. So all workers
leave the loop after the same step and take part in the same final save; stopping on a local flag alone would let
one worker save while another starts the next step, both would wait in different collectives until the timeout, and
no checkpoint would be committed. Preempting wins over finishing: it is the quicker way out.
"""
from __future__ import annotations

import logging
import signal

import tensorflow as tf

log = logging.getLogger("job")

PREEMPT, FINISH = "preempt", "finish"


class StopRequest:
    def __init__(self) -> None:
        self.reason = ""  # this worker's request, if any
        self.kind = ""
        self.agreed = ""  # the kind all workers agreed on; "" while none
        self._votes: dict[str, tf.Tensor] = {}

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self.kind == PREEMPT:  # a second signal: the user really means it
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        self.request(f"{name} received", PREEMPT)
        log.warning("%s received: saving a checkpoint at the end of this step", name)

    def request(self, reason: str, kind: str = FINISH) -> None:
        """Ask this worker to stop; a later preempt overrides a finish."""
        if not self.kind or kind == PREEMPT:
            self.reason, self.kind = reason, kind

    @property
    def votes(self) -> tf.Tensor:
        """This worker's request as a step input: summed over all replicas by the step, read back by `agree`."""
        if not self._votes:  # made once, on first use: a new constant per step would cost time, and none may exist
            # before the backend has started (MultiWorkerMirroredStrategy, virtual CPU devices)
            self._votes = {kind: tf.constant([float(kind == PREEMPT), float(kind == FINISH)])
                           for kind in ("", PREEMPT, FINISH)}
        return self._votes[self.kind]

    def agree(self, votes) -> None:
        """`votes`: the (preempt, finish) requests summed over all replicas of all workers."""
        preempt, finish = votes.numpy() if isinstance(votes, tf.Tensor) else votes  # per step: no conversions
        kind = PREEMPT if preempt > 0 else FINISH if finish > 0 else ""
        if kind and kind != self.agreed and self.agreed != PREEMPT:
            if not self.kind:
                log.warning("another worker was asked to stop (%s): saving a checkpoint at the end of this step", kind)
            self.agreed = kind

    def settle(self, backend) -> None:
        """Agree between steps (at an epoch's end), where no step carries the votes: one collective sum."""
        preempt, finish = (float(v) for v in self.votes.numpy())  # this worker's
        if backend.num_workers > 1:
            summed = backend.all_reduce_sum({"preempt": preempt, "finish": finish})
            preempt, finish = summed["preempt"], summed["finish"]
        self.agree((preempt, finish))

    @property
    def preempted(self) -> bool:
        return self.agreed == PREEMPT

    def __bool__(self) -> bool:
        return bool(self.agreed)
