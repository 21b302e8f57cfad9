"""The victim of test_checkpoint's kill test: resumes from the newest committed checkpoint of a run URL and saves
checkpoints in a loop until it is SIGKILLed. Every checkpoint holds values derived from its step, so a reader can tell
a consistent restore from a mixed one.

usage: ckpt_kill_writer.py RUN_URL WORK_DIR SEED   (prints "ready" once imported, starts on a line on stdin)
"""
import os
import random
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from job.checkpoint import CheckpointStore  # noqa: E402
from job.rundir import RunDir  # noqa: E402

SHAPE = (128, 128)  # 64 KB of weights: uploads take long enough for kills to land inside them


def make_checkpoint() -> tf.train.Checkpoint:
    return tf.train.Checkpoint(step=tf.Variable(0, dtype=tf.int64), weights=tf.Variable(tf.zeros(SHAPE)))


def set_state(ckpt: tf.train.Checkpoint, step: int) -> None:
    ckpt.step.assign(step)
    ckpt.weights.assign(tf.fill(SHAPE, float(step)))


def main(url: str, work_dir: str, seed: int) -> None:
    print("ready", flush=True)
    sys.stdin.readline()  # the test spawns writers ahead of time, so TF's import does not count into a trial
    run = RunDir.open(url, work_dir=work_dir, flush_seconds=0.2, retry_seconds=30)
    store = CheckpointStore(run, keep=2)
    ckpt = make_checkpoint()
    latest = store.latest()
    step = 0
    if latest is not None:
        store.restore(ckpt, latest)
        step = int(ckpt.step.numpy())
    rng = random.Random(seed)
    while True:
        step += 1
        set_state(ckpt, step)
        store.save(ckpt, step, {"val_top1": rng.random()})
        while len(run.pending()) > 2:  # a real trainer saves far less often than uploads take
            time.sleep(0.01)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
