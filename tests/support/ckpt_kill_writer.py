"""The victim of tests/integration/test_checkpoint_gcs.py's kill test: a writer that resumes from the newest committed
checkpoint of a run URL and saves checkpoints in a loop until it is SIGKILLed. Every checkpoint holds values derived
from its step, so a reader can tell a consistent restore from a mixed one.

Importing TensorFlow takes seconds, so this process imports it once and forks one writer per trial (before any TF
op has run, so the child initialises TF's runtime itself). Protocol on stdin/stdout, one line each:
    test -> "start RUN_URL WORK_DIR SEED [NAME=VALUE ...]"
                    fork a writer, with the environment variables given set (e.g. its own STORAGE_EMULATOR_HOST)
    this -> "started PID"
    test -> "kill"  SIGKILL the writer and reap it
    this -> "killed", or "exited STATUS" if it ended by itself first (a failure of the writer; its stderr tells why)
"ready" is printed once at start; EOF on stdin ends the process (and kills a writer still running).
"""
import os
import random
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from job.checkpoint import CheckpointStore  # noqa: E402
from job.rundir import RunDir  # noqa: E402
from tests.support.fork_server import serve  # noqa: E402

SHAPE = (128, 128)  # 64 KB of weights


def make_checkpoint() -> tf.train.Checkpoint:
    return tf.train.Checkpoint(step=tf.Variable(0, dtype=tf.int64), weights=tf.Variable(tf.zeros(SHAPE)))


def set_state(ckpt: tf.train.Checkpoint, step: int) -> None:
    ckpt.step.assign(step)
    ckpt.weights.assign(tf.fill(SHAPE, float(step)))


def write_forever(url: str, work_dir: str, seed: int) -> None:
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


def start(url: str, work_dir: str, seed: str, *env: str) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.environ.update(item.split("=", 1) for item in env)
            write_forever(url, work_dir, int(seed))
        except BaseException:  # noqa: BLE001 - whatever ends the writer is printed for the test, then it exits 1
            import traceback
            traceback.print_exc()
        finally:
            os._exit(status)
    return pid


def main() -> None:
    serve(start, "writer")


if __name__ == "__main__":
    main()
