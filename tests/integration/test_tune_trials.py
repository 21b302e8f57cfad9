"""A tuner that never wastes a trial (README, tuning: "Workers and storage", "Nothing lost when a worker dies", "In
TensorBoard"): suggestions distinct across workers and restarts, a dead trial retried exactly once however many
workers race for it, a failed trial not counted as finished, the samplers and pruners from one registry, and the study
in a real TensorBoard's HParams dashboard. Real Optuna, SQLite and PostgreSQL, real worker processes."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from tests.integration.test_tune import TRIAL_ARGS, load, tune
from tests.support.child_io import ChildLines
from tests.support.spaces import write_space
from tests.support.trainer_runs import ROOT, job_command, run_job, stop_process, trainer_env, wait_for

# 2 params x 3 values: 9 points. With the study's seed in every worker (the old way) the two workers and the restart
# each drew the same first points; independent draws of 6 of 9 points collide with probability 1 - 9!/3!/9^6 = 89%.
DISCRETE = {"optim.lr": {"choices": [0.01, 0.02, 0.05]}, "train.batch_size": {"choices": [16, 32, 64]}}
_STUDIES: dict[str, tuple[Path, Path, str]] = {}
# The race test's two workers train at once after the race: a grace of 15 s keeps a starved heartbeat thread from
# passing for a dead worker, and costs the test only the wait for trial 0 to go stale.
STALE_AFTER_15_S = {"heartbeat_seconds": 1, "grace_seconds": 15}


def two_workers_and_a_restart(tmp_path_factory, sampler: str) -> tuple[Path, Path, str]:
    """A study of 4 trials by 2 workers (one command, --workers 2), then started again for 6 trials; run once per
    sampler for the module. Returns the space, the study dir and the output of both commands."""
    if sampler not in _STUDIES:
        folder = tmp_path_factory.mktemp(f"distinct-{sampler}")
        study_dir = folder / "study"
        space = write_space(folder, study=f"distinct-{sampler}", sampler=sampler, trials=4, seed=3, params=DISCRETE)
        first = tune(space, study_dir, "--workers", "2", "train.epochs=1")
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        write_space(folder, study=f"distinct-{sampler}", sampler=sampler, trials=6, seed=3, params=DISCRETE)
        again = tune(space, study_dir, "train.epochs=1")
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        _STUDIES[sampler] = (space, study_dir, first.stdout + first.stderr + again.stdout + again.stderr)
    return _STUDIES[sampler]


@pytest.mark.slow
@pytest.mark.timeout(900)  # two commands, 6 trials
@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_two_workers_and_a_restart_never_train_the_same_values_twice(tmp_path_factory, sampler):
    space, study_dir, output = two_workers_and_a_restart(tmp_path_factory, sampler)
    trials = load(space, study_dir, None).trials()
    points = [(t.params["optim.lr"], t.params["train.batch_size"]) for t in trials]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6, [(t.number, t.state) for t in trials]
    assert len(set(points)) == 6, points
    workers = {line.split("]")[0] for line in output.splitlines() if line.startswith("[worker") and " trial " in line}
    assert len(workers) == 2, output[-3000:]  # the first command's trials were drawn by two processes at once
    assert "exited with" not in output and "Traceback" not in output, output[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tensorboard_serves_the_study_in_its_hparams_dashboard(tmp_path_factory, tmp_path):
    from tests.integration.test_tensorboard_gcs import TensorBoard

    space, study_dir, _ = two_workers_and_a_restart(tmp_path_factory, "tpe")
    trials = load(space, study_dir, None).trials()
    board = TensorBoard(str(study_dir), trainer_env(), tmp_path / "tensorboard.log")
    try:
        def post(endpoint: str, body: dict) -> dict:
            request = urllib.request.Request(f"http://127.0.0.1:{board.port}/data/plugin/hparams/{endpoint}",
                                             data=json.dumps(body).encode(), method="POST",
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.load(response)

        groups: list = []

        def all_trials_served() -> bool:
            nonlocal groups
            assert board.process.poll() is None, (tmp_path / "tensorboard.log").read_text()[-3000:]
            try:
                groups = post("session_groups", {"experimentName": "", "startIndex": 0, "sliceSize": 100,
                                                 "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS"]})
            except OSError:  # not listening yet, or still loading
                return False
            groups = groups.get("sessionGroups", [])
            return len(groups) == len(trials) and all(g["metricValues"] for g in groups)

        wait_for(all_trials_served, timeout=240, what="TensorBoard to serve every trial's hparams")
        experiment = post("experiment", {"experimentName": ""})
    finally:
        stop_process(board.process)
    # The experiment (written once at the study dir's root): the space's params and the objective.
    domains = {h["name"]: h.get("domainDiscrete") for h in experiment["hparamInfos"]}
    assert domains == {"optim.lr": [0.01, 0.02, 0.05], "train.batch_size": [16, 32, 64]}, domains
    assert {"tag": "tune/objective", "group": ""} in [m["name"] for m in experiment["metricInfos"]]
    # Each trial: its values and objective, in the run dir beside its event files.
    served = {g["name"]: g for g in groups}
    for trial in trials:
        group = served[f"trial {trial.number}"]
        assert group["hparams"] == {k: float(v) for k, v in trial.params.items()}, group["hparams"]
        objective = [m["value"] for m in group["metricValues"] if m["name"]["tag"] == "tune/objective"]
        assert objective == [pytest.approx(trial.value, abs=1e-6)], (objective, trial.value)
        assert [s["name"] for s in group["sessions"]] == [f"trials/{trial.number}/logs"]


def storage_of(request, kind: str) -> str | None:
    return None if kind == "sqlite" else request.getfixturevalue("postgres_database")


def stale_trial_numbers(study) -> list[int]:
    return [study.storage.get_trial_number_from_id(i) for i in study.storage._get_stale_trial_ids(study.study_id)]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_two_workers_racing_for_a_dead_trial_retry_it_exactly_once(tmp_path, request, kind):
    url = storage_of(request, kind)
    space = write_space(tmp_path, STALE_AFTER_15_S, study="race", sampler="grid",
                        params={"optim.lr": {"choices": [0.01, 0.02]}})
    study_dir = tmp_path / "study"
    tune_args = ["--config", "digits_resnet20", "--space", str(space), "--study-dir", str(study_dir),
                 *(["--storage", url] if url else []), "train.epochs=2", *TRIAL_ARGS]
    hooked = [job_command()[0], "-m", "tests.support.hooked_tune"]

    def start(*hook_args: str) -> subprocess.Popen:
        return subprocess.Popen([*hooked, *hook_args, "--", *tune_args], cwd=ROOT, env=trainer_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    processes = []
    try:
        held = start("--hold-at-step", "4")  # trial 0: checkpoint 4 committed, then killed
        processes.append(held)
        ChildLines(held, "the held worker").until(lambda line: line.startswith("HELD"), 600, "trial 0 to hold")
        held.kill()
        held.wait(timeout=30)
        # Both racers start only once trial 0 is stale, and each stops after seeing it, before claiming it.
        watched = load(space, study_dir, url)
        wait_for(lambda: stale_trial_numbers(watched) == [0], timeout=120,
                 what="trial 0's heartbeat to go stale")
        go = tmp_path / "go"
        racers = [start("--pause-on-stale", str(go)) for _ in range(2)]
        processes += racers
        lines = [ChildLines(r, f"racer {i}") for i, r in enumerate(racers)]
        for line in lines:
            assert line.until(lambda s: s.startswith("STALE SEEN"), 300, "the dead trial") == "STALE SEEN [0]"
        go.touch()  # both claim trial 0 now
        for racer, line in zip(racers, lines):
            line.until(lambda s: "is done:" in s, 900, "the study to be done")
            assert racer.wait(timeout=120) == 0, line.seen[-30:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    output = "\n".join(line for child in lines for line in child.seen)
    trials = load(space, study_dir, url).trials()
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1, [(t.number, t.state, t.system_attrs) for t in trials]
    assert output.count("(retry of trial 0)") == 1 and "another trainer is writing" not in output, output[-3000:]
    assert [t.state for t in trials].count(TrialState.FAIL) == 1  # the dead trial 0 only
    assert sorted(t.params["optim.lr"] for t in trials if t.state == TrialState.COMPLETE) == [0.01, 0.02]
    assert retries[0].state == TrialState.COMPLETE and retries[0].user_attrs["resumed_from_step"] == 4
    run0 = study_dir / "trials" / "0"
    assert [s["step"] for s in json.loads((run0 / "history.json").read_text())["starts"]] == [0, 4]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_failed_trial_is_shown_as_failed_and_not_counted_as_finished(tmp_path):
    # A learning rate that diverges on the first steps: a failure of the trial's own, not of its worker.
    space = write_space(tmp_path, study="fails", sampler="grid", params={"optim.lr": {"choices": [0.01, 1.0e6]}})
    study_dir = tmp_path / "study"
    result = tune(space, study_dir, "train.epochs=1", "run.log_every_steps=1", "optim.warmup_epochs=0",
                  "optim.weight_decay=0")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study = load(space, study_dir, None)
    assert (study.finished(), study.failed(), study.done()) == (1, 1, True)
    assert "study fails: 1 of 2 trials finished, 1 failed (grid sampler, none pruner)" in result.stdout
    assert "study fails is done: 1 of 2 trials finished, 1 failed" in result.stderr + result.stdout
    board = (study_dir / "leaderboard.txt").read_text()
    assert "failed" in board and "training diverged" in board, board


def test_space_choices_and_the_tune_help_come_from_the_registry(tmp_path):
    from job.tune.registry import PRUNERS, SAMPLERS
    from job.tune.space import load_space

    for sampler in SAMPLERS:
        for pruner in PRUNERS:
            path = write_space(tmp_path, study="x", sampler=sampler, pruner=pruner, trials=2,
                               params={"optim.lr": {"choices": [0.1, 0.2]}})
            assert (load_space(str(path)).sampler, load_space(str(path)).pruner) == (sampler, pruner)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"study": "x", "trials": 2, "pruner": "hyperband",
                                    "params": {"optim.lr": {"choices": [0.1]}}}))
    result = run_job("tune", "--config", "digits_resnet20", "--space", str(path))
    assert result.returncode == 2 and f"pruner must be one of {', '.join(PRUNERS)}" in result.stderr, result.stderr
    shown = subprocess.run([sys.executable, "-m", "job", "tune", "--help"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    for spec in [*SAMPLERS.values(), *PRUNERS.values()]:
        assert f"{spec.name:8} {spec.description}" in shown.stdout, shown.stdout
