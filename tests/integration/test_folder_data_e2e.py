"""data.name=folder with processes and buckets: the export-data command, a folder and its decoded cache in a bucket
on fake-gcs-server, a lock left by a decoder that was killed, and the trainer's one-line refusal of a bad folder
(docs/own-images.md; the layouts, the split, the cache and every bad input: tests/unit/test_folder_data.py)."""
import json
import logging
import time

import numpy as np

from job.data import decoded as decodedlib
from job.data import load_splits
from job.data.folder import list_folder
from tests.support.trainer_runs import run_job
from tests.unit.test_folder_data import class_folders, folder_cfg, refused


def test_export_data_command_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = run_job("export-data", "digits", str(tmp_path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "not empty" in result.stderr and (tmp_path / "keep.txt").read_text() == "mine"


def test_folder_in_a_bucket_decodes_into_a_bucket_cache(tmp_path, gcs_bucket, caplog):
    from job.storage import open_storage

    caplog.set_level(logging.INFO, logger="job")
    local = class_folders(tmp_path / "pets")
    bucket = open_storage(gcs_bucket)
    for path in sorted(local.rglob("*.png")):
        bucket.write_bytes(f"pets/{path.relative_to(local).as_posix()}", path.read_bytes())
    remote = load_splits(folder_cfg(f"{gcs_bucket}/pets", f"{gcs_bucket}/cache"), seed=0)
    here = load_splits(folder_cfg(local, tmp_path / "cache"), seed=0)
    np.testing.assert_array_equal(remote.x_test, here.x_test)
    assert [n for n in bucket.list("cache/") if n.endswith("manifest.json")]
    caplog.clear()
    load_splits(folder_cfg(f"{gcs_bucket}/pets", f"{gcs_bucket}/cache"), seed=0)
    assert "using the decoded cache gs://" in caplog.text


def test_a_bad_folder_is_one_line_from_the_trainer_with_no_run_left_behind(tmp_path):
    root = class_folders(tmp_path / "d", classes=("cat",))
    result = run_job("train", "--config", "digits_resnet20", "data.name=folder", f"data.dir={root}",
                     f"run.dir={tmp_path / 'run'}", timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "at least two classes" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_lock_left_by_a_decoder_killed_on_this_host_is_taken_over_at_once(tmp_path, caplog):
    """kill -9 during decoding, then the same command again (a restarted pod): no wait for the heartbeat to go stale."""
    import socket
    import subprocess
    import sys

    caplog.set_level(logging.INFO, logger="job")
    root = class_folders(tmp_path / "pets")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          timeout=60)
    key = decodedlib.listing_key(list_folder(str(root)).entries, 32)
    (tmp_path / "cache" / key).mkdir(parents=True)
    (tmp_path / "cache" / key / decodedlib.LOCK).write_text(json.dumps(
        {"id": "killed", "host": socket.gethostname(), "pid": int(gone.stdout), "beat": 7}))
    started = time.monotonic()
    load_splits(folder_cfg(root, tmp_path / "cache"), seed=0)
    assert "stopped; taking over" in caplog.text and "decoding 20 images" in caplog.text
    assert time.monotonic() - started < decodedlib.LOCK_STALE_SECONDS


def test_a_folder_in_a_missing_bucket_is_refused_in_one_line(gcs_bucket, tmp_path):
    refused(gcs_bucket.replace("gs://", "gs://no-such-") + "/pets", tmp_path, match="cannot list data.dir=gs://no-such-")
