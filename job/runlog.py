"""The trainer's own log, kept in the run: one file per process start, `logs/trainer/<start>-<host>-<pid>.log`.

A pod's stdout is gone once the pod is deleted; this file goes up with the run (RunDir.watch re-uploads it at the
flush cadence, and RunDir.close at exit), so what a pod printed outlives it. Only the `job` logger's lines are kept
(TensorFlow's C++ output is not); an exception that ends the run is appended by `write_error`.

The file can only be opened once the run directory exists (after the config, data and storage checks), so
`capture_early()` keeps the lines logged before that in memory and `RunLog.open` writes them first.
"""
from __future__ import annotations

import collections
import logging
import os
import socket
import time
import traceback
from pathlib import Path

from job.errors import UserError, first_line
from job.layout import TRAINER_LOG_DIR as LOG_DIR

_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
_EARLY_LIMIT = 2000  # records kept before the file opens; a worker that never opens one must not grow without end
_logger = logging.getLogger("job")


class _EarlyBuffer(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: collections.deque[logging.LogRecord] = collections.deque(maxlen=_EARLY_LIMIT)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_early: _EarlyBuffer | None = None
_current: RunLog | None = None


def capture_early() -> None:
    """Keep the `job` logger's records from now until a RunLog opens (idempotent)."""
    global _early
    if _early is None:
        _early = _EarlyBuffer()
        _logger.addHandler(_early)


def _take_early() -> list[logging.LogRecord]:
    global _early
    if _early is None:
        return []
    _logger.removeHandler(_early)
    records, _early = list(_early.records), None
    return records


def file_name(started: float, host: str | None = None, pid: int | None = None) -> str:
    """Sortable by start time: the newest file of a run is the last name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    host = "".join(c if c.isalnum() or c in "-." else "-" for c in (host or socket.gethostname()))[:63]
    return f"{stamp}-{host}-{os.getpid() if pid is None else pid}.log"


class RunLog:
    """The log file of this process start in the run's working copy; `relpath` is its path in the run."""

    def __init__(self, local_root: Path, started: float):
        self.relpath = f"{LOG_DIR}/{file_name(started)}"
        self.path = local_root / self.relpath
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(self.path, mode="a", encoding="utf-8")  # flushes every record
        self.handler.setFormatter(_FORMAT)

    @classmethod
    def open(cls, local_root: Path, started: float) -> RunLog:
        """Start logging into the run; a previous RunLog of this process (an earlier train() call) is detached."""
        global _current
        if _current is not None:
            _current.detach()
        log = _current = cls(local_root, started)
        for record in _take_early():
            log.handler.handle(record)
        _logger.addHandler(log.handler)
        return log

    def write_error(self, error: BaseException) -> None:
        """The exception that ends the run: its one line for an error the user can fix (what the CLI prints),
        the traceback otherwise (what `log.exception` prints after this file is uploaded)."""
        if isinstance(error, UserError):
            text = f"error: {first_line(error, 2000)}\n"
        else:
            text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{stamp} ERROR the run ended with an exception:\n{text}")

    def detach(self) -> None:
        _logger.removeHandler(self.handler)
        self.handler.close()
