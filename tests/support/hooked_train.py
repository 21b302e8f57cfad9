"""`python -m job train` with two test hooks added, for tests/integration/test_hooks.py and the two-worker hook test:

    python -m tests.support.hooked_train --events DIR [--stop-at-step N] -- TRAIN ARGS...

- a recorder: every event of the hook interface with its state, in order, one JSON line each, in
  DIR/events-<worker index>.jsonl (step events every --record-every-steps N steps);
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
from job.hooks import Hook, Stop
from tests.support.trainer_runs import without_litert


class Recorder(Hook):
    """Records every event with the state it came with (the batch and the config left out), one JSON line each."""

    def __init__(self, folder: Path, every_steps: int = 0):
        self.folder = folder
        self.every_steps = every_steps
        self.lines: list[dict] = []

    def _record(self, state) -> None:
        line = {"event": state.event.value, "step": state.step, "epoch": state.epoch, "lr": state.lr,
                "best_val_top1": state.best_val_top1, "epochs_without_improvement": state.epochs_without_improvement,
                "train": dict(state.train) if state.train else None,
                "validation": dict(state.validation) if state.validation else None,
                "saved_step": state.saved_step, "blocking_seconds": state.blocking_seconds, "outcome": state.outcome,
                "evaluated": state.evaluation is not None, "has_batch": state.batch is not None}
        self.lines.append(line)

    on_train_start = on_epoch_start = on_first_step = on_step = on_interval_end = on_epoch_end = _record
    on_checkpoint_saved = _record

    def on_train_end(self, state):
        self._record(state)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"events-{state.run.worker_index}.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in self.lines))


class StopAtStep(Hook):
    def __init__(self, step: int):
        self.every_steps = step
        self.step = step

    def on_step(self, state):
        if state.step == self.step and state.run.is_chief:
            return Stop(f"test hook at step {state.step}")
        return None


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
    parser.add_argument("--record-every-steps", type=int, default=0, help="the recorder's step events")
    parser.add_argument("--hold-write", type=int, default=0)
    parser.add_argument("--release-after-sigterm", action="store_true")
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    hooks = [Recorder(args.events, args.record_every_steps)]
    hooks += [StopAtStep(args.stop_at_step)] if args.stop_at_step else []

    train = build_parser().parse_args(without_litert(["train", *train_args]))  # the train command's own arguments
    setup_logging()
    from job.config import load_config
    from job.train import train as run_training

    if args.hold_write:
        hold_checkpoint_write(args.hold_write, args.release_after_sigterm)

    return run_training(load_config(train.config, train.overrides), extra_hooks=hooks)

if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
