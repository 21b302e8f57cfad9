"""Storage on gs:// against a real fake-gcs-server (the tests of tests/unit/test_storage.py that take `storage_url`
again, on a bucket), outages, and RunDir's background mirror and working copies."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import logging
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from google.api_core.exceptions import RetryError

from job.errors import UserError
from job.rundir import RunDir
from job.storage import open_storage
from job.workcopy import folder_name
from tests.unit.test_storage import (  # noqa: F401 - collected here again, with this module's storage_url
    test_large_file_round_trip,
    test_preflight_passes_on_a_usable_location,
    test_round_trip,
    test_write_if_absent_conflict,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def storage_url(gcs_bucket):
    return gcs_bucket + "/some/prefix"


def wait_for(condition, what: str, timeout: float = 30.0):
    """Poll until condition() is truthy (not a timing assertion: the deadline only keeps a broken test from hanging)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)
    return value


# ---------------------------------------------------------------------------------------------------------- Storage


def test_preflight_on_missing_bucket_is_one_line_user_error(gcs_bucket):
    url = "gs://no-such-bucket-here/run"
    with pytest.raises(UserError) as caught:
        open_storage(url).preflight()
    message = str(caught.value)
    assert "\n" not in message
    assert url in message and "does not exist" in message


@pytest.fixture
def storage_log():
    """Log lines, in order, of the storage client's retries and of RunDir's mirror. google.api_core logs "Retrying due
    to ..." at DEBUG each time an attempt failed and will be tried again, on a logger that may not propagate (so caplog
    would not see it): a handler of our own on each logger."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    loggers = [logging.getLogger("google.api_core.retry"), logging.getLogger("job.rundir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield lines
    for logger, level in zip(loggers, levels):
        logger.removeHandler(handler)
        logger.setLevel(level)


def retries(lines: list[str], after: int = -1) -> list[int]:
    """Indexes of the "Retrying due to ..." lines (after index `after`): attempts that failed and are retried."""
    return [i for i, line in enumerate(lines) if i > after and line.startswith("Retrying due to")]


def test_retries_survive_a_server_restart_on_the_same_port(gcs_outage_server, storage_log):
    server = gcs_outage_server
    bucket = server.create_bucket()
    storage = open_storage(f"gs://{bucket}/run", retry_seconds=60)
    storage.write_bytes("before.txt", b"1")
    port = server.port

    server.stop()
    outcome = {}

    def write_during_outage():
        try:
            storage.write_bytes("during.txt", b"written across an outage")
            outcome["read"] = storage.read_bytes("during.txt")
        except Exception as e:  # noqa: BLE001 - reported below
            outcome["error"] = e

    writer = threading.Thread(target=write_during_outage)
    writer.start()
    wait_for(lambda: retries(storage_log), "a first attempt to hit the closed port", timeout=60)
    server.restart()
    writer.join(timeout=90)
    assert server.port == port
    assert "error" not in outcome, outcome.get("error")
    assert outcome["read"] == b"written across an outage"


def test_calls_raise_once_the_retry_budget_is_spent(gcs_outage_server):
    storage = open_storage(f"gs://{gcs_outage_server.create_bucket()}/run", retry_seconds=1.0)
    gcs_outage_server.stop()
    with pytest.raises(RetryError):
        storage.write_bytes("x.txt", b"x")


# ---------------------------------------------------------------------------------------------------------- RunDir


def test_open_on_missing_bucket_fails_before_training(gcs_bucket, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        RunDir.open("gs://no-such-bucket-here/run", work_dir=str(tmp_path))


def test_unusable_work_dir_is_one_line_user_error(gcs_bucket, tmp_path):
    (tmp_path / "a-file").write_text("")  # (the tests run as root, so a permission could not be refused)
    with pytest.raises(UserError, match=r"cannot create the local working copy .*a-file/work \(run.work_dir\): "
                                        r"Not a directory; point run.work_dir at a writable directory"):
        RunDir.open(gcs_bucket + "/run", work_dir=str(tmp_path / "a-file" / "work"))


def test_published_files_appear_in_the_bucket(gcs_bucket, tmp_path):
    url = gcs_bucket + "/run"
    run = RunDir.open(url, work_dir=str(tmp_path / "work"))
    assert run.is_remote and run.local == tmp_path / "work"
    (run.local / "eval.json").write_text('{"top1": 0.5}')
    (run.local / "export" / "variables").mkdir(parents=True)
    (run.local / "export" / "saved_model.pb").write_bytes(b"pb")
    (run.local / "export" / "variables" / "v.data").write_bytes(os.urandom(50_000))
    run.publish("eval.json")
    run.publish("export")
    run.close(timeout=60)

    stored = open_storage(url)
    assert stored.list() == ["eval.json", "export/saved_model.pb", "export/variables/v.data"]
    assert stored.read_bytes("export/variables/v.data") == (run.local / "export/variables/v.data").read_bytes()


def test_fetch_copies_from_the_run_url(gcs_bucket, tmp_path):
    url = gcs_bucket + "/run"
    stored = open_storage(url)
    stored.write_bytes("eval.json", b"{}")
    stored.write_bytes("export/saved_model.pb", b"pb")
    stored.write_bytes("export/variables/v.data", b"data")
    run = RunDir.open(url, work_dir=str(tmp_path / "fresh"))
    assert run.fetch("eval.json")
    assert run.fetch("export")
    assert not run.fetch("missing.json")
    assert (run.local / "eval.json").read_bytes() == b"{}"
    assert (run.local / "export" / "variables" / "v.data").read_bytes() == b"data"
    run.close(timeout=10)


def test_watch_reuploads_a_growing_file(gcs_bucket, tmp_path):
    url = gcs_bucket + "/run"
    stored = open_storage(url)
    run = RunDir.open(url, work_dir=str(tmp_path / "work"), flush_seconds=0.2)
    events = run.local / "logs" / "train" / "events.out"
    events.parent.mkdir(parents=True)
    events.write_bytes(b"first record;")
    run.watch("logs")

    def stored_events():
        return stored.exists("logs/train/events.out") and stored.read_bytes("logs/train/events.out")

    assert wait_for(stored_events, "the first upload") == b"first record;"
    with open(events, "ab") as f:
        f.write(b"second record;")
    wait_for(lambda: stored_events() == b"first record;second record;", "the re-upload of the grown file")

    with open(events, "ab") as f:
        f.write(b"last record;")
    run.close(timeout=60)  # close flushes watched files without waiting for the next period
    assert stored_events() == b"first record;second record;last record;"


def test_uploads_wait_out_an_outage_longer_than_the_retry_budget(gcs_outage_server, tmp_path, storage_log):
    server = gcs_outage_server
    url = f"gs://{server.create_bucket()}/run"
    run = RunDir.open(url, work_dir=str(tmp_path / "work"), retry_seconds=0.5)
    server.stop()
    (run.local / "eval.json").write_text("{}")
    run.publish("eval.json")  # returns at once although the bucket is unreachable
    wait_for(lambda: run.pending() == ["eval.json"], "the upload to be queued")
    # One attempt spends its whole retry budget (the mirror says so), then the upload is tried again and fails again:
    gave_up = wait_for(lambda: [i for i, line in enumerate(storage_log) if "retrying in the background" in line],
                       "the first attempt to give up", timeout=60)[0]
    wait_for(lambda: retries(storage_log, after=gave_up), "a later attempt to fail", timeout=60)
    assert run.pending() == ["eval.json"]  # still queued
    server.restart()
    run.close(timeout=60)
    assert open_storage(url).read_bytes("eval.json") == b"{}"


def test_close_with_the_server_down_past_the_timeout_names_what_was_not_stored(gcs_outage_server, tmp_path):
    server = gcs_outage_server
    run = RunDir.open(f"gs://{server.create_bucket()}/run", work_dir=str(tmp_path / "work"), retry_seconds=0.5)
    server.stop()
    (run.local / "final_eval.json").write_text("{}")
    run.publish("final_eval.json")
    with pytest.raises(UserError) as caught:
        run.close(timeout=2)
    message = str(caught.value)
    assert "final_eval.json" in message and run.url in message and str(run.local) in message
    assert "\n" not in message
    assert caught.value.exit_code == 1, "an outage is worth retrying: the pod's exit must not fail the Job at once"


# ------------------------------------------------------------------------- the working copy of a remote run
# (docs/runs.md)

@pytest.fixture
def temp_dir(tmp_path, monkeypatch):
    """The system temp dir, as tempfile sees it (TMPDIR for child processes)."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv("TMPDIR", str(folder))
    return folder


