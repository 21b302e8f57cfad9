"""CheckpointStore: the commit protocol on a local run dir, real TF checkpoints (on gs://:
tests/integration/test_checkpoint_gcs.py)."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from job.checkpoint import CheckpointStore
from job.errors import UserError
from job.rundir import RunDir
from job.storage import open_storage
from tests.support.ckpt_kill_writer import make_checkpoint, set_state

DATA = "data-00000-of-00001"


@pytest.fixture
def run_url(tmp_path):
    """A local run dir (tests/integration/test_checkpoint_gcs.py runs the tests that take it again on gs://)."""
    return str(tmp_path / "run")


@pytest.fixture
def open_run(tmp_path):
    """RunDir.open with a fresh, empty working copy each call (what a restarted pod has)."""
    opened = []

    def _open(url: str) -> RunDir:
        run = RunDir.open(url, work_dir=str(tmp_path / f"work{len(opened)}"), flush_seconds=0.2, retry_seconds=20)
        opened.append(run)
        return run

    yield _open
    for run in opened:
        try:
            run.close(timeout=5)
        except UserError:
            pass  # the test looked at what it wanted already


def assert_holds(ckpt: tf.train.Checkpoint, step: int, fill: float | None = None) -> None:
    assert int(ckpt.step.numpy()) == step
    np.testing.assert_array_equal(ckpt.weights.numpy(), np.full(ckpt.weights.shape, step if fill is None else fill))


def step_of(name: str) -> int:
    """The step of a checkpoint file or prefix name: ckpt-<step>[-<writer>][.<suffix>] (gs:// names carry a writer)."""
    return int(Path(name).name.split("-")[1].split(".")[0])


def stored_file(url: str, step: int, suffix: str) -> str:
    """The stored name of checkpoint `step`'s file ending in `suffix` (e.g. "index")."""
    return next(n for n in open_storage(url).list(f"checkpoints/ckpt-{step}") if step_of(n) == step
                and n.endswith(f".{suffix}"))


def committed_steps(url: str) -> list[int]:
    names = open_storage(url).list("checkpoints/")
    return sorted(step_of(n) for n in names if n.endswith(".commit.json"))


def save_steps(store: CheckpointStore, steps, top1=lambda step: step / 100) -> None:
    ckpt = make_checkpoint()
    for step in steps:
        set_state(ckpt, step)
        store.save(ckpt, step, {"val_top1": top1(step), "loss": np.float32(1.5)})


def test_save_latest_restore(run_url, open_run):
    run = open_run(run_url)
    store = CheckpointStore(run)
    assert store.latest() is None and store.best() is None
    ckpt = make_checkpoint()
    for step in (10, 20):
        set_state(ckpt, step)
        prefix = store.save(ckpt, step, {"val_top1": step / 100})
    assert Path(prefix).parent == run.local / "checkpoints" and step_of(prefix) == 20
    run.close(timeout=60)

    resumed = open_run(run_url)  # for gs://: an empty working copy, everything comes from the bucket
    found = CheckpointStore(resumed).latest()
    assert found.step == 20 and found.metrics == {"val_top1": 0.2}
    assert Path(found.prefix).parent == resumed.local / "checkpoints"
    store = CheckpointStore(resumed)
    restored = make_checkpoint()
    store.restore(restored, found)
    assert_holds(restored, 20)
    assert store.save(restored, 20) == found.prefix  # preempted right after resuming: nothing new to commit
    resumed.close(timeout=60)

    # The stored layout is a plain TF checkpoint directory.
    assert resumed.fetch("checkpoints")
    assert tf.train.latest_checkpoint(str(resumed.local / "checkpoints")) == found.prefix


def test_restore_into_a_different_model_is_a_user_error(tmp_path):
    run = RunDir.open(str(tmp_path / "run"))
    store = CheckpointStore(run)
    save_steps(store, [1])
    other = tf.train.Checkpoint(head=tf.Variable(tf.zeros([3])))
    with pytest.raises(UserError, match="does not match"):
        store.restore(other, store.latest())


def test_keeps_the_newest_and_the_best(run_url, open_run):
    run = open_run(run_url)
    store = CheckpointStore(run, keep=2)
    save_steps(store, range(1, 7), top1=lambda step: 0.9 if step == 2 else step / 100)
    run.close(timeout=60)

    assert committed_steps(run_url) == [2, 5, 6]
    stored = open_storage(run_url).list("checkpoints/")
    assert sorted({step_of(n) for n in stored if n != "checkpoints/checkpoint"}) == [2, 5, 6]
    assert sorted(step_of(p.name) for p in (run.local / "checkpoints").glob("ckpt-*.index")) == \
        [2, 5, 6]  # the working copy is pruned too

    reader = CheckpointStore(open_run(run_url))
    assert reader.best().step == 2 and reader.latest().step == 6
    assert reader.run.fetch("checkpoints")  # TF's state file lists exactly the kept checkpoints
    state = tf.train.get_checkpoint_state(str(reader.run.local / "checkpoints"))
    assert [step_of(p) for p in state.all_model_checkpoint_paths] == [2, 5, 6]
    assert step_of(state.model_checkpoint_path) == 6


@pytest.mark.parametrize("damage", ["data", "commit"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(run_url, open_run, caplog, damage):
    run = open_run(run_url)
    save_steps(CheckpointStore(run), [1, 2])
    run.close(timeout=60)

    stored = open_storage(run_url)
    if damage == "data":  # same size, one byte flipped: only the checksum can tell
        name = stored_file(run_url, 2, DATA)
        data = bytearray(stored.read_bytes(name))
        data[len(data) // 2] ^= 0xFF
        stored.write_bytes(name, bytes(data))
    else:
        stored.write_bytes("checkpoints/ckpt-2.commit.json", b'{"step": 2, "fil')

    resumed = open_run(run_url)
    store = CheckpointStore(resumed)
    with caplog.at_level(logging.WARNING, logger="job.checkpoint"):
        found = store.latest()
    assert found.step == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("ckpt-2" in w and "damaged" in w and "using ckpt-1" in w for w in warnings), warnings
    restored = make_checkpoint()
    store.restore(restored, found)
    assert_holds(restored, 1)

    # The resumed trainer reaches step 2 again: it replaces the damaged checkpoint instead of reporting a conflict.
    set_state(restored, 2)
    store.save(restored, 2, {"val_top1": 0.5})
    resumed.close(timeout=60)
    again = CheckpointStore(open_run(run_url))
    found = again.latest()
    assert found.step == 2
    restored = make_checkpoint()
    again.restore(restored, found)
    assert_holds(restored, 2)


def test_an_uncommitted_checkpoint_is_ignored_and_cleaned_up_later(run_url, open_run):
    run = open_run(run_url)
    store = CheckpointStore(run)
    save_steps(store, [1])
    run.close(timeout=60)
    stored = open_storage(run_url)
    for suffix in ("index", DATA):  # a trainer killed after uploading ckpt-2's files, before its commit object
        stored.write_bytes(f"checkpoints/ckpt-2.{suffix}", stored.read_bytes(stored_file(run_url, 1, suffix)))

    resumed = open_run(run_url)
    store = CheckpointStore(resumed)
    assert store.latest().step == 1
    save_steps(store, [3])
    resumed.close(timeout=60)
    assert committed_steps(run_url) == [1, 3]
    assert not [n for n in stored.list("checkpoints/ckpt-") if step_of(n) == 2]


def test_same_step_from_two_trainers_is_reported_at_the_next_save(run_url, open_run):
    first_run, second_run = open_run(run_url), open_run(run_url)
    first, second = CheckpointStore(first_run), CheckpointStore(second_run)
    save_steps(first, [5])
    assert first_run.flush(timeout=60)

    ckpt = make_checkpoint()
    set_state(ckpt, 5)
    ckpt.weights.assign(tf.fill(ckpt.weights.shape, -1.0))
    second.save(ckpt, 5)  # the commit happens in the background
    second_run.flush(timeout=60)
    with pytest.raises(UserError, match="another trainer is writing to " + re.escape(open_storage(run_url).url)):
        second.save(ckpt, 6)
    with pytest.raises(UserError, match="another trainer"):
        second_run.close(timeout=10)
    first_run.close(timeout=60)

    reader = CheckpointStore(open_run(run_url))
    restored = make_checkpoint()
    reader.restore(restored, reader.latest())
    assert_holds(restored, 5)  # the loser did not write over the winner's files
    assert committed_steps(run_url) == [5]


def test_concurrent_commits_of_one_step_let_exactly_one_win(run_url, open_run):
    runs = [open_run(run_url), open_run(run_url)]
    for run in runs:
        save_steps(CheckpointStore(run), [7])
    outcomes = []
    for run in runs:
        try:
            run.close(timeout=60)
            outcomes.append("committed")
        except UserError as e:
            assert "another trainer is writing to" in str(e)
            outcomes.append("refused")
    assert sorted(outcomes) == ["committed", "refused"]
    assert committed_steps(run_url) == [7]
    assert len({n for n in open_storage(run_url).list("checkpoints/ckpt-7-") if n.endswith(".index")}) == 1
