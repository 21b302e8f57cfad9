"""What the run's records (history.json, status.json) and the commands that show them share: JSON-safe numbers, one
way to write a duration, and the record of a process start. No TensorFlow: `status` and `compare` read these."""
from __future__ import annotations

import math
import os
import socket
import time
from typing import Any

LOST = "lost"  # the outcome of a start that never wrote its end: killed with kill -9, or its node went away


def json_number(value) -> float | None:
    """A float for a JSON record, rounded to 6 decimals; NaN and infinity (a diverged loss) as null, which JSON has."""
    value = float(value)
    return round(value, 6) if math.isfinite(value) else None


def duration(seconds: float | None) -> str:
    """`42 s`, `3 min 05 s`, `2 h 07 min`, `1 d 04 h`; `–` when unknown."""
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600:02d} h"


def new_start(step: int, steps_per_epoch: int, **details: Any) -> dict[str, Any]:
    """The record of this process's start, resuming at `step`; `details` (the batch plan, the log file, ...) join
    it. history.json and status.json keep a list of these."""
    now = time.time()
    return {"started_at": now, "host": socket.gethostname(), "pid": os.getpid(), "step": step,
            "epoch": step / steps_per_epoch, "last_at": now, **details}


def end_start(start: dict[str, Any], outcome: str, step: int | None = None) -> None:
    """Mark a start ended: its outcome (finished, stopped, preempted, failed), when, and at which step."""
    start.update(last_at=time.time(), outcome=outcome)
    if step is not None:
        start["end_step"] = step


def outcome_of(start: dict[str, Any]) -> str | None:
    """A start's outcome; records written before the starts were shared said `ended` in status.json."""
    return start.get("outcome") or start.get("ended")


def mark_lost(starts: list[dict[str, Any]]) -> None:
    """The newest start of an earlier process, if it never wrote its end: it was killed, or its node lost."""
    if starts and outcome_of(starts[-1]) is None:
        starts[-1]["outcome"] = LOST
