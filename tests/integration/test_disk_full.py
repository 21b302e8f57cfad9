"""The disk of a run filling up during a checkpoint save (docs/runs.md, "Exit codes"): a real tmpfs as the run
directory, a filler file that leaves room for one and a half checkpoints of the model (measured, not guessed), so
the second save is the one that fails."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import subprocess
from pathlib import Path

import pytest

from job.checkpoint import CheckpointStore
from job.errors import DiskFullError
from job.rundir import RunDir
from tests.support.trainer_runs import run_job

pytestmark = pytest.mark.slow

# simple_cnn: checkpoints of about 10 MB, so the tmpfs stays small while the run's other files are a rounding error.
SMALL = ["--config", "digits_resnet20", "model.name=simple_cnn", "train.epochs=1", "train.max_steps_per_epoch=20",
         "train.batch_size=32", "checkpoint.every_steps=5", "run.progress=false"]
PAGE = 4096


def tmpfs_bytes(path: Path) -> int:
    """What a file takes on tmpfs: whole pages."""
    return -(-path.stat().st_size // PAGE) * PAGE


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a fresh tmpfs of `size` bytes; unmounted at teardown. No skip: a test that cannot mount fails."""
    mounted = []

    def mount(size: int) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"cannot mount a tmpfs at {point} (the test needs root): {done.stderr.strip()}"
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=True, timeout=30)


def checkpoint_bytes(tmp_path: Path) -> int:
    """The size on tmpfs of one checkpoint of this model: a real run of 5 steps, measured from its commit object."""
    run = tmp_path / "measure"
    done = run_job("train", *SMALL, "train.max_steps_per_epoch=5", f"run.dir={run}")
    assert done.returncode == 0, done.stderr[-3000:]
    commit = json.loads((run / "checkpoints" / "ckpt-5.commit.json").read_text())
    return sum(-(-f["size"] // PAGE) * PAGE for f in commit["files"])


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def test_a_full_disk_during_a_save_stops_with_one_line_and_a_resume_finishes(small_disk, tmp_path):
    size = checkpoint_bytes(tmp_path)
    disk = small_disk(6 * size + 8 * 2**20)  # room for the kept checkpoints, one being written, the export and logs
    run_dir = disk / "run"
    # Room for the first checkpoint and half of the second: the save at step 10 runs out of space, whatever the speed.
    filler = disk / "filler"
    with open(filler, "wb") as out:
        out.truncate(0)
        out.write(b"\0" * (free_bytes(disk) - size - size // 2))
    command = ["train", *SMALL, f"run.dir={run_dir}"]

    full = run_job(*command)
    assert full.returncode == DiskFullError.exit_code == 1, \
        f"a full disk is fixed by freeing space and retrying: exit 1 (retriable)\n{full.stderr[-3000:]}"
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, full.stderr[-3000:]
    assert f"could not write checkpoint {run_dir}/checkpoints/ckpt-10-" in errors[0], errors[0]
    assert f"no space left on the disk of {run_dir}; free space there" in errors[0], errors[0]
    assert "Traceback" not in full.stderr and "Logging error" not in full.stderr, full.stderr[-3000:]

    assert not list(run_dir.glob("checkpoints/ckpt-10-*")), "the failed write's half must not keep the disk full"
    assert free_bytes(disk) >= size // 4, "(the checks below need room for the reader's preflight)"
    store = CheckpointStore(RunDir.open(str(run_dir)))
    latest = store.latest()  # verifies the files against the commit object: the failed save damaged nothing
    assert latest is not None and latest.step == 5
    store.run.close(timeout=10)

    filler.unlink()
    again = run_job(*command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from step 5 (" in again.stderr
    store = CheckpointStore(RunDir.open(str(run_dir)))
    assert store.latest().step == 20
    store.run.close(timeout=10)
