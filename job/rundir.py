"""A run's files: written to a local working copy first, mirrored to the run URL by one background thread.

Training never waits on the network: `publish` queues an upload and returns. Uploads run in the order they were
queued (the checkpoint commit protocol relies on that), each retried until it succeeds, so an outage longer than the
storage retry budget only delays them; `close` waits for the queue within a bounded time. A task that fails with a
UserError (another trainer committed first) stops the mirror: nothing more of this process is stored in the run. For a
local run directory the working copy *is* the run directory: there is nothing to upload, but `submit`ted tasks
(checkpoint commits: checksums, fsync, pruning) still run on the background thread, so a save blocks training for the
same time, the local write, wherever the run lives.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import random
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from job.errors import StorageUnavailableError, UserError, first_line
from job.storage import LocalStorage, Storage, open_storage
from job.workcopy import WorkingCopy

log = logging.getLogger(__name__)

_MAX_BACKOFF = 30.0  # seconds between retries of a failing upload while training goes on
_CLOSING_BACKOFF = 1.0  # while close() waits, retry often so the queue drains soon after the bucket is back
# Tests only, inert unless set: a regex; the first background task whose description matches it (e.g.
# "checkpoint ckpt-10$") is announced with a warning "held for a test: <task>" and never run, nor anything queued after
# it, so a test can kill the trainer with exactly the tasks before it done (tests/integration/test_train.py).
TEST_HOLD_ENV = "JOB_TEST_HOLD_TASK"


@dataclass
class _Task:
    what: str  # what is being stored, for log lines and close()'s error
    run: Callable[[], None]
    key: str | None = None  # file uploads: the relpath, to skip queuing a file that is already waiting


class RunDir:
    def __init__(self, url: str, local: Path, storage: Storage, flush_seconds: float,
                 copy: WorkingCopy | None = None):
        self.url = url
        self.local = local
        self._copy = copy  # a remote run's working copy: removed by a close that stored everything, if made here
        self.storage = storage  # the run URL's storage (the run directory itself for local runs)
        self.is_remote = storage.is_remote
        self.flush_seconds = flush_seconds
        self._cv = threading.Condition()
        self._queue: collections.deque[_Task] = collections.deque()  # head = running or next; removed when done
        self._queued_keys: set[str] = set()
        self._failures: list[UserError] = []
        self._watched: set[str] = set()
        self._uploaded: dict[str, tuple[int, int]] = {}  # watched file -> (size, mtime_ns) last uploaded
        self._next_scan = 0.0
        self._closing = False
        self._stopped = False
        self._closed = False
        self._test_hold = os.environ.get(TEST_HOLD_ENV, "")
        self._thread = threading.Thread(target=self._work, name=f"store {url}", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, url: str, work_dir: str = "", flush_seconds: float = 60.0,
             retry_seconds: float | None = None, worker: int | None = None) -> RunDir:
        """Check the run URL is usable (a one-line UserError if not) and set up the local working copy: `work_dir`,
        else the folder of this run and `worker` on this machine (a trainer: job/workcopy.py), else a fresh one.
        `retry_seconds`: budget of each storage call (default: storage.default_retry_seconds())."""
        storage = open_storage(url, retry_seconds=retry_seconds)
        storage.preflight()
        copy = None
        if storage.is_remote:
            if work_dir:
                copy = WorkingCopy.given(Path(work_dir))
            else:
                copy = WorkingCopy.claim(storage.url, worker) if worker is not None else WorkingCopy.fresh()
            local = copy.path
            try:
                local.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"cannot create the local working copy {local} (run.work_dir): {e.strerror}; point "
                                f"run.work_dir at a writable directory (on Kubernetes, an emptyDir)") from None
        else:
            local = Path(url)
            storage = LocalStorage(local)
        return cls(url=storage.url, local=local, storage=storage, flush_seconds=flush_seconds, copy=copy)

    def __repr__(self) -> str:
        return f"RunDir({self.url!r}, local={str(self.local)!r})"

    # ------------------------------------------------------------------------------------------------ public API

    def publish(self, relpath: str) -> None:
        """Queue a file, or every file under a folder, for upload. Returns at once."""
        if not self.is_remote:
            return
        path = self.local / relpath
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            self._queue_upload(file.relative_to(self.local).as_posix())

    def watch(self, reldir: str) -> None:
        """Re-upload changed files under `reldir` every flush_seconds (TensorBoard event files grow while written)."""
        if not self.is_remote:
            return
        with self._cv:
            self._watched.add(reldir.strip("/"))
            self._next_scan = 0.0
            self._cv.notify_all()

    def fetch(self, relpath: str) -> bool:
        """Copy a file (or every file under a folder) from the run URL into the working copy; True if present."""
        if not self.is_remote:
            return (self.local / relpath).exists()
        relpath = relpath.strip("/")
        if self.storage.exists(relpath):
            names = [relpath]
        else:
            names = self.storage.list(relpath + "/")
        for name in names:
            self.storage.get_file(name, self.local / name)
        return bool(names)

    def read_json(self, relpath: str) -> dict | None:
        """A JSON object in the run (downloaded first for a remote run: a new pod's working copy is empty); None if
        absent, a UserError if it is not one."""
        self.fetch(relpath)
        return LocalStorage(self.local).read_json(relpath)

    def read_record(self, relpath: str) -> dict:
        """A record an earlier start left (status, history), or {} with a warning if it cannot be had: unreadable, or
        the bucket unreachable right now. A record is worth less than the training it describes: never stop for it."""
        try:
            return self.read_json(relpath) or {}
        except Exception as e:  # noqa: BLE001 - an outage (RetryError, ...), a damaged file: all mean "start anew"
            log.warning("could not read the earlier %s of %s (%s: %s); starting a new one", relpath, self.url,
                        type(e).__name__, first_line(e))
            return {}

    def write_json(self, relpath: str, value: object) -> None:
        """Atomically into the working copy (a reader never sees half of it), then queued for upload."""
        LocalStorage(self.local).write_bytes(relpath, json.dumps(value, indent=1).encode())
        self.publish(relpath)

    def submit(self, task: Callable[[], None], what: str) -> None:
        """Run `task` on the background thread after everything queued before it. It is retried until it returns,
        except that a UserError it raises is kept and re-raised by raise_if_failed() and close(), and everything
        queued after it is dropped (this process must not write to a run someone else owns)."""
        self._put(_Task(what=what, run=task))

    def raise_if_failed(self) -> None:
        """Raise the first UserError a background task hit (e.g. another trainer committed the same checkpoint)."""
        with self._cv:
            if self._failures:
                raise self._failures[0]

    def pending(self) -> list[str]:
        with self._cv:
            return [t.what for t in self._queue]

    def flush(self, timeout: float) -> bool:
        """Upload changed watched files and wait until the queue is empty; False if `timeout` ran out first. Not to
        be called from a submitted task (it would wait for itself)."""
        self._scan_watched()
        deadline = time.monotonic() + timeout
        with self._cv:
            self._closing = True  # retry failing uploads often while someone waits for them
            self._cv.notify_all()
            try:
                while self._queue and not self._stopped:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cv.wait(remaining)
                return not self._queue
            finally:
                self._closing = False

    def close(self, timeout: float) -> None:
        """Flush watched files and wait (at most `timeout` s) for every queued upload, then remove a working copy made
        for this run (not a run.work_dir). Raises UserError naming what could not be stored (it stays in the local
        working copy, for the next start to reuse) or the first failure of a background task."""
        if self._closed:
            return
        self._closed = True
        drained = self.flush(timeout)
        with self._cv:
            left = [t.what for t in self._queue]
            self._stopped = True
            self._cv.notify_all()
        self._thread.join(timeout=1.0)  # a request in flight may take longer; the daemon thread ends after it
        if self._copy is not None and drained and not self._failures:
            self._copy.remove()  # everything is in the bucket
        self.raise_if_failed()
        if not drained:
            shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
            if not self.is_remote:
                raise StorageUnavailableError(
                    f"could not finish {len(left)} item(s) in {self.url} within {timeout:.0f} s ({shown}); see the "
                    f"warnings above for why (a full or read-only disk?), then run the job again")
            raise StorageUnavailableError(
                f"could not store {len(left)} item(s) in {self.url} within {timeout:.0f} s ({shown}); they remain "
                f"in the local working copy {self.local}: check the bucket, then copy them with "
                f"`gcloud storage cp -r {self.local}/* {self.url}/`, or run the job again")

    # ------------------------------------------------------------------------------------------------ internals

    def _put(self, task: _Task) -> None:
        with self._cv:
            if self._stopped:
                raise RuntimeError(f"{self!r} is closed")
            if self._failures:
                log.debug("not storing %s: an earlier background task failed", task.what)
                return
            if task.key is not None:
                if task.key in self._queued_keys:
                    return  # it will be read when its turn comes, so the newest content goes up anyway
                self._queued_keys.add(task.key)
            self._queue.append(task)
            self._cv.notify_all()

    def _queue_upload(self, relpath: str, snapshot: bool = False) -> None:
        self._put(_Task(what=relpath, key=relpath, run=lambda: self._upload(relpath, snapshot)))

    def _upload(self, relpath: str, snapshot: bool) -> None:
        path = self.local / relpath
        if not path.exists():
            log.debug("not uploading %s: removed locally before its turn", path)
            return
        if not snapshot:
            self.storage.put_file(path, relpath)
            return
        # A file still being appended to is copied first, so the upload and its checksum see the same bytes.
        stat = path.stat()
        fd, temp = tempfile.mkstemp(prefix="job-upload-")
        os.close(fd)
        try:
            shutil.copyfile(path, temp)
            self.storage.put_file(temp, relpath)
        finally:
            os.unlink(temp)
        self._uploaded[relpath] = (stat.st_size, stat.st_mtime_ns)

    def _scan_watched(self) -> None:
        for reldir in list(self._watched):
            root = self.local / reldir
            if not root.is_dir():
                continue
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                relpath = path.relative_to(self.local).as_posix()
                stat = path.stat()
                if self._uploaded.get(relpath) != (stat.st_size, stat.st_mtime_ns):
                    self._queue_upload(relpath, snapshot=True)

    def _work(self) -> None:
        failing_since = None
        attempt = 0
        while True:
            with self._cv:
                while not self._stopped and not self._queue and not self._scan_due():
                    self._cv.wait(self._seconds_to_scan())
                if self._stopped:
                    return
                scan = self._scan_due()
                task = self._queue[0] if self._queue else None
                if task is not None and task.key is not None:
                    self._queued_keys.discard(task.key)  # from now on a re-publish queues it again
            if scan:
                self._next_scan = time.monotonic() + self.flush_seconds
                self._scan_watched()
                continue
            if self._test_hold and re.search(self._test_hold, task.what):
                log.warning("held for a test: %s", task.what)
                threading.Event().wait()  # until the test kills the process
            try:
                task.run()
            except UserError as e:
                log.error("%s: %s", task.what, e)
                with self._cv:
                    self._failures.append(e)
                    dropped = [t.what for t in self._queue][1:]
                    self._queue.clear()
                    self._queued_keys.clear()
                    self._cv.notify_all()
                if dropped:
                    log.warning("not storing %d queued item(s) in %s after that error", len(dropped), self.url)
            except Exception as e:  # noqa: BLE001 - transient beyond the retry budget: keep it queued, try again
                attempt += 1
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("storing %s in %s failed (%s: %s); training goes on, retrying in the background",
                                task.what, self.url, type(e).__name__, first_line(e, 200))
                with self._cv:
                    if task.key is not None:
                        self._queued_keys.add(task.key)
                    cap = _CLOSING_BACKOFF if self._closing else _MAX_BACKOFF
                    self._cv.wait(random.uniform(0.5, 1.0) * min(cap, 0.5 * 2 ** attempt))
            else:
                if failing_since is not None:
                    log.warning("storing in %s works again after %.0f s", self.url, time.monotonic() - failing_since)
                failing_since, attempt = None, 0
                self._done(task)

    def _done(self, task: _Task) -> None:
        with self._cv:
            self._queue.popleft()
            self._cv.notify_all()

    def _scan_due(self) -> bool:
        return bool(self._watched) and time.monotonic() >= self._next_scan

    def _seconds_to_scan(self) -> float | None:
        return max(0.0, self._next_scan - time.monotonic()) if self._watched else None
