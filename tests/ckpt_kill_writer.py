"""The victim of test_checkpoint's kill test: a writer that resumes from the newest committed checkpoint of a run URL
and saves checkpoints in a loop until it is SIGKILLed. Every checkpoint holds values derived from its step, so a reader
can tell a consistent restore from a mixed one.

Importing TensorFlow takes seconds, so this process imports it once and forks one writer per trial (before any TF
op has run, so the child initialises TF's runtime itself). Protocol on stdin/stdout, one line each:
    test -> "RUN_URL WORK_DIR SEED DELAY_SECONDS"
    this -> "killed" once the writer forked for it was SIGKILLed after DELAY_SECONDS and reaped,
            or "exited STATUS" if it ended by itself first (a failure of the writer; its stderr tells why)
"ready" is printed once at start; EOF on stdin ends the process.
"""
import os
import random
import signal
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


def run_and_kill(url: str, work_dir: str, seed: int, delay: float) -> str:
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            write_forever(url, work_dir, seed)
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(status)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return f"exited {status}"
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)  # our own unreaped child: its pid cannot have been reused
    os.waitpid(pid, 0)
    return "killed"


def main() -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        url, work_dir, seed, delay = line.split()
        print(run_and_kill(url, work_dir, int(seed), float(delay)), flush=True)


if __name__ == "__main__":
    main()
