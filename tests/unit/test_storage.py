"""Local storage and the local RunDir (gs:// and the background mirror: tests/integration/test_storage_gcs.py)."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


import pytest

from job.errors import UserError
from job.rundir import RunDir
from job.storage import AlreadyExistsError, open_storage


@pytest.fixture
def storage_url(tmp_path):
    """A local folder (tests/integration/test_storage_gcs.py runs the tests that take it again on gs://)."""
    return str(tmp_path / "store")


# ---------------------------------------------------------------------------------------------------------- Storage

def test_round_trip(storage_url, tmp_path):
    storage = open_storage(storage_url)
    assert storage.is_remote == storage_url.startswith("gs://")
    assert not storage.exists("a/b.txt")
    assert storage.list() == []

    storage.write_bytes("a/b.txt", b"hello")
    storage.write_bytes("a/b.txt", b"hello again")  # overwrite
    assert storage.read_bytes("a/b.txt") == b"hello again"
    assert storage.exists("a/b.txt")

    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(300_000))
    storage.put_file(source, "a/c/blob.bin")
    storage.get_file("a/c/blob.bin", tmp_path / "out" / "copy.bin")
    assert (tmp_path / "out" / "copy.bin").read_bytes() == source.read_bytes()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["copy.bin"]  # no temp file left behind

    assert storage.list() == ["a/b.txt", "a/c/blob.bin"]
    assert storage.list("a/c") == ["a/c/blob.bin"]
    assert storage.list("a/b") == ["a/b.txt"]

    storage.delete("a/b.txt")
    storage.delete("a/b.txt")  # absent is fine
    assert not storage.exists("a/b.txt")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("a/b.txt")
    with pytest.raises(FileNotFoundError):
        storage.get_file("a/b.txt", tmp_path / "missing.txt")
    assert not (tmp_path / "missing.txt").exists()


def test_large_file_round_trip(storage_url, tmp_path):
    """Above 8 MiB the GCS client switches to resumable uploads; the CRC32C check must hold there too."""
    storage = open_storage(storage_url)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(9 * 2**20))
    storage.put_file(source, "big.bin")
    storage.get_file("big.bin", tmp_path / "big.copy")
    assert (tmp_path / "big.copy").read_bytes() == source.read_bytes()


def test_write_if_absent_conflict(storage_url):
    storage = open_storage(storage_url)
    storage.write_bytes("commit.json", b"first", if_absent=True)
    with pytest.raises(AlreadyExistsError):
        storage.write_bytes("commit.json", b"second", if_absent=True)
    assert storage.read_bytes("commit.json") == b"first"
    assert storage.list() == ["commit.json"]  # the losing write left no temp file


def test_preflight_passes_on_a_usable_location(storage_url):
    storage = open_storage(storage_url)
    storage.preflight()
    assert storage.list() == []  # its probe object is gone again


def test_preflight_on_unwritable_local_dir(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match="a_file/run"):
        open_storage(str(tmp_path / "a_file" / "run")).preflight()


def test_missing_credentials_are_a_user_error(monkeypatch, tmp_path):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
    with pytest.raises(UserError, match="credentials"):
        open_storage("gs://some-bucket/run")


def test_bad_urls_are_user_errors():
    with pytest.raises(UserError, match="unsupported"):
        open_storage("s3://bucket/x")
    with pytest.raises(UserError, match="bad GCS URL"):
        open_storage("gs://")


# ---------------------------------------------------------------------------------------------------------- RunDir

def test_local_rundir_is_the_run_dir(tmp_path):
    run = RunDir.open(str(tmp_path / "run"))
    assert not run.is_remote and run.local == tmp_path / "run" and run.local.is_dir()
    (run.local / "eval.json").write_text("{}")
    run.publish("eval.json")
    run.watch("logs")
    assert run.fetch("eval.json") and not run.fetch("nothing.json")
    run.close(timeout=1)


# ------------------------------------------------------------------------- the working copy of a remote run
# (docs/runs.md)
