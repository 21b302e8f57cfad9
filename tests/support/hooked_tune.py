"""A tuning worker (`python -m job tune ... --workers 1`) that holds still after a committed checkpoint, so a test can
kill it mid-trial at a known moment:

    python -m tests.support.hooked_tune --hold-at-step N -- TUNE ARGS...
    python -m tests.support.hooked_tune --pause-on-stale GO -- TUNE ARGS...

The first trial this worker trains is held after step N: its checkpoint at step N is saved and committed, the line
`HELD trial run at step N` is printed, and the training thread waits forever (the trial's heartbeat goes on, as a
live worker's does) until the test kills the process; with `--wait-for FILE`, until FILE exists, then it trains on.

With `--pause-on-stale GO`, the first time the worker finds dead trials it prints `STALE SEEN [numbers]` and waits,
before claiming them, until the file GO exists: two such workers have then both seen the same dead trial, and the
test lets them race for it at once.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from job.cli import build_parser, setup_logging
from job.commits import committed_steps
from job.errors import UserError
from job.hooks import Hook, Save
from job.storage import open_storage


class HoldAfterCheckpoint(Hook):
    """Saves at step N, waits until that checkpoint's commit object is stored, announces it, and holds: forever, or
    until the file `wait_for` exists."""

    def __init__(self, step: int, wait_for: str = ""):
        self.every_steps = step  # a step event at step N whatever train.steps_per_call is
        self.step = step
        self.wait_for = Path(wait_for) if wait_for else None
        self.held = False

    def on_step(self, state):
        if state.step == self.step and not self.held:
            return Save()
        return None

    def on_checkpoint_saved(self, state):
        if state.saved_step != self.step or self.held:
            return
        self.held = True
        storage = open_storage(state.run.url)
        deadline = time.monotonic() + 60.0
        while self.step not in committed_steps(storage):  # the commit object is stored: the checkpoint exists
            if time.monotonic() > deadline:
                raise RuntimeError(f"checkpoint {self.step} of {state.run.url} was not committed within 60 s")
            time.sleep(0.05)
        print(f"HELD {state.run.url} at step {self.step}", flush=True)
        if self.wait_for is None:
            threading.Event().wait()
        while not self.wait_for.exists():  # the test's go; it kills this process if it never comes
            time.sleep(0.05)


class PauseOnce:
    """Study.before_claiming_stale: announce the dead trials seen, then wait for the test's go (once)."""

    def __init__(self, go: Path):
        self.go = go
        self.paused = False

    def __call__(self, numbers: list[int]) -> None:
        if self.paused:
            return
        self.paused = True
        print(f"STALE SEEN {sorted(numbers)}", flush=True)
        while not self.go.exists():  # the test's go; it kills this process if it never comes
            time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hold-at-step", type=int, default=0, help="0: no hold")
    parser.add_argument("--pause-on-stale", default="", help="the file whose existence ends the pause")
    parser.add_argument("--wait-for", default="", help="hold only until this file exists")
    parser.add_argument("tune_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    tune_args = args.tune_args[1:] if args.tune_args[:1] == ["--"] else args.tune_args
    tune = build_parser().parse_args(["tune", *tune_args])
    setup_logging()
    from job.tune.space import load_space
    from job.tune.study import open_study, storage_url
    from job.tune.worker import run_worker

    space = load_space(tune.space)
    study = open_study(space, storage_url(tune.storage, tune.study_dir))
    if args.pause_on_stale:
        study.before_claiming_stale = PauseOnce(Path(args.pause_on_stale))
    hooks = [HoldAfterCheckpoint(args.hold_at_step, args.wait_for)] if args.hold_at_step else []
    try:
        return run_worker(study, tune.config, list(tune.overrides), tune.study_dir, extra_hooks=hooks)
    except UserError as e:  # as job.cli.main reports it
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
