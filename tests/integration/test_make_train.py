"""`make train` on a CIFAR-100 archive placed in data.dir: trains the default ResNet-18, survives kill -9, resumes."""
import json
import os
import signal
import subprocess

import pytest

from tests.support.trainer_runs import ROOT, committed_steps, trainer_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # trainer runs: a limit for hangs only (pytest.ini)


def make_train(args: str, log_path, **env: str):
    # A session of its own, so the kill reaches python under make, as a pod's kill reaches every process.
    return subprocess.Popen(["make", "--no-print-directory", "train", f"ARGS={args}"], cwd=ROOT, env=trainer_env(**env),
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def test_make_train_default_preset_resumes_after_kill(tmp_path):
    from tests.support.cifar_archives import write_cifar100_archive

    data, run = tmp_path / "data", tmp_path / "run"
    md5 = write_cifar100_archive(data, n_train=192, n_test=50)
    args = (f"data.dir={data} data.md5={md5} data.download=false run.dir={run} train.epochs=2 train.batch_size=32 "
            "checkpoint.every_steps=2 train.eval_batch_size=50")

    # The commit of ckpt-4 (and all after it) is held (job/rundir.py, TEST_HOLD_ENV): the kill lands with exactly
    # ckpt-2 committed, however fast the machine trains.
    first = make_train(args, tmp_path / "first.log", JOB_TEST_HOLD_TASK=r"^checkpoint ckpt-4$")
    wait_for(lambda: "held for a test: checkpoint ckpt-4" in (tmp_path / "first.log").read_text(), timeout=600,
             process=first, what="the commit of ckpt-4 to be held")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    log = (tmp_path / "first.log").read_text()
    assert "starting resnet18 on cifar100" in log, log[-3000:]
    killed_at = committed_steps(run)[-1]
    assert killed_at == 2, committed_steps(run)

    second = make_train(args, tmp_path / "second.log")
    assert second.wait(timeout=900) == 0, (tmp_path / "second.log").read_text()[-3000:]
    log = (tmp_path / "second.log").read_text()
    assert f"resuming from step {killed_at}" in log
    assert "top-1 accuracy" in log and "superclass top-1" in log
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["model"] == "resnet18" and metrics["examples"] == 50
    assert len(metrics["per_class"]) == 100 and "coarse_top1" in metrics
