"""Riding out an outage of the study database: a worker whose database goes away (a PostgreSQL restart, a failover)
waits for it, retrying, for at most JOB_TUNE_DATABASE_WAIT_SECONDS (default 300), then stops with one line (exit 1,
retriable). Its trial keeps its checkpoints; once the database is back, a worker marks it dead after the grace period
and its retry resumes from them, so no trial is lost. Only calls that are safe to repeat go through here."""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

import optuna
import sqlalchemy.exc

from job.errors import StorageUnavailableError, first_line

log = logging.getLogger("job")

WAIT_ENV = "JOB_TUNE_DATABASE_WAIT_SECONDS"
DEFAULT_WAIT_SECONDS = 300.0
_MAX_DELAY = 10.0  # seconds between attempts, at most
_GONE = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)  # no server, connection dropped
T = TypeVar("T")


class DatabaseUnavailableError(StorageUnavailableError):
    """The study database stayed out of reach for the whole wait: the worker's problem, not the trial's."""


def wait_seconds() -> float:
    return float(os.environ.get(WAIT_ENV, "") or DEFAULT_WAIT_SECONDS)


def _unwrapped(error: BaseException) -> BaseException:
    """Optuna wraps SQLAlchemy's errors in StorageInternalError, whose own message names no cause."""
    if isinstance(error, optuna.exceptions.StorageInternalError) and error.__cause__ is not None:
        return error.__cause__
    return error


def is_gone(error: BaseException) -> bool:
    """The server is unreachable or the connection dropped; not a bad query."""
    return isinstance(_unwrapped(error), _GONE)


def patiently(call: Callable[[], T], what: str) -> T:
    """`call()`, retried while the database is unreachable, for at most wait_seconds()."""
    began, delay = None, 0.5
    while True:
        try:
            result = call()
        except Exception as e:
            if not is_gone(e):
                raise
            e = _unwrapped(e)
            now, budget = time.monotonic(), wait_seconds()
            if began is None:
                began = now
                log.warning("the study database is unreachable while %s (%s); retrying for up to %.0f s", what,
                            first_line(e, 200), budget)
            if now - began >= budget:
                raise DatabaseUnavailableError(
                    f"the study database was unreachable for {budget:.0f} s while {what} ({first_line(e, 200)}); "
                    f"once it is up, run the same command again: an unfinished trial is retried from its "
                    f"checkpoints (set {WAIT_ENV} to wait longer)") from None
            time.sleep(min(delay, max(0.0, began + budget - now)))
            delay = min(2 * delay, _MAX_DELAY)
            continue
        if began is not None:
            log.warning("the study database is back after %.0f s", time.monotonic() - began)
        return result
