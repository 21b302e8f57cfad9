"""PostgreSQL stopped in the middle of a tune study (README, tuning: "the study database"): the worker waits and
retries, and goes on when the server is back; past the bound it stops with one line, and the same command finishes the
study. No trial is lost or counted twice. The moment is made by construction: the server is stopped while the trial
is held after a committed checkpoint (tests/support/hooked_tune.py), and the trial's next database call comes after
it."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.integration.test_tune import TRIAL_ARGS, load
from tests.support.postgres_server import PostgresServer
from tests.support.spaces import write_space
from tests.support.trainer_runs import ROOT, job_command, run_job, trainer_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # a trial, an outage, then the whole study again


@pytest.fixture
def own_postgres():
    """A server of this test's own (the session's must not be stopped): stopped and started again by the test."""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


def start_held_worker(tmp_path: Path, url: str, staleness: dict | None = None,
                      **env: str) -> tuple[subprocess.Popen, list[str], Path, Path]:
    """A tune worker whose first trial holds after its committed checkpoint at step 4 until the file `go` exists.
    `staleness`: the space's heartbeat and grace (default: a trial never goes stale)."""
    space = write_space(tmp_path, **({"staleness": staleness} if staleness else {}), study="outage", sampler="grid",
                        params={"optim.lr": {"choices": [0.01, 0.02]}})
    tune_args = ["--config", "digits_resnet20", "--space", str(space), "--study-dir", str(tmp_path / "study"),
                 "--storage", url, "train.epochs=2", *TRIAL_ARGS]
    log, go = tmp_path / "worker.log", tmp_path / "go"
    with open(log, "w") as out:
        worker = subprocess.Popen([job_command()[0], "-m", "tests.support.hooked_tune", "--hold-at-step", "4",
                                   "--wait-for", str(go), "--", *tune_args], cwd=ROOT, env=trainer_env(**env),
                                  stdout=out, stderr=subprocess.STDOUT)
    wait_for(lambda: "HELD" in log.read_text(), timeout=600, process=worker, what="the first trial to hold")
    return worker, tune_args, log, go


def finished_once(space: Path, study_dir: Path, url: str) -> list:
    """The study's complete trials; both grid points, each exactly once."""
    trials = load(space, study_dir, url).trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["optim.lr"] for t in complete) == [0.01, 0.02], [(t.number, t.state) for t in trials]
    return trials


def test_a_worker_waits_out_a_database_restart_mid_trial(own_postgres, tmp_path):
    url = own_postgres.create_database("outage")
    worker, _, log, go = start_held_worker(tmp_path, url)
    try:
        own_postgres.stop(remove=False)
        go.touch()  # the trial trains on: its epoch's report finds no server
        wait_for(lambda: "the study database is unreachable while reporting an epoch" in log.read_text(),
                 timeout=300, process=worker, what="the worker to notice the database is gone")
        own_postgres.start()  # the same data and port
        assert worker.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    text = log.read_text()
    assert "the study database is back after" in text and "Traceback" not in text, text[-3000:]
    trials = finished_once(tmp_path / "space.yaml", tmp_path / "study", url)
    assert len(trials) == 2, "no retry: the trial that waited was told once"
    run0 = tmp_path / "study" / "trials" / "0"
    assert [s["step"] for s in json.loads((run0 / "history.json").read_text())["starts"]] == [0]


def test_a_worker_stops_with_one_line_after_the_bound_and_the_same_command_finishes(own_postgres, tmp_path):
    url = own_postgres.create_database("outage")
    # The stopped worker's trial must go stale for the second command to retry it: a grace that expires (15 s, so a
    # heartbeat late on 2 loaded cores is not taken for a dead worker).
    worker, tune_args, log, go = start_held_worker(tmp_path, url, {"heartbeat_seconds": 1, "grace_seconds": 15},
                                                   JOB_TUNE_DATABASE_WAIT_SECONDS="3")
    try:
        own_postgres.stop(remove=False)
        go.touch()
        code = worker.wait(timeout=600)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    text = log.read_text()
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1, text[-3000:]
    assert "the study database was unreachable for 3 s while reporting an epoch" in errors[0], errors[0]
    assert "run the same command again" in errors[0] and "Traceback" not in text, text[-3000:]

    own_postgres.start()
    again = run_job("tune", *tune_args, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    trials = finished_once(tmp_path / "space.yaml", tmp_path / "study", url)
    dead = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in dead] == [0], "the stopped worker's trial is retried, not counted"
    retry = next(t for t in trials if t.state == TrialState.COMPLETE and t.params == dead[0].params)
    assert retry.user_attrs["resumed_from_step"] >= 4  # from the checkpoint the stopped worker committed
