"""`tensorboard --logdir gs://...` on a run while it trains, and TensorFlow's own gs:// client on the run's checkpoints.

TensorFlow's GCS file system ignores STORAGE_EMULATOR_HOST, so TensorBoard (and the `python -c` below) reach the
fake-gcs-server through a loopback TLS-terminating forward proxy with a throwaway CA (tests/support/tls_proxy.py).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import tensorflow as tf

from job.storage import open_storage

# The fake-gcs-server fixtures (gcs_server, gcs_bucket) come from conftest.py.
from tests.support.tls_proxy import TlsProxy, free_port
from tests.support.trainer_runs import kill_hard, start_job, trainer_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # trainer runs: a limit for hangs only (pytest.ini)

FLUSH_SECONDS = 2.0  # run.summary_flush_seconds: how often event files are flushed and re-uploaded (default 60)
RELOAD_SECONDS = 1  # how often TensorBoard re-reads the logdir
# Hours of training, so it is still training however long TensorBoard takes to start and be watched (whatever the
# machine's speed); the test stops it.
LIVE = ["--config", "digits_resnet20", "model.name=simple_cnn", "train.epochs=10000", "train.max_steps_per_epoch=20",
        "train.batch_size=32", "checkpoint.every_steps=20", "run.progress=false",
        f"run.summary_flush_seconds={FLUSH_SECONDS}"]
TENSORBOARD = Path(sys.executable).with_name("tensorboard")


@pytest.fixture
def gcs_tls_proxy(gcs_server, tmp_path):
    proxy = TlsProxy(gcs_server.endpoint, tmp_path / "certs")
    proxy.start()
    yield proxy
    proxy.stop()


def google_client_env(proxy: TlsProxy) -> dict[str, str]:
    """A process whose TensorFlow talks to "storage.googleapis.com", that is to the fake server via the proxy."""
    env = {k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"}
    return {**env, **proxy.env(), "TF_CPP_MIN_LOG_LEVEL": "2"}


class TensorBoard:
    """The real `tensorboard` on 127.0.0.1, stopped by pid."""

    def __init__(self, logdir: str, env: dict, log_path: Path):
        self.port = free_port()
        self.log_path = log_path
        self._log = open(log_path, "w")
        # --load_fast=false: the fast (Rust) loader wants real Google credentials for gs://.
        self.process = subprocess.Popen(
            [str(TENSORBOARD), "--logdir", logdir, "--host", "127.0.0.1", "--port", str(self.port),
             "--load_fast=false", "--reload_interval", str(RELOAD_SECONDS)],
            env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def get(self, path: str, **query):
        url = f"http://127.0.0.1:{self.port}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)

    def scalars(self, run: str, tag: str) -> list[list[float]]:
        """[[wall_time, step, value], ...] once TensorBoard has the run's tag; [] before (or while it starts)."""
        if self.process.poll() is not None:
            raise AssertionError(f"tensorboard exited:\n{self.log_path.read_text()[-3000:]}")
        try:
            if tag not in self.get("/data/plugin/scalars/tags").get(run, {}):
                return []
            return self.get("/data/plugin/scalars/scalars", run=run, tag=tag)
        except (urllib.error.URLError, ConnectionError):
            return []

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self._log.close()


def local_scalars(event_dir: Path, tag: str) -> dict[int, float]:
    """step -> value of `tag` in the trainer's own (local) event files."""
    found = {}
    for path in event_dir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == tag:
                    found[event.step] = float(tf.make_ndarray(value.tensor))
    return found


def test_tensorboard_and_tensorflow_read_the_run_from_gs_while_it_trains(gcs_server, gcs_bucket, gcs_tls_proxy,
                                                                          tmp_path):
    url, work = gcs_bucket + "/run", tmp_path / "work"
    stored = open_storage(url)
    trainer = start_job("train", *LIVE, f"run.dir={url}", f"run.work_dir={work}", log_path=tmp_path / "trainer.log",
                        env=trainer_env(**gcs_server.env()))
    board = TensorBoard(url, google_client_env(gcs_tls_proxy), tmp_path / "tensorboard.log")
    seen, delays, first_steps = {}, [], []

    def new_scalars():
        now = time.time()
        fresh = [(step, value, now - wall) for wall, step, value in board.scalars("logs/train", "loss")
                 if step not in seen]
        for step, value, delay in fresh:
            seen[step] = value
            delays.append(delay)
        return fresh

    try:
        wait_for(new_scalars, timeout=300, process=trainer, what="TensorBoard to show the run's loss")
        first_steps = sorted(seen)
        # Live: later steps keep arriving while the trainer runs (event files are re-uploaded and re-read).
        for _ in range(3):
            wait_for(new_scalars, timeout=120, process=trainer, what="TensorBoard to show newer steps")
        assert trainer.poll() is None
        assert max(seen) > max(first_steps)
        wait_for(lambda: stored.exists("checkpoints/checkpoint"), timeout=300, process=trainer,
                 what="a committed checkpoint")
    finally:
        if trainer.poll() is None:
            kill_hard(trainer)
        board.stop()

    # TensorBoard served the very numbers the trainer wrote.
    written = local_scalars(work / "logs" / "train", "loss")
    assert all(written[step] == pytest.approx(value, rel=1e-6) for step, value in seen.items())
    live = delays[len(first_steps):]
    print(f"\nTensorBoard via gs:// (summary flush {FLUSH_SECONDS} s, reload {RELOAD_SECONDS} s): first loss steps "
          f"{first_steps}; from a scalar's wall time to TensorBoard serving it, for {len(live)} steps seen live: "
          f"median {statistics.median(live):.1f} s, max {max(live):.1f} s")

    # TensorFlow's own gs:// client: the stored layout is a plain TF checkpoint directory (on gs:// the names carry
    # the writer, and TF's state file names them), and a TF upload through the proxy (chunked: de-chunked) lands.
    newest = stored.read_bytes("checkpoints/checkpoint").decode().split('"')[1]
    step = int(newest.split("-")[1])
    assert json.loads(stored.read_bytes(f"checkpoints/ckpt-{step}.commit.json"))["prefix"] == newest
    code = ("import sys, tensorflow as tf\n"
            "prefix = tf.train.latest_checkpoint(sys.argv[1] + '/checkpoints')\n"
            "print(prefix)\n"
            "print(tf.train.load_variable(prefix, 'step/.ATTRIBUTES/VARIABLE_VALUE'))\n"
            "with tf.io.gfile.GFile(sys.argv[1] + '/notes/from_tf.bin', 'wb') as f:\n"
            "    f.write(bytes(range(256)) * 1024)\n")
    result = subprocess.run([sys.executable, "-c", code, url], env=google_client_env(gcs_tls_proxy),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [f"{url}/checkpoints/{newest}", str(step)]
    assert stored.read_bytes("notes/from_tf.bin") == bytes(range(256)) * 1024
