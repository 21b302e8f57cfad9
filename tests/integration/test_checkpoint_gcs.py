"""CheckpointStore on gs:// (a real fake-gcs-server): the commit protocol tests of tests/unit/test_checkpoint.py
again on a bucket, and writers killed at random moments."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import logging
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tensorflow as tf

from job.checkpoint import CheckpointStore
from job.rundir import RunDir
from job.storage import open_storage
from tests.support.child_io import ChildLines
from tests.support.ckpt_kill_writer import make_checkpoint
from tests.support.gcs_proxy import GcsProxy
from tests.unit.test_checkpoint import (  # noqa: F401 - collected here again, with this module's run_url
    assert_holds,
    open_run,
    step_of,
    test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one,
    test_an_uncommitted_checkpoint_is_ignored_and_cleaned_up_later,
    test_concurrent_commits_of_one_step_let_exactly_one_win,
    test_keeps_the_newest_and_the_best,
    test_same_step_from_two_trainers_is_reported_at_the_next_save,
    test_save_latest_restore,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_url(gcs_bucket):
    return gcs_bucket + "/run"


# Where a trial's kill lands: after a random delay, or while one request of the writer is held by GcsProxy until the
# kill (its step is in the request's object name, but for TF's state file). Trials take them in turn.
KILL_MOMENTS = ("delay", "resume", "upload", "state", "commit", "prune")


@pytest.mark.slow  # about 35 s: 20 writer processes killed at chosen moments
def test_killed_at_random_moments_a_fresh_store_always_resumes(gcs_server, gcs_bucket, tmp_path, caplog):
    """A writer saving to gs:// in a loop is SIGKILLed at seeded random moments of each kind in turn: after a random
    delay (anything: resuming, writing, uploading, committing, pruning), or while a proxy holds, until the kill, its
    listing of the checkpoints or download of the newest one (resuming), the data file of its k-th checkpoint
    (uploading), its k-th upload of TF's state file (just before a commit object, or just after one), that
    checkpoint's commit object (committing) or its k-th delete of an older checkpoint (pruning).
    After each kill a fresh store with an empty working copy must find a checkpoint that verifies and restores
    consistently, committed progress must never go backwards, and a kill while step N's upload or commit was held
    leaves exactly step N-1 as the newest commit (commits run in order, one at a time)."""
    url = gcs_bucket + "/killed"
    trials = 24
    rng = random.Random(20240601)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", **gcs_server.env()}
    writers = subprocess.Popen([sys.executable, "-m", "tests.support.ckpt_kill_writer"], cwd=ROOT,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)

    lines = ChildLines(writers, "the writer fork server (tests/support/ckpt_kill_writer.py)")

    def ask(line: str) -> str:
        return lines.ask(line, 60, f"its answer to {line.split()[0]!r}")

    last_step, resumed_steps, kinds = 0, [], []
    try:
        assert lines.next(300, "its ready line (after importing TensorFlow)") == "ready"
        for trial in range(trials):
            kind, nth, delay = KILL_MOMENTS[trial % len(KILL_MOMENTS)], rng.randint(1, 3), rng.uniform(0.05, 1.5)
            proxy = GcsProxy(gcs_server.endpoint)  # one per writer: after the kill nothing of it can reach the bucket
            # its working copy is empty: a resume downloads the newest checkpoint if there is one
            proxy.hold_checkpoint_moment(kind, nth, resume_downloads=last_step > 0)
            try:
                work = tmp_path / f"writer{trial}"
                started = ask(f"start {url} {work} {trial} STORAGE_EMULATOR_HOST={proxy.endpoint}")
                assert started.startswith("started "), started
                if kind == "delay":
                    time.sleep(delay)  # any moment will do: nothing below depends on where this one lands
                    held = None
                else:
                    held = proxy.wait_held(timeout=300)
                    kinds.append(f"{kind}: {held}")
                assert ask("kill") == "killed", "the writer failed by itself (see its stderr)"
            finally:
                proxy.close()  # drops the held request; returns once no request of the killed writer is in flight

            run = RunDir.open(url, work_dir=str(tmp_path / f"reader{trial}"), retry_seconds=20)
            store = CheckpointStore(run)
            with caplog.at_level(logging.WARNING, logger="job.checkpoint"):
                found = store.latest()
            if kind in ("upload", "commit"):
                assert (found.step if found else 0) == step_of(held.name) - 1, (str(held), found)
            if kind == "prune":  # a commit came before it
                assert found is not None, str(held)
            if found is not None:
                restored = make_checkpoint()
                store.restore(restored, found)
                assert_holds(restored, found.step)
                assert found.step >= last_step, f"a committed checkpoint was lost: {resumed_steps} then {found.step}"
                last_step = found.step
                # tf.train.latest_checkpoint works on the run: TF's state file exists once anything is committed
                # (it goes up before each commit object: a "state" kill holds its upload), names the newest commit,
                # and its newest entry restores consistently (committed, or about to be, with all files stored).
                assert run.fetch("checkpoints/checkpoint"), f"a commit without TF's state file ({kind}: {held})"
                state = tf.train.get_checkpoint_state(str(run.local / "checkpoints"))
                named = [Path(p).name for p in state.all_model_checkpoint_paths]
                assert Path(found.prefix).name in named, (named, found)
                newest = Path(state.model_checkpoint_path).name
                assert step_of(newest) >= found.step and newest == named[-1], (newest, named)
                run.fetch(f"checkpoints/{newest}.index")
                for data_file in open_storage(url).list(f"checkpoints/{newest}.data-"):
                    run.fetch(data_file)
                latest = make_checkpoint()
                latest.read(str(run.local / "checkpoints" / newest)).assert_consumed()
                assert_holds(latest, step_of(newest))
            resumed_steps.append(last_step)
            run.close(timeout=10)
    finally:
        writers.stdin.close()
        try:
            writers.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(writers.pid, signal.SIGKILL)
            writers.wait()
    print(f"\nkills: {trials} trials; held until the kill: {kinds}; newest commit after each: {resumed_steps}")
    assert last_step > 0, f"no checkpoint was ever committed: {resumed_steps}"
    assert not [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
