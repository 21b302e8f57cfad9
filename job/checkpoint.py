"""Checkpoints with a commit protocol: a checkpoint exists only once its commit object is stored.

Stored layout under the run URL (a plain TF checkpoint directory, so tf.train.latest_checkpoint works on it):

    checkpoints/<prefix>.index, checkpoints/<prefix>.data-*   written by tf.train.Checkpoint.write
    checkpoints/ckpt-<step>.commit.json                     its prefix, file names, sizes, CRC32C, metrics; written LAST
    checkpoints/checkpoint                                  TF's state file, listing the kept checkpoints' prefixes:
                                                            written before each commit object (naming the checkpoint
                                                            about to be committed, whose files are all stored by then)
                                                            and again after it, before anything is pruned

<prefix> is ckpt-<step>-<writer>, where <writer> is 8 hex digits unique to the process: two trainers on one run never
write the same data file, so the one that loses the commit cannot overwrite the files of the one that won. The commit
object is created with create-if-absent (GCS generation precondition 0, or a hard link locally), so two trainers
writing the same step cannot both commit it. Readers take the newest commit whose files verify. Checkpoints of format 1
(plain ckpt-<step> prefixes) are still read.

A save blocks training only while the variables are copied into host memory (job/snapshot.py): the write into the local
working copy runs on a thread of its own, and the commit (checksums, upload, commit object, pruning) on the run
directory's background thread once that write has ended, for local runs too. A process killed at any moment leaves at
worst files no commit names, which a later commit removes.
"""
from __future__ import annotations

import errno
import json
import logging
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import tensorflow as tf

from job.commits import commit_path, committed_steps
from job.errors import DiskFullError, UserError, first_line
from job.layout import CKPT_DIR, CKPT_STATE_FILE
from job.metrics import BEST_METRIC
from job.rundir import RunDir
from job.snapshot import Snapshot, SnapshotWriter
from job.storage import AlreadyExistsError, LocalStorage, crc32c_of_file

log = logging.getLogger(__name__)

_OWN_COMMITS_TIMEOUT = 600.0  # seconds latest()/best() wait for this store's queued commits (uploads, for gs://)
_PREFIX_RE = re.compile(r"ckpt-(\d+)(?:-[0-9a-f]{8})?")
_DATA_RE = re.compile(r"(ckpt-(\d+)(?:-[0-9a-f]{8})?)\.(?:index|data-\d+-of-\d+)")  # what Checkpoint.write leaves
_FILE_RE = re.compile(r"(ckpt-(\d+)(?:-[0-9a-f]{8})?)(?:\.|_temp/)(?!commit\.json$)")  # any file but a commit


@dataclass(frozen=True)
class Committed:
    step: int
    prefix: str  # local TF checkpoint prefix, ready for tf.train.Checkpoint.read
    metrics: dict = field(default_factory=dict)


class DamagedCheckpoint(Exception):
    """A committed checkpoint whose commit object is unreadable or whose files do not match it."""


def _name(step: int) -> str:
    return f"ckpt-{step}"


def _checkpoint_file(relpath: str) -> tuple[int, str] | None:
    """(step, prefix) of a checkpoint data file or TF temp file under checkpoints/; None for anything else."""
    match = _FILE_RE.match(relpath[len(CKPT_DIR) + 1:]) if relpath.startswith(f"{CKPT_DIR}/") else None
    return (int(match.group(2)), match.group(1)) if match else None


