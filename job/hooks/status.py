"""The chief's status record, `status.json` in the run, read by `python -m job status` (job/status.py).

It says where the run is (phase, step, epoch), how fast it goes, its last metrics, and every process start, so a
run's owner can see it from anywhere without TensorFlow. A heartbeat thread rewrites it every
`run.summary_flush_seconds` (not at every interval: each write is an upload), so its `updated_at` stays fresh through
validation, checkpoint saves and the final evaluation; a record that stops changing on a run that is not finished
means the process is gone (kill -9, a lost node). Phase changes are written at once. The hook also owns this start's
log file in the run (job/runlog.py).
"""
from __future__ import annotations

import collections
import copy
import logging
import os
import socket
import threading
import time
from typing import Any

from job.errors import UserError, first_line
from job.hooks.base import Hook
from job.layout import STATUS_FILE, TRAINER_LOG_DIR
from job.proc import start_time
from job.records import end_start, json_number, mark_lost, new_start
from job.runlog import RunLog

log = logging.getLogger("job")

FORMAT = 1
RUNNING, FAILED = "running", "failed"  # besides the loop's outcomes: finished, stopped, preempted
_KEPT_STARTS = 100  # the start count goes on; the list keeps the newest
_RATE_WINDOW_SECONDS = 600.0  # the recent step rate (for the ETA) is measured over this much wall-clock time


class StatusHook(Hook):
    def __init__(self, parts):
        self.run = parts.run
        self.flush_seconds = parts.cfg.run.summary_flush_seconds
        self.started = start_time()
        self.runlog = RunLog.open(parts.run.local, self.started)
        self.run.watch(TRAINER_LOG_DIR)  # the log goes up as it grows, at the flush cadence
        self._lock = threading.Lock()  # the record: events on the training thread, writes on the heartbeat's
        self._write_lock = threading.Lock()  # the file: both threads write it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples: collections.deque[tuple[float, int]] = collections.deque()  # (monotonic, step)
        previous = self.run.read_record(STATUS_FILE)  # downloaded for a remote run: a new pod's copy is empty
        starts = previous.get("starts", []) if isinstance(previous.get("starts"), list) else []
        mark_lost(starts)  # the previous process never wrote its end: killed or lost
        start = new_start(parts.step, parts.steps_per_epoch, log=self.runlog.relpath)
        start["started_at"] = self.started  # the process's own start, imports included
        self.record: dict[str, Any] = {
            "format": FORMAT, "phase": RUNNING, "reason": "starting",
            "step": parts.step, "epoch": parts.step // parts.steps_per_epoch + 1, "total_epochs": parts.total_epochs,
            "total_steps": parts.total_steps, "steps_per_epoch": parts.steps_per_epoch,
            "batch_size": parts.cfg.train.batch_size, "replicas": parts.backend.num_replicas,
            "workers": parts.backend.num_workers, "model": parts.cfg.model.name, "dataset": parts.cfg.data.name,
            # The previous start's last metrics until this one has its own.
            "images_per_second": None, "steps_per_second": None, "train": previous.get("train"),
            "validation": previous.get("validation"),
            "start_count": int(previous.get("start_count", 0)) + 1,
            "starts": (starts + [start])[-_KEPT_STARTS:],
            "host": socket.gethostname(), "pid": os.getpid(), "log": self.runlog.relpath,
            "flush_seconds": self.flush_seconds, "updated_at": None,
        }
        self._write()

    # --- events --------------------------------------------------------------------------------------------------
    def on_train_start(self, state):
        self._update(phase=RUNNING, reason="training", step=state.step)
        self._write()
        self._thread = threading.Thread(target=self._heartbeat, name="status heartbeat", daemon=True)
        self._thread.start()

    def on_epoch_start(self, state):
        self._update(epoch=state.epoch + 1)

    def on_interval_end(self, state):
        now, stats = time.monotonic(), state.train
        with self._lock:
            # The first interval of a process includes tracing and compiling: the rate starts after it.
            self._samples.append((now, state.step))
            while len(self._samples) > 2 and now - self._samples[1][0] > _RATE_WINDOW_SECONDS:
                self._samples.popleft()
            (t0, s0), (t1, s1) = self._samples[0], self._samples[-1]
            rate = (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else None
            self.record.update(step=state.step, images_per_second=json_number(stats["images_per_second"]),
                               steps_per_second=rate and json_number(rate),
                               train={k: json_number(stats[k]) for k in ("loss", "top1", "top5", "lr")})

    def on_epoch_end(self, state):
        if state.validation:
            self._update(validation={"epoch": state.epoch + 1,
                                     **{k: json_number(v) for k, v in state.validation.items()}})

    def on_train_end(self, state):
        outcome = state.outcome
        reason = {"finished": "all epochs trained", "preempted": f"{state.stop_reason}: checkpoint committed, "
                  "run again to resume"}.get(outcome, state.stop_reason)
        final = None
        if state.evaluation:
            final = {k: state.evaluation[k] for k in ("loss", "top1", "top5", "step") if k in state.evaluation}
        self._end(outcome, reason, step=state.step, evaluation=final)

    def on_failure(self, state):
        """An exception ended the run: the record says failed, with the reason, and the run's log gets it."""
        error = state.error
        reason = first_line(error) if isinstance(error, UserError) else f"{type(error).__name__}: {_gist(error)}"
        if isinstance(error, KeyboardInterrupt):
            reason = "interrupted by a second signal before the checkpoint was committed"
        self.runlog.write_error(error)
        self._end(FAILED, reason, step=state.step)

    # --- internals -----------------------------------------------------------------------------------------------
    def _end(self, phase: str, reason: str, **fields) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            end_start(self.record["starts"][-1], phase, fields.get("step"))
        self._update(phase=phase, reason=reason, **fields)
        self._write()
        log.info("status: %s (%s)", phase, reason)

    def _update(self, **fields) -> None:
        with self._lock:
            self.record.update(fields)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self._write()

    def _write(self) -> None:
        """Atomically (a reader never sees half a record), then queued for upload."""
        try:
            with self._write_lock:  # so a heartbeat's older snapshot never lands after a newer one
                with self._lock:
                    self.record["updated_at"] = time.time()
                    snapshot = copy.deepcopy(self.record)
                self.run.write_json(STATUS_FILE, snapshot)
        except (OSError, RuntimeError) as e:  # a full disk or a closed run dir must not stop training
            log.debug("status record not written: %s", e)


def _gist(error: BaseException) -> str:
    """One line saying what went wrong: TensorFlow wraps errors raised in a tf.function as "in user code:", a
    traceback, and the original message last."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0] == "in user code:":
        return lines[-1][:300]
    return first_line(error)