def _store_one_file(run: RunDir) -> None:
    (run.local / "eval.json").write_text("{}")
    run.publish("eval.json")


def test_a_trainers_working_copy_is_removed_once_everything_is_stored(gcs_bucket, temp_dir):
    url = gcs_bucket + "/run"
    run = RunDir.open(url, worker=3)
    assert run.local == temp_dir / "job-runs" / folder_name(url, 3)
    _store_one_file(run)
    run.close(timeout=60)
    assert open_storage(url).list() == ["eval.json"]
    assert list(temp_dir.iterdir()) == []


def test_a_readers_working_copy_is_removed_too(gcs_bucket, temp_dir):
    run = RunDir.open(gcs_bucket + "/run")  # evaluate, predict, report: no worker
    assert run.local.parent == temp_dir / "job-runs" and run.local.is_dir()
    _store_one_file(run)
    run.close(timeout=60)
    assert list(temp_dir.iterdir()) == []


def test_a_given_work_dir_is_never_deleted(gcs_bucket, tmp_path, temp_dir):
    run = RunDir.open(gcs_bucket + "/run", work_dir=str(tmp_path / "mine"), worker=0)
    _store_one_file(run)
    run.close(timeout=60)
    assert (tmp_path / "mine" / "eval.json").read_text() == "{}"


