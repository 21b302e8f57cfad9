"""Where a run's checkpoint commit objects are and which steps they commit, without TensorFlow: job/checkpoint.py writes
them, and `status` and `serve` (which must answer before TensorFlow is imported) read them too."""
from __future__ import annotations

import re

from job.layout import CKPT_DIR
from job.storage import Storage

_COMMIT_RE = re.compile(rf"{CKPT_DIR}/ckpt-(\d+)\.commit\.json")


def commit_path(step: int) -> str:
    """The commit object of checkpoint `step`, relative to the run URL."""
    return f"{CKPT_DIR}/ckpt-{step}.commit.json"


def committed_steps(storage: Storage) -> list[int]:
    """Steps that have a commit object in `storage` (a run URL), oldest first (their files are not verified)."""
    steps = []
    for relpath in storage.list(f"{CKPT_DIR}/ckpt-"):
        match = _COMMIT_RE.fullmatch(relpath)
        if match:
            steps.append(int(match.group(1)))
    return sorted(steps)
