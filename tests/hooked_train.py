"""`python -m job train` with two test hooks added, for tests/test_hooks.py and the two-worker hook test:

    python tests/hooked_train.py --events DIR [--stop-at-step N] -- TRAIN ARGS...

- a recorder: every event of the hook interface, in order, one JSON line each, in DIR/events-<worker index>.jsonl;
- with --stop-at-step N: on the chief alone, a request to finish the run after step N (as a tuner's pruning would
  ask), so the other workers stop only because the request reached them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from job.cli import build_parser, setup_logging
from job.hooks import Hook


class Recorder(Hook):
    def __init__(self, folder: Path):
        self.folder = folder
        self.lines: list[dict] = []

    def _record(self, loop, event: str, **details) -> None:
        self.lines.append({"event": event, "step": loop.step, **details})

    def on_train_start(self, loop):
        self._record(loop, "train_start")

    def on_epoch_start(self, loop, epoch):
        self._record(loop, "epoch_start", epoch=epoch)

    def on_first_step(self, loop, batch):
        self._record(loop, "first_step")

    def on_step_end(self, loop, step):
        self._record(loop, "step_end")

    def on_interval_end(self, loop, stats):
        self._record(loop, "interval_end", steps=stats["steps"], loss=stats["loss"])

    def on_epoch_end(self, loop, epoch, train, validation):
        self._record(loop, "epoch_end", epoch=epoch, train_loss=train["loss"],
                     val_top1=validation["val_top1"] if validation else None)

    def on_checkpoint_saved(self, loop, step, blocking_seconds):
        self._record(loop, "checkpoint_saved", saved=step)

    def on_train_end(self, loop, outcome, evaluation):
        self._record(loop, "train_end", outcome=outcome, evaluated=evaluation is not None)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"events-{loop.parts.backend.worker_index}.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in self.lines))


class StopAtStep(Hook):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, loop, step):
        if step == self.step and loop.parts.backend.is_chief:
            loop.request_stop(f"test hook at step {step}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", required=True, type=Path)
    parser.add_argument("--stop-at-step", type=int, default=0)
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    hooks = [Recorder(args.events)] + ([StopAtStep(args.stop_at_step)] if args.stop_at_step else [])

    train = build_parser().parse_args(["train", *train_args])  # the train command's own arguments
    setup_logging()
    from job.config import load_config
    from job.train import train as run_training

    return run_training(load_config(train.config, train.overrides), extra_hooks=hooks)

if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
