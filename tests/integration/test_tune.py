"""`python -m job tune` with real trial workers (processes) on the embedded SQLite study and on a real PostgreSQL
server: a grid trained exactly once by racing workers, TPE with the median pruner, a worker killed with kill -9 whose
trial is retried and resumes from its checkpoint, the leaderboard, best.yaml and the report page."""
from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.child_io import ChildLines
from tests.support.spaces import QUICKLY_STALE, write_space
from tests.support.trainer_runs import ROOT, job_command, run_job, trainer_env

# Small, fast and deterministic trials: simple_cnn on digits, 6 steps an epoch.
TRIAL_ARGS = ("model.name=simple_cnn", "train.max_steps_per_epoch=6", "train.deterministic=true",
              "checkpoint.every_steps=100")


def tune(space: Path, study_dir: Path, *args: str, storage: str | None = None, timeout: float = 900):
    extra = ("--storage", storage) if storage else ()
    return run_job("tune", "--config", "digits_resnet20", "--space", str(space), "--study-dir", str(study_dir),
                   *extra, *args, *TRIAL_ARGS, timeout=timeout)


def load(space: Path, study_dir: Path, storage: str | None):
    from job.tune.space import load_space
    from job.tune.study import open_study, storage_url

    return open_study(load_space(str(space)), storage_url(storage, str(study_dir)), create=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request) -> str | None:
    """None: the default SQLite study in the study dir; else a fresh database on a real PostgreSQL server."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_database")


GRID = {"study": "grid", "sampler": "grid",
        "params": {"optim.lr": {"choices": [0.01, 0.02, 0.05]}, "train.batch_size": {"choices": [32, 64]}}}


@pytest.mark.slow
@pytest.mark.timeout(600)  # 60-120 s measured on 2 loaded cores
def test_a_six_point_grid_with_three_workers_trains_each_point_exactly_once(tmp_path, storage):
    from optuna.trial import TrialState

    space = write_space(tmp_path, **GRID)
    study_dir = tmp_path / "study"
    if storage is None:  # one command, three worker processes on its SQLite study
        result = tune(space, study_dir, "--workers", "3", "train.epochs=1")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        output = result.stdout
    else:  # three independent workers started at once on a fresh database, as the pods of k8s/tune.yaml start
        command = [*job_command("tune", "--config", "digits_resnet20", "--space", str(space), "--study-dir",
                                str(study_dir), "--storage", storage, "train.epochs=1", *TRIAL_ARGS)]
        workers = [subprocess.Popen(command, cwd=ROOT, env=trainer_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True) for _ in range(3)]
        outputs = [w.communicate(timeout=900)[0] for w in workers]
        assert [w.returncode for w in workers] == [0, 0, 0], "\n".join(o[-2000:] for o in outputs)
        output = "".join(f"[worker {i}] {line}\n" for i, o in enumerate(outputs) for line in o.splitlines())
    study = load(space, study_dir, storage)
    complete = [t for t in study.trials() if t.state == TrialState.COMPLETE]
    assert len(complete) == 6 and len(study.trials()) == 6  # nothing surplus, nothing twice
    assert sorted((t.params["optim.lr"], t.params["train.batch_size"]) for t in complete) == sorted(
        (lr, b) for lr in (0.01, 0.02, 0.05) for b in (32, 64))
    workers = {line.split("]")[0] for line in output.splitlines() if " trial " in line and " in " in line}
    assert len(workers) >= 2, workers  # the trials were shared out among the workers
    for trial in complete:
        run = study_dir / "trials" / str(trial.number)
        metrics = json.loads((run / "eval" / "metrics.json").read_text())
        assert metrics["examples"] == 359 and (run / "eval" / "report.html").is_file()
        starts = json.loads((run / "history.json").read_text())["starts"]
        assert [s["step"] for s in starts] == [0]  # trained once, from scratch
    assert (study_dir / "leaderboard.txt").read_text().count("complete") == 6
    assert (study_dir / "study.db").exists() == (storage is None)


@pytest.mark.slow
@pytest.mark.timeout(600)  # 60-120 s measured on 2 loaded cores
def test_tpe_with_the_median_pruner_prunes_and_ends_with_the_asked_number_of_trials(tmp_path, storage):
    from optuna.trial import TrialState

    space = write_space(tmp_path, study="tpe", sampler="tpe", pruner="median", trials=6, seed=1,
                        params={"optim.lr": {"low": 1.0e-4, "high": 0.3, "log": True}})
    study_dir = tmp_path / "study"
    result = tune(space, study_dir, "train.epochs=3", storage=storage)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study = load(space, study_dir, storage)
    states = [t.state for t in study.trials()]
    assert len(states) == 6 and study.finished() == 6
    pruned = [t for t in study.trials() if t.state == TrialState.PRUNED]
    assert pruned and TrialState.COMPLETE in states, states
    for trial in pruned:  # a pruned trial stopped cleanly: fewer epochs, evaluated, its report written
        run = study_dir / "trials" / str(trial.number)
        assert trial.user_attrs["epochs"] < 3
        assert json.loads((run / "eval" / "metrics.json").read_text())["examples"] == 359
        assert "pruned by the tuner after epoch" in "".join(p.read_text() for p in (run / "logs/trainer").iterdir())
    board = result.stdout
    assert "pruned" in board and "study tpe: 6 of 6 trials finished (tpe sampler, median pruner)" in board


@pytest.mark.slow
@pytest.mark.timeout(600)  # 60-120 s measured on 2 loaded cores
def test_a_worker_killed_mid_trial_is_retried_and_the_retry_resumes_from_its_checkpoint(tmp_path, storage):
    from optuna.trial import TrialState

    space = write_space(tmp_path, QUICKLY_STALE, study="kill", sampler="grid",
                        params={"optim.lr": {"choices": [0.01, 0.02]}})
    study_dir = tmp_path / "study"
    extra = ["--storage", storage] if storage else []
    tune_args = ["--config", "digits_resnet20", "--space", str(space), "--study-dir", str(study_dir), *extra,
                 "train.epochs=2", *TRIAL_ARGS]
    held = subprocess.Popen([job_command()[0], "-m", "tests.support.hooked_tune", "--hold-at-step",
                             "4", "--", *tune_args], cwd=ROOT, env=trainer_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        ChildLines(held, "the held tune worker (tests/support/hooked_tune.py)").until(
            lambda line: line.startswith("HELD"), 600, "the first trial to be held after its checkpoint at step 4")
        run0 = study_dir / "trials" / "0"
        assert any(p.name.startswith("ckpt-4") and p.name.endswith(".commit.json")
                   for p in (run0 / "checkpoints").iterdir())
        held.send_signal(signal.SIGKILL)
        held.wait(timeout=30)
    finally:
        if held.poll() is None:
            held.kill()
            held.wait(timeout=30)
    result = run_job("tune", *tune_args, timeout=900)  # a second worker finds the dead trial and retries it
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study = load(space, study_dir, storage)
    trials = study.trials()
    dead = [t for t in trials if t.state == TrialState.FAIL]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert [t.number for t in dead] == [0] and len(complete) == 2
    assert sorted(t.params["optim.lr"] for t in complete) == [0.01, 0.02]  # no grid point lost or run twice
    retry = next(t for t in complete if t.params["optim.lr"] == dead[0].params["optim.lr"])
    assert retry.number != 0 and retry.user_attrs["run_dir"] == str(run0) and retry.user_attrs["resumed_from_step"] == 4
    starts = json.loads((run0 / "history.json").read_text())["starts"]
    assert [s["step"] for s in starts] == [0, 4]  # started once from scratch, then resumed
    logs = sorted((run0 / "logs" / "trainer").iterdir())
    assert len(logs) == 2 and "resuming from step 4" in logs[1].read_text()
    other = study_dir / "trials" / str(next(t.number for t in complete if t is not retry))
    assert [s["step"] for s in json.loads((other / "history.json").read_text())["starts"]] == [0]
    assert "(retry 1)" in result.stdout


def test_summary_and_best_yaml_train_the_winner(tmp_path):
    space = write_space(tmp_path, study="small", sampler="grid", params={"optim.lr": {"choices": [0.001, 0.05]}})
    study_dir = tmp_path / "study"
    assert tune(space, study_dir, "train.epochs=1").returncode == 0
    summary = run_job("tune", "--space", str(space), "--study-dir", str(study_dir), "--summary")
    assert summary.returncode == 0, summary.stderr
    lines = summary.stdout.splitlines()
    assert lines[0].split() == ["trial", "optim.lr", "best", "val", "top-1", "state", "epochs", "time"]
    best_lr = float(lines[1].split()[1])
    best = yaml.safe_load((study_dir / "best.yaml").read_text())
    assert best["base"] == "digits_resnet20" and best["optim"]["lr"] == best_lr
    assert best["model"]["name"] == "simple_cnn" and best["train"]["max_steps_per_epoch"] == 6
    shown = run_job("config", "--config", str(study_dir / "best.yaml"))
    assert shown.returncode == 0 and f"lr: {best_lr}" in shown.stdout
    page = (study_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 2 and "Optimisation history" in page
    assert (study_dir / "space.yaml").read_text() == space.read_text()


BAD_SPACES = [
    ({"study": "x", "params": {"optim.lr": {"low": 0.1, "high": 0.01}}, "trials": 2}, "low (0.1) must be below high"),
    ({"study": "x", "sampler": "grid", "params": {"optim.lr": {"low": 0.01, "high": 0.1}}},
     "the grid sampler needs choices"),
    ({"study": "x", "sampler": "grid", "trials": 5, "params": {"optim.lr": {"choices": [0.1, 0.2]}}},
     "trials=5 is more than the grid's 2 points"),
    ({"study": "x", "sampler": "bayes", "trials": 2, "params": {"optim.lr": {"choices": [0.1]}}},
     "sampler must be one of grid, random, tpe"),
    ({"study": "x", "trials": 2, "params": {"optim.lrr": {"choices": [0.1]}}},
     "unknown config key 'optim.lrr' (did you mean optim.lr"),
    ({"study": "x", "trials": 2, "params": {"optim.lr": {"choices": [-1.0]}}}, "params.optim.lr = -1.0"),
    ({"study": "x", "trials": 2, "objective": "loss", "params": {"optim.lr": {"choices": [0.1]}}},
     "objective must be 'best validation top-1'"),
]


@pytest.mark.parametrize("space, message", BAD_SPACES)
def test_a_bad_space_is_one_line_and_exit_2_before_anything_trains(tmp_path, space, message):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    result = run_job("tune", "--config", "digits_resnet20", "--space", str(path), "--study-dir",
                     str(tmp_path / "study"))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "study" / "trials").exists()


def test_a_base_without_validation_and_a_bucket_without_database_are_refused(tmp_path):
    path = write_space(tmp_path, study="x", trials=2, params={"optim.lr": {"choices": [0.1, 0.2]}})
    result = run_job("tune", "--config", "digits_resnet20", "--space", str(path), "--study-dir",
                     str(tmp_path / "study"), "data.validation_split=0")
    assert result.returncode == 2 and "has no validation split" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_job("tune", "--config", "digits_resnet20", "--space", str(path), "--study-dir", "gs://bucket/study",
                     env=trainer_env(JOB_TUNE_STORAGE=""))
    assert result.returncode == 2 and "needs a shared database" in result.stderr