class CheckpointStore:
    def __init__(self, run: RunDir, keep: int = 3, best_metric: str = BEST_METRIC):
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.run = run
        self.keep = keep
        self.best_metric = best_metric  # the commit objects' metric that ranks checkpoints for best()
        self.storage = run.storage  # the run URL (the run directory itself for local runs)
        self.working = LocalStorage(run.local)  # the local working copy (== storage's folder for local runs)
        self.dir = run.local / CKPT_DIR
        self._writer = uuid.uuid4().hex  # makes this store's commit objects (and remote file names) unique
        self._manifests: dict[int, dict] = {}  # step -> parsed commit object, for steps known committed
        self._damaged: set[int] = set()  # committed steps latest()/best() found damaged; save() may replace them
        self._saved: dict[int, str] = {}  # step -> local prefix, for steps this store saved (committed or queued)
                                          # or restored
        self._queued: set[int] = set()  # steps saved whose commit has not run yet
        self._snapshots: SnapshotWriter | None = None  # of the checkpoint object save() was last given

    # ------------------------------------------------------------------------------------------------ writing

    def save(self, ckpt: tf.train.Checkpoint, step: int, metrics: dict | None = None) -> str:
        """Snapshot checkpoint `step` (blocking for the copy into host memory, and for the write before it if that is
        still running), write it into the working copy in the background and queue its commit (run.submit) after the
        write. Returns the local prefix. Raises UserError if another trainer committed a checkpoint of this run
        meanwhile, or an earlier write or commit failed."""
        self.run.raise_if_failed()
        if step in self._saved:  # e.g. a final save right after a periodic one: the state is the same
            log.debug("checkpoint %s already saved", _name(step))
            return self._saved[step]
        name = self._prefix(step)
        prefix = str(self.dir / name)
        snapshot = self.snapshots(ckpt).write(prefix)
        self._saved[step] = prefix
        metrics = {k: _plain(v) for k, v in (metrics or {}).items()}
        commit = {}  # built on first run of the task; a retried task reuses the same bytes

        def commit_task() -> None:
            if not commit:
                self._written(snapshot)
                commit["data"] = self._commit_object(step, name, metrics)
            self._commit(step, commit["data"])
            self._queued.discard(step)

        self._queued.add(step)
        self.run.submit(commit_task, what=f"checkpoint {_name(step)}")
        return prefix

    def snapshots(self, ckpt: tf.train.Checkpoint) -> SnapshotWriter:
        """The snapshot writer of `ckpt` (one per checkpoint object: its host-memory twins are made once)."""
        if self._snapshots is None or self._snapshots.ckpt is not ckpt:
            if self._snapshots is not None:
                self._snapshots.wait()
            self._snapshots = SnapshotWriter(ckpt)
        return self._snapshots

    def _written(self, snapshot: Snapshot) -> None:
        """Wait (on the commit thread) until the snapshot's background write has ended; raise UserError if it failed."""
        snapshot.wait()
        error = snapshot.error
        if error is not None:
            self._discard_partial(snapshot.prefix)
        if isinstance(error, tf.errors.NotFoundError):  # its folder or temp files vanished while TensorFlow wrote them
            raise UserError(f"checkpoint {snapshot.prefix} was deleted while it was written ({error.message[-120:]}): "
                            f"is another trainer writing to {self.run.url}? Give each run its own run.dir")
        if _out_of_space(error):
            raise DiskFullError(f"could not write checkpoint {snapshot.prefix}: no space left on the disk of "
                                f"{self.run.local}; free space there (or give it a bigger disk), then run the same "
                                f"command again: it resumes from the last committed checkpoint")
        if error is not None:
            raise UserError(f"could not write checkpoint {snapshot.prefix} ({type(error).__name__}: "
                            f"{first_line(error, 200)}): is the disk of {self.run.local} full or read-only?")

    def _discard_partial(self, prefix: str) -> None:
        """What a failed write left (this writer's names only): a half-written data file would keep a full disk full."""
        shutil.rmtree(prefix + "_temp", ignore_errors=True)
        for path in Path(prefix).parent.glob(Path(prefix).name + ".*"):
            path.unlink(missing_ok=True)

    def _prefix(self, step: int) -> str:
        """The name of this writer's files of checkpoint `step`."""
        return f"{_name(step)}-{self._writer[:8]}"

    def _commit_object(self, step: int, name: str, metrics: dict) -> bytes:
        files = []
        for path in sorted(self.dir.glob(f"{name}.*")):
            match = _DATA_RE.fullmatch(path.name)
            if match and match.group(1) == name:
                files.append({"name": path.name, "size": path.stat().st_size, "crc32c": crc32c_of_file(path)})
        if not any(f["name"] == f"{name}.index" for f in files):
            raise UserError(f"checkpoint {self.dir / name} vanished from the working copy before it was "
                            f"committed; something else deletes files in {self.run.local}")
        return json.dumps({"format": 2, "step": step, "prefix": name, "files": files, "metrics": metrics,
                           "writer": self._writer, "time": time.time()}, indent=1).encode()

    def _committed_already(self, step: int, ours: bytes) -> bool:
        """True if `ours` is committed already (a retried task); raises AlreadyExistsError if someone else's is."""
        if step in self._damaged:  # its files are about to be replaced; only its commit object must go
            self._forget_damaged(step)
            return False
        try:
            existing = self.storage.read_bytes(commit_path(step))
        except FileNotFoundError:
            return False
        if existing == ours:
            return True
        raise AlreadyExistsError(commit_path(step))

    def _conflict(self, step: int) -> UserError:
        return UserError(f"another trainer is writing to {self.run.url}: it committed checkpoint {_name(step)} "
                         f"first; stop the other trainer or give this run its own run.dir")

    def _commit(self, step: int, data: bytes) -> None:
        stored = [f"{CKPT_DIR}/{f['name']}" for f in json.loads(data)["files"]]
        try:
            if not self._committed_already(step, data):
                if self.run.is_remote:
                    for relpath in stored:
                        if not (self.run.local / relpath).is_file():
                            raise UserError(f"checkpoint file {self.run.local / relpath} vanished from the working "
                                            f"copy before it was uploaded; something else deletes files in "
                                            f"{self.run.local}")
                        self.storage.put_file(self.run.local / relpath, relpath)
                # TF's state file names the new checkpoint before its commit object exists (all its files are
                # stored by now), so no moment has a commit that tf.train.latest_checkpoint cannot find.
                self._write_state_file(self._kept_prefixes(step, json.loads(data)))
                self.storage.write_bytes(commit_path(step), data, if_absent=True)
        except AlreadyExistsError:
            committed = set(self.committed_steps()) - self._damaged  # the state file must not name our files now
            self._write_state_file([p for p in map(self._prefix_of, self._kept(committed)) if p])
            for relpath in stored:  # names only this writer uses: nobody else's checkpoint is touched
                for place in self._places():
                    place.delete(relpath)
            raise self._conflict(step) from None
        if self.run.is_remote:
            self.working.write_bytes(commit_path(step), data)  # the working copy mirrors the stored layout
        self._manifests[step] = json.loads(data)
        self._after_commit(step)

    def _kept(self, committed: set[int]) -> list[int]:
        """The steps to keep of `committed`: the newest `keep`, and the best by best_metric; oldest first."""
        kept = sorted(committed)[-self.keep:]
        ranked = self._by_metric(committed)
        if ranked and ranked[0] not in kept:
            kept = sorted(kept + ranked[:1])
        return kept

    def _kept_prefixes(self, step: int, manifest: dict) -> list[str]:
        """The prefixes TF's state file names once `step` (about to be committed with `manifest`) is: those kept."""
        self._manifests[step] = manifest  # so _by_metric sees its metrics; committed or not, it is this manifest
        try:
            kept = self._kept((set(self.committed_steps()) - self._damaged) | {step})
            return [p for p in map(self._prefix_of, kept) if p]
        finally:
            self._manifests.pop(step)

    def _after_commit(self, step: int) -> None:
        """Point TF's state file at the kept checkpoints, then prune the rest (commit object first)."""
        committed = set(self.committed_steps()) - self._damaged
        if not committed:
            return
        kept = self._kept(committed)
        prefixes = {s: self._prefix_of(s) for s in kept}
        self._write_state_file([prefixes[s] for s in kept if prefixes[s]])
        for old in sorted(committed - set(kept)):
            self._remove(old, why=f"keeping the newest {self.keep} and the best")
        for bad in sorted(self._damaged):
            self._forget_damaged(bad)
        # Files no commit names, of earlier steps: from trainers killed mid-upload, replaced damaged checkpoints, or
        # another trainer that lost a commit. (This step's and later ones may still be written or on their way.)
        names = self.storage.list(f"{CKPT_DIR}/ckpt-")
        if self.run.is_remote:
            names += self.working.list(f"{CKPT_DIR}/ckpt-")
        for relpath in sorted(set(names)):
            found = _checkpoint_file(relpath)
            if found and found[0] < step and prefixes.get(found[0]) != found[1]:
                for place in self._places():
                    place.delete(relpath)

    def _prefix_of(self, step: int) -> str | None:
        """The prefix a committed step's commit object names; None if it is unreadable or gone."""
        try:
            manifest = self._manifest(step)
        except DamagedCheckpoint:
            return None
        return manifest["prefix"] if manifest else None

    def _write_state_file(self, prefixes: list[str]) -> None:
        if not prefixes:
            return
        lines = [f'model_checkpoint_path: "{prefixes[-1]}"']
        lines += [f'all_model_checkpoint_paths: "{p}"' for p in prefixes]
        text = ("\n".join(lines) + "\n").encode()
        self.working.write_bytes(CKPT_STATE_FILE, text)
        if self.run.is_remote:
            self.storage.write_bytes(CKPT_STATE_FILE, text)

    def _forget_damaged(self, step: int) -> None:
        """Uncommit a checkpoint latest()/best() found damaged, and delete its files, so this run can write that step
        again (under this writer's own names, which are kept: a queued save of this step may own them already)."""
        log.info("uncommitting damaged checkpoint %s/%s/%s", self.run.url, CKPT_DIR, _name(step))
        self._delete(step, keep_prefix=self._prefix(step))
        self._damaged.discard(step)

    def _remove(self, step: int, why: str) -> None:
        log.info("removing checkpoint %s/%s/%s: %s", self.run.url, CKPT_DIR, _name(step), why)
        self._delete(step)

    def _delete(self, step: int, keep_prefix: str = "") -> None:
        """The commit object of `step` first, so no reader picks it up half-deleted, then its files."""
        for place in self._places():
            place.delete(commit_path(step))
            for relpath in place.list(f"{CKPT_DIR}/{_name(step)}"):
                found = _checkpoint_file(relpath)
                if found and found[0] == step and found[1] != keep_prefix:
                    place.delete(relpath)
        self._manifests.pop(step, None)

    def _places(self) -> tuple:
        """Where this run's checkpoint files are: the run URL, and the local working copy when that is elsewhere."""
        return (self.storage, self.working) if self.run.is_remote else (self.storage,)

    # ------------------------------------------------------------------------------------------------ reading

    def committed_steps(self) -> list[int]:
        """Steps that have a commit object, oldest first (not verified)."""
        return committed_steps(self.storage)

    def _manifest(self, step: int) -> dict | None:
        """The commit object of `step`; None if it vanished (pruned meanwhile). Raises DamagedCheckpoint if
        unreadable."""
        if step not in self._manifests:
            try:
                data = self.storage.read_bytes(commit_path(step))
            except FileNotFoundError:
                return None
            try:
                manifest = json.loads(data)
                manifest.setdefault("prefix", _name(step))  # format 1 wrote ckpt-<step> files only
                prefix = _PREFIX_RE.fullmatch(manifest["prefix"])
                assert prefix and int(prefix.group(1)) == step and manifest["step"] == step
                assert isinstance(manifest.setdefault("metrics", {}), dict)
                assert any(f["name"] == f"{manifest['prefix']}.index" for f in manifest["files"])
                for f in manifest["files"]:
                    match = _DATA_RE.fullmatch(f["name"])
                    assert match and match.group(1) == manifest["prefix"]
                    assert isinstance(f["size"], int) and isinstance(f["crc32c"], int)
            except (ValueError, KeyError, TypeError, AttributeError, AssertionError):
                raise DamagedCheckpoint("its commit object is not valid JSON of the expected form") from None
            self._manifests[step] = manifest
        return self._manifests[step]

    def _by_metric(self, steps) -> list[int]:
        """The steps whose metrics have a numeric best_metric, best first (the newest first among equals)."""
        scored = []
        for step in steps:
            try:
                value = (self._manifest(step) or {}).get("metrics", {}).get(self.best_metric)
            except DamagedCheckpoint:
                continue
            if isinstance(value, (int, float)):
                scored.append((value, step))
        return [step for _, step in sorted(scored, reverse=True)]

    def verify(self, step: int) -> Committed | None:
        """The committed checkpoint `step` as a local prefix once its files match its commit object (downloaded for
        remote runs); None if it is not committed (or was pruned meanwhile). Raises DamagedCheckpoint."""
        manifest = self._manifest(step)
        if manifest is None:
            return None
        for f in manifest["files"]:
            local = self.dir / f["name"]
            problem = _mismatch(local, f)
            downloads = 2 if self.run.is_remote else 0  # a second download rules out a one-off transfer problem
            while problem and downloads:
                downloads -= 1
                try:
                    self.storage.get_file(f"{CKPT_DIR}/{f['name']}", local)
                except FileNotFoundError:
                    problem = "missing"
                    break
                problem = _mismatch(local, f)
            if problem:
                if not self.storage.exists(commit_path(step)):
                    return None  # pruned by a writer while we read it
                raise DamagedCheckpoint(f"{f['name']}: {problem}")
        return Committed(step=step, prefix=str(self.dir / manifest["prefix"]), metrics=dict(manifest["metrics"]))

    def _first_usable(self, steps: list[int], what: str) -> Committed | None:
        damaged = []
        for step in steps:
            try:
                found = self.verify(step)
            except DamagedCheckpoint as e:
                damaged.append((step, str(e)))
                self._damaged.add(step)
                continue
            if found is not None:
                for bad, reason in damaged:
                    log.warning("checkpoint %s/%s/%s is damaged (%s); using %s instead",
                                self.run.url, CKPT_DIR, _name(bad), reason, _name(found.step))
                return found
        for bad, reason in damaged:
            log.warning("checkpoint %s/%s/%s is damaged (%s) and no other %s checkpoint verifies",
                        self.run.url, CKPT_DIR, _name(bad), reason, what)
        return None

    def _wait_for_own_commits(self) -> None:
        """So that latest() and best() see what this store saved (its commits run on the background thread)."""
        if self._queued and not self.run.flush(_OWN_COMMITS_TIMEOUT):
            log.warning("reading the committed checkpoints of %s while this process still commits %s",
                        self.run.url, ", ".join(_name(s) for s in sorted(self._queued)))

    def latest(self) -> Committed | None:
        """The newest committed checkpoint whose files verify (remote runs: downloaded into the working copy)."""
        self._wait_for_own_commits()
        return self._first_usable(sorted(self.committed_steps(), reverse=True), "committed")

    def best(self) -> Committed | None:
        """The committed checkpoint with the highest metrics[best_metric] among those that verify."""
        self._wait_for_own_commits()
        return self._first_usable(self._by_metric(self.committed_steps()), "scored")

    def damaged_reason(self) -> str:
        """Why latest() or best() found nothing when it was damage ("" otherwise): the end of a one-line error whose
        beginning names the run. Damaged checkpoints are never deleted by a reader; the warnings above name them."""
        if not self._damaged:
            return ""
        damaged = ", ".join(_name(s) for s in sorted(self._damaged))
        return (f"has no usable checkpoint: {damaged} failed verification (see the warnings above); restore "
                f"{CKPT_DIR}/ from a copy, or train again into a new run.dir")

    def restore(self, ckpt: tf.train.Checkpoint, committed: Committed) -> None:
        status = ckpt.read(committed.prefix)
        try:
            status.assert_existing_objects_matched()
        except AssertionError as e:
            raise UserError(f"checkpoint {committed.prefix} does not match what is being restored (was the model "
                            f"or optimizer config changed?): {first_line(e, 200)}") from None
        status.expect_partial()  # values of objects not built yet (e.g. optimizer slots) are restored when they are
        self._saved[committed.step] = committed.prefix  # saving it again (preempted right after resuming): a no-op


def _out_of_space(error: BaseException | None) -> bool:
    """ENOSPC, as TensorFlow's writer (RESOURCE_EXHAUSTED, "No space left on device") or Python reports it."""
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    return isinstance(error, tf.errors.ResourceExhaustedError) and "No space left on device" in str(error)


def _mismatch(path: Path, expected: dict) -> str:
    """Why a local file does not match its commit-object entry ("" if it does)."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != expected["size"]:
        return f"size {size} != committed {expected['size']}"
    crc = crc32c_of_file(path)
    if crc != expected["crc32c"]:
        return f"CRC32C {crc:08x} != committed {expected['crc32c']:08x}"
    return ""


def _plain(value):
    """Metrics as JSON numbers (tensors and numpy scalars included)."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    if hasattr(value, "item"):
        value = value.item()
    return value
