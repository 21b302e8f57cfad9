"""Search-space files for the tune tests, written as `python -m job tune --space FILE` reads them."""
from __future__ import annotations

from pathlib import Path

import yaml

# A trial is retried only when a test causes it. Without a kill a late heartbeat (three TF processes on two cores) must
# not pass for a dead worker, so the grace cannot expire; the kill test beats every second with 4 s of grace, and its
# second worker waits for the dead trial to go stale (job/tune/worker.py), so that retry happens by construction.
NEVER_STALE = {"grace_seconds": 86400}
QUICKLY_STALE = {"heartbeat_seconds": 1, "grace_seconds": 4}


def write_space(folder: Path, staleness: dict = NEVER_STALE, **space) -> Path:
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump({**staleness, **space}))
    return path