def test_a_working_copy_left_by_a_killed_process_is_reused(gcs_bucket, temp_dir, caplog):
    url = gcs_bucket + "/run"
    killed = subprocess.run(
        [sys.executable, "-c", "import os, sys; from job.rundir import RunDir; "
         "run = RunDir.open(sys.argv[1], worker=0); (run.local / 'left.txt').write_text('x'); "
         "os.kill(os.getpid(), 9)", url], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120,
        capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    left = temp_dir / "job-runs" / folder_name(url, 0)
    assert (left / "left.txt").is_file()
    with caplog.at_level(logging.INFO, logger="job"):
        run = RunDir.open(url, worker=0)
    assert run.local == left and (run.local / "left.txt").is_file()
    assert f"reusing the working copy {left} that an earlier start of {url} left" in caplog.text
    run.close(timeout=60)
    assert not left.exists()


def test_two_trainers_on_one_machine_never_share_a_working_copy(gcs_bucket, temp_dir, caplog):
    url = gcs_bucket + "/run"
    first = RunDir.open(url, worker=0)
    with caplog.at_level(logging.WARNING, logger="job"):
        second = RunDir.open(url, worker=0)  # another flock on the same folder: refused, as for another process
    assert first.local.name == folder_name(url, 0) and second.local.name == folder_name(url, 0) + ".1"
    assert f"another process on this machine uses the working copy of {url} (worker 0)" in caplog.text
    other_worker = RunDir.open(url, worker=1)
    assert other_worker.local.name == folder_name(url, 1)
    for run in (first, second, other_worker):
        run.close(timeout=60)
    assert list(temp_dir.iterdir()) == []


def test_a_working_copy_that_could_not_be_stored_stays(gcs_outage_server, temp_dir):
    server = gcs_outage_server
    run = RunDir.open(f"gs://{server.create_bucket()}/run", retry_seconds=0.5, worker=0)
    server.stop()
    _store_one_file(run)
    with pytest.raises(UserError, match="they remain in the local working copy"):
        run.close(timeout=2)
    assert (run.local / "eval.json").is_file(), "the next start reuses it, or the user copies it up"
