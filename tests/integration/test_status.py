"""`python -m job status` on live runs of the real trainer, locally and on gs:// (fake-gcs-server): while training,
after SIGTERM, after `kill -9` (the heartbeat goes stale), after a resume, and finished; and the run's own log."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support.child_io import ChildLines
from tests.support.trainer_runs import ROOT, kill_hard, run_job, start_job, stop_process, trainer_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # trainer runs: a limit for hangs only (pytest.ini)

EXIT_PREEMPTED = 75
FLUSH = 0.5  # run.summary_flush_seconds: the record's cadence; "stale" comes after max(3 flushes, 10 s)
# The MLP on digits, batch 16: about 90 steps an epoch, fast on 2 cores. 1000 epochs: it cannot end by itself.
ARGS = ["--config", "digits_resnet20", "model.name=mlp", "train.batch_size=16", "data.validation_split=0.1",
        f"run.summary_flush_seconds={FLUSH}", "run.progress=false"]


def status(url: str, *options: str, env=None) -> dict:
    out = run_job("status", url, "--json", *options, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def status_once_a_run(url: str, env=None) -> dict | None:
    """The status, or None while the directory is not a run yet (the trainer is still starting)."""
    out = run_job("status", url, "--json", timeout=60, env=env)
    if out.returncode == 2 and ("does not exist" in out.stderr or "not a run directory" in out.stderr):
        return None
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def status_text(url: str, env=None) -> str:
    out = run_job("status", url, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout


def read_log(url: str, relpath: str) -> str:
    from job.storage import open_storage  # reads gs:// through STORAGE_EMULATOR_HOST, set by gcs_bucket

    try:
        return open_storage(url).read_bytes(relpath).decode()
    except FileNotFoundError:
        return ""


def wait_running(url, process, env, start_count, min_step=1):
    """Until this start's record says running at a step past its first interval."""
    seen = {}

    def running():
        s = seen["s"] = status_once_a_run(url, env=env)
        return s is not None and s["phase"] == "running" and s["start_count"] == start_count and s["step"] >= min_step
    wait_for(running, timeout=300, process=process, what=f"start {start_count} to be running")
    return seen["s"]


