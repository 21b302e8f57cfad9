"""`python -m job train` with two test hooks added, for tests/test_hooks.py and the two-worker hook test:

    python tests/hooked_train.py --events DIR [--stop-at-step N] -- TRAIN ARGS...

- a recorder: every event of the hook interface, in order, one JSON line each, in DIR/events-<worker index>.jsonl;
- with --stop-at-step N: on the chief alone, a request to finish the run after step N (as a tuner's pruning would
  ask), so the other workers stop only because the request reached them;
- with --hold-write N: the background write of checkpoint ckpt-N is held half-done (its data in <prefix>_temp/, no
  index yet), announced by the warning "held for a test: writing checkpoint ckpt-N". It stays held until the process
  is killed, or with --release-after-sigterm until the trainer has both received SIGTERM and logged that a save waits
  for that write.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import threading
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
        self._record(loop, "checkpoint_saved", saved=step, blocking=blocking_seconds)

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


def hold_checkpoint_write(step: int, release_after_sigterm: bool) -> None:
    """Hold TensorFlow's write of ckpt-<step> between writing its data into <prefix>_temp/ and merging it into the
    final files, so the process is, by construction, in the middle of that write."""
    from tensorflow.python.ops import gen_io_ops  # what tf.train.Checkpoint.write calls last (functional_saver.py)

    merge = gen_io_ops.merge_v2_checkpoints
    release = threading.Event()
    seen: set[str] = set()

    class Watcher(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if "SIGTERM received" in message:
                seen.add("sigterm")
            if message.startswith("waiting for the background write") and f"/ckpt-{step}-" in message:
                seen.add("waiting")
            if release_after_sigterm and seen == {"sigterm", "waiting"}:
                release.set()

    logging.getLogger("job").addHandler(Watcher())

    def held_merge(checkpoint_prefixes, destination_prefix, *args, **kwargs):
        if re.search(rf"/ckpt-{step}-[0-9a-f]{{8}}$", destination_prefix.numpy().decode()):
            logging.getLogger("job").warning("held for a test: writing checkpoint ckpt-%d", step)
            release.wait()
        return merge(checkpoint_prefixes, destination_prefix, *args, **kwargs)

    gen_io_ops.merge_v2_checkpoints = held_merge


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", required=True, type=Path)
    parser.add_argument("--stop-at-step", type=int, default=0)
    parser.add_argument("--hold-write", type=int, default=0)
    parser.add_argument("--release-after-sigterm", action="store_true")
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    hooks = [Recorder(args.events)] + ([StopAtStep(args.stop_at_step)] if args.stop_at_step else [])

    train = build_parser().parse_args(["train", *train_args])  # the train command's own arguments
    setup_logging()
    from job.config import load_config
    from job.train import train as run_training

    if args.hold_write:
        hold_checkpoint_write(args.hold_write, args.release_after_sigterm)

    return run_training(load_config(train.config, train.overrides), extra_hooks=hooks)

if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
