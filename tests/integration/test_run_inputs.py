"""status, compare, evaluate and report given runs that are not what they expect (issue 22): runs that never trained,
runs of other label sets, runs in a bucket, paths that are no run. Small run directories are written by hand (a run
as `train` starts it is its config.yaml; status.json is the trainer's record, docs/runs.md "Status from anywhere")."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.support.trainer_runs import run_job, trainer_env


def write_run(directory: Path, preset: str = "digits_resnet20", *overrides: str) -> Path:
    """A run directory as `train` starts it: its stored config.yaml only."""
    from job import config as configlib

    directory.mkdir(parents=True)
    (directory / "config.yaml").write_text(configlib.to_yaml(configlib.load_config(preset, list(overrides))))
    return directory


def one_error_line(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return errors[0]


# ------------------------------------------------------------------------------------------------------- status
def test_status_of_a_run_that_never_started_training(tmp_path):
    """docs/runs.md: an error before training starts leaves no record; status says so, exit 0 (it is an answer)."""
    run = write_run(tmp_path / "run")
    shown = run_job("status", str(run), timeout=60)
    assert shown.returncode == 0 and shown.stderr == "", shown
    assert shown.stdout.splitlines()[1:] == [
        "phase      unknown: no status.json yet (started before this trainer version, or starting)",
        "checkpoint none committed yet"]
    record = json.loads(run_job("status", "--json", str(run), timeout=60).stdout)
    assert record["phase"] == "unknown" and record["checkpoint"] is None


def test_status_of_a_run_killed_before_its_first_checkpoint(tmp_path):
    run = write_run(tmp_path / "run")
    started = time.time() - 3600
    (run / "status.json").write_text(json.dumps({
        "format": 1, "phase": "running", "step": 7, "epoch": 0, "total_epochs": 4, "total_steps": 80,
        "steps_per_epoch": 20, "batch_size": 64, "replicas": 1, "workers": 1, "model": "simple_cnn",
        "dataset": "digits", "start_count": 1, "starts": [{"started_at": started, "host": "h", "pid": 1, "step": 0}],
        "host": "h", "pid": 1, "flush_seconds": 60.0, "updated_at": started + 5}))
    shown = run_job("status", str(run), timeout=60)
    assert shown.returncode == 0 and shown.stderr == "", shown
    assert "no heartbeat since" in shown.stdout and "checkpoint none committed yet" in shown.stdout, shown.stdout


def test_status_of_an_empty_directory_is_one_line(tmp_path):
    assert one_error_line(run_job("status", str(tmp_path), timeout=60)).startswith(
        f"error: {tmp_path} is not a run directory")


# ------------------------------------------------------------------------------------------------------ compare
def test_compare_refuses_cifar100_fine_against_coarse(tmp_path):
    """The figures of 100 classes and of 20 superclasses do not compare (job/report/compare.py)."""
    fine = write_run(tmp_path / "fine", "cifar100_simple_cnn")
    coarse = write_run(tmp_path / "coarse", "cifar100_simple_cnn", "data.label_mode=coarse")
    line = one_error_line(run_job("compare", str(fine), str(coarse), "--out", str(tmp_path / "c.html"), timeout=60))
    assert line == ("error: runs on different datasets do not compare (fine: cifar100 (fine), coarse: cifar100 "
                    "(coarse)); give runs of one dataset")
    assert not (tmp_path / "c.html").exists()


def test_compare_gs_runs_into_a_gs_page(gcs_bucket, tmp_path):
    from job.storage import open_storage

    for name, model in (("a", "simple_cnn"), ("b", "mlp")):
        local = write_run(tmp_path / name, "digits_resnet20", f"model.name={model}")
        open_storage(f"{gcs_bucket}/{name}").write_bytes("config.yaml", (local / "config.yaml").read_bytes())
    env = trainer_env(STORAGE_EMULATOR_HOST=os.environ["STORAGE_EMULATOR_HOST"])
    result = run_job("compare", f"{gcs_bucket}/a", f"{gcs_bucket}/b", "--out", f"{gcs_bucket}/pages/x.html",
                     env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = result.stdout.splitlines()
    assert rows[2].split()[:2] == ["a", "simple_cnn"] and rows[3].split()[:2] == ["b", "mlp"], result.stdout
    assert rows[-1] == f"comparison page: {gcs_bucket}/pages/x.html"
    page = open_storage(f"{gcs_bucket}/pages").read_bytes("x.html").decode()
    assert page.startswith("<!DOCTYPE html>") and "simple_cnn" in page and "mlp" in page

    missing = run_job("compare", f"{gcs_bucket}/a", f"{gcs_bucket}/nothing", env=env, timeout=120)
    assert one_error_line(missing).startswith(f"error: {gcs_bucket}/nothing is not a run directory")


# --------------------------------------------------------------------------------------------- evaluate, report
@pytest.mark.parametrize("command", ["evaluate", "report"])
@pytest.mark.parametrize("case", ["missing", "empty", "bad checkpoint", "best without validation"])
def test_bad_run_arguments_are_one_line_and_create_nothing(command, case, tmp_path):
    missing, empty = tmp_path / "missing", tmp_path / "empty"
    empty.mkdir()
    noval = write_run(tmp_path / "noval", "digits_resnet20", "data.validation_split=0")
    args, expected = {
        # the same words from every command (job/weights.py)
        "missing": (["--run-dir", str(missing)], f"--run-dir {missing} does not exist; give the run.dir of a training"),
        "empty": (["--run-dir", str(empty)], f"--run-dir {empty} is not a run directory (it has no config.yaml)"),
        "bad checkpoint": (["--run-dir", str(noval), "--checkpoint", "ckpt-999"],
                           "--checkpoint ckpt-999 is not a checkpoint (no ckpt-999.index)"),
        "best without validation": (["--run-dir", str(noval), "--checkpoint", "best"],
                                    f"{noval} has no best checkpoint: it has no validation split"),
    }[case]
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    line = one_error_line(run_job(command, *args, timeout=300))
    assert line.startswith(f"error: {expected}"), line
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before, "nothing created"


@pytest.mark.parametrize("command", ["evaluate", "report", "export", "predict", "serve"])
def test_a_run_without_a_checkpoint_is_one_line(command, tmp_path):
    run = write_run(tmp_path / "run")
    images = [str(tmp_path)] if command == "predict" else []
    assert one_error_line(run_job(command, "--run-dir", str(run), *images, timeout=300)) == (
        f"error: {run} has no committed checkpoint yet; train first (or wait for the first checkpoint)")