@pytest.fixture(params=["local", "gs"])
def run_url(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run"), trainer_env()
    bucket = request.getfixturevalue("gcs_bucket")
    return f"{bucket}/run", trainer_env(STORAGE_EMULATOR_HOST=os.environ["STORAGE_EMULATOR_HOST"])


@pytest.fixture
def trainers():
    """Trainer processes a test starts; whatever is still running when it ends is stopped."""
    started = []
    yield started
    for process in started:
        stop_process(process)


def test_status_through_a_runs_life(run_url, trainers, tmp_path):
    url, env = run_url
    long_run = ["train", *ARGS, "train.epochs=1000", f"run.dir={url}"]

    # 1. Training: phase, step of total, speed and ETA, the record's heartbeat, the log uploaded as it grows.
    first = start_job(*long_run, env=env, log_path=tmp_path / "first.out")
    trainers.append(first)
    s = wait_running(url, first, env, start_count=1)
    assert s["total_steps"] == 1000 * s["steps_per_epoch"] and s["total_epochs"] == 1000
    assert s["images_per_second"] > 0 and s["train"]["loss"] > 0 and s["eta_seconds"] > 0
    assert s["stale"] is False and s["host"] and s["pid"] == first.pid
    assert s["newest_log"] == s["log"] and s["newest_log"].startswith("logs/trainer/")
    wait_for(lambda: "starting mlp on digits" in read_log(url, status(url, env=env)["newest_log"]), timeout=60,
             process=first, what="the start's log in the run")
    text = status_text(url, env=env)
    assert "phase      running: training" in text and "ETA" in text and f"/{s['total_steps']}" in text

    # 2. SIGTERM: preempted with its reason; an ended run never goes stale, whatever the threshold.
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == EXIT_PREEMPTED, (tmp_path / "first.out").read_text()[-3000:]
    s = status(url, "--stale-after", "0.001", env=env)
    assert s["phase"] == "preempted" and "SIGTERM received" in s["reason"] and s["stale"] is False
    assert s["checkpoint"]["step"] == s["step"], "the SIGTERM checkpoint is the newest"
    assert s["eta_seconds"] is None
    assert "SIGTERM received" in read_log(url, s["newest_log"]), "the log went up at exit"
    first_log = s["newest_log"]

    # 3. Resume: start count 2; then kill -9, after which the record stops changing and is shown as stale.
    second = start_job(*long_run, env=env, log_path=tmp_path / "second.out")
    trainers.append(second)
    s = wait_running(url, second, env, start_count=2, min_step=s["step"] + 1)
    assert s["starts"][0]["outcome"] == "preempted" and s["starts"][1]["pid"] == second.pid
    assert s["newest_log"] != first_log and s["log_count"] == 2
    kill_hard(second)
    wait_for(lambda: status(url, env=env)["stale"], timeout=60, what="the heartbeat to go stale")
    s = status(url, env=env)
    assert s["phase"] == "running" and s["record_age_seconds"] > s["stale_after_seconds"]  # as the dead one left it
    assert "no heartbeat since" in status_text(url, env=env)

    # 4. Resume to the end: start count 3, the killed start marked lost, finished with the final evaluation.
    # Meanwhile the ETA is compared with the time the steps actually took (printed, not asserted: a timing).
    epochs = s["step"] // s["steps_per_epoch"] + 12
    third = start_job("train", *ARGS, f"train.epochs={epochs}", f"run.dir={url}", env=env,
                      log_path=tmp_path / "third.out")
    trainers.append(third)
    s = wait_running(url, third, env, start_count=3)
    total = s["total_steps"]
    wait_for(lambda: (status(url, env=env)["step"] - s["step"]) >= 3 * s["steps_per_epoch"], timeout=300,
             process=third, what="three epochs of the last start")
    at, sample = time.monotonic(), status(url, env=env)
    wait_for(lambda: status(url, env=env)["step"] >= total, timeout=600, process=third, what="the last step")
    taken = time.monotonic() - at
    if sample["eta_seconds"]:
        print(f"\n[{url.split(':')[0] if '://' in url else 'local'}] ETA at step {sample['step']}/{total}: "
              f"{sample['eta_seconds']:.1f} s; the steps took {taken:.1f} s "
              f"({100 * (sample['eta_seconds'] - taken) / taken:+.0f}%)")
    assert third.wait(timeout=600) == 0, (tmp_path / "third.out").read_text()[-3000:]
    s = status(url, env=env)
    assert s["phase"] == "finished" and s["start_count"] == 3 and s["step"] == total
    assert s["starts"][1]["outcome"] == "lost" and s["starts"][2]["outcome"] == "finished"
    assert s["evaluation"]["top1"] > 0.5 and s["evaluation"]["step"] == total
    assert s["stale"] is False and s["log_count"] == 3
    text = status_text(url, env=env)
    assert "phase      finished" in text and "evaluation top1" in text and s["newest_log"] in text
    log = read_log(url, s["newest_log"])
    assert "resuming from step" in log and "evaluation stored" in log, log[-2000:]


def test_status_reads_without_tensorflow_in_well_under_a_second(tmp_path):
    url = str(tmp_path / "run")
    done = run_job("train", *ARGS, "train.epochs=2", f"run.dir={url}")
    assert done.returncode == 0, done.stderr[-3000:]
    probe = ("import sys, time; from job.cli import main; t = time.perf_counter();"
             " code = main(['status', sys.argv[1]]); print('seconds', time.perf_counter() - t);"
             " print('tensorflow loaded', 'tensorflow' in sys.modules); sys.exit(code)")
    out = subprocess.run([sys.executable, "-c", probe, url], cwd=ROOT, env=trainer_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "tensorflow loaded False" in out.stdout and "phase      finished" in out.stdout
    seconds = float(out.stdout.split("seconds ")[1].split()[0])
    print(f"\nstatus of a local run: {seconds * 1000:.0f} ms")
    assert seconds < 5, "status must stay quick (well under a second here)"

    # --watch prints a fresh block every interval until stopped.
    watch = subprocess.Popen([sys.executable, "-m", "job", "status", url, "--watch", "--interval", "0.2"], cwd=ROOT,
                             env=trainer_env(), stdout=subprocess.PIPE, text=True)
    try:
        lines = ChildLines(watch, "job status --watch")
        for block in ("first", "second"):
            lines.until(lambda line: line.startswith("phase      finished"), 60, f"its {block} block")
    finally:
        stop_process(watch)


def test_a_directory_that_is_not_a_run_is_one_line_and_exit_2(tmp_path):
    for url, says in [(str(tmp_path / "missing"), "does not exist"), (str(tmp_path), "is not a run directory"),
                      ("s3://bucket/run", "unsupported storage URL")]:
        out = run_job("status", url, timeout=60)
        assert out.returncode == 2 and out.stdout == "", out
        assert out.stderr.count("\n") == 1 and says in out.stderr, out.stderr
    for content in ("[1, 2]", "{not json", '{"step": 3}'):
        (tmp_path / "status.json").write_text(content)
        out = run_job("status", str(tmp_path), timeout=60)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert "status.json is not a" in out.stderr, out.stderr


def test_a_bucket_that_does_not_exist_is_one_line_and_exit_2(gcs_bucket):
    env = trainer_env(STORAGE_EMULATOR_HOST=os.environ["STORAGE_EMULATOR_HOST"])
    out = run_job("status", "gs://no-such-bucket-here/run", timeout=120, env=env)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr


def test_a_run_that_fails_in_training_is_marked_failed_with_its_reason(tmp_path):
    """An exception ends the process, not a hook: job/train.py marks the record failed and appends the error to the
    run's log before the CLI reports it. Here the divergence guard's error (exit 2)."""
    url = str(tmp_path / "run")
    out = run_job("train", *ARGS, "train.epochs=3", "optim.lr=1e6", "optim.warmup_epochs=0", "run.log_every_steps=2",
                  f"run.dir={url}")
    assert out.returncode == 2 and "training diverged" in out.stderr, out.stderr[-3000:]
    s = status(url)
    assert s["phase"] == "failed" and s["reason"].startswith("training diverged: the loss is nan")
    assert s["starts"][-1]["outcome"] == "failed" and s["stale"] is False and s["checkpoint"] is None
    assert s["train"]["loss"] is None, "a NaN loss is stored as null: JSON has no NaN"
    assert "error: training diverged" in read_log(url, s["newest_log"])
    assert "phase      failed: training diverged" in status_text(url)
