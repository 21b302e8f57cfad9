"""Where a remote run's local working copy lives when run.work_dir is not given, and its removal.

A trainer's copy is a fixed folder per run URL and worker, $TMPDIR/job-runs/<hash of the URL>-w<worker>, so a trainer
killed on this machine leaves its copy to the next start of the same run (which then downloads only what changed).
The process using a folder holds an exclusive flock on it: a second trainer of the same run and worker on this machine
takes the next free folder (<name>.1, ...), never one in use. Readers (evaluate, predict, report) get a fresh folder.
Either is removed once the run dir has closed with everything stored; a folder the user named (run.work_dir) never is.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from job.errors import UserError

log = logging.getLogger(__name__)

ROOT_NAME = "job-runs"
_MAX_SAME_MACHINE = 8  # trainers of one run and worker on one machine: more is a mistake, not a workload


def root() -> Path:
    return Path(tempfile.gettempdir()) / ROOT_NAME


def folder_name(url: str, worker: int) -> str:
    return f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-w{worker}"


@dataclass
class WorkingCopy:
    path: Path
    owned: bool  # made here: removed once everything is stored
    _lock_fd: int | None = None

    @classmethod
    def given(cls, path: Path) -> WorkingCopy:
        """run.work_dir: the user's folder, never deleted."""
        return cls(path, owned=False)

    @classmethod
    def fresh(cls) -> WorkingCopy:
        root().mkdir(parents=True, exist_ok=True)
        return cls(Path(tempfile.mkdtemp(prefix="read-", dir=root())), owned=True)

    @classmethod
    def claim(cls, url: str, worker: int) -> WorkingCopy:
        """The first folder of this run and worker that no live process on this machine holds, locked."""
        base = folder_name(url, worker)
        for i in range(_MAX_SAME_MACHINE):
            path = root() / (base if i == 0 else f"{base}.{i}")
            fd = _lock(path)
            if fd is None:
                continue
            if any(path.iterdir()):
                log.info("reusing the working copy %s that an earlier start of %s left", path, url)
            if i:
                log.warning("another process on this machine uses the working copy of %s (worker %d); this one uses "
                            "%s", url, worker, path)
            return cls(path, owned=True, _lock_fd=fd)
        raise UserError(f"{_MAX_SAME_MACHINE} processes on this machine already train {url} as worker {worker}; "
                        f"stop them, or give this one its own run.work_dir")

    def remove(self) -> None:
        """Delete the folder if it was made here (a user's run.work_dir stays), and let go of its lock."""
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)
            try:
                self.path.parent.rmdir()  # job-runs/ itself, once no run uses it
            except OSError:
                pass
        self.release()

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on the folder `path` (created if absent); None if another process holds it.
    Retried when the folder was removed between opening and locking (its owner closed meanwhile)."""
    for _ in range(10):
        try:
            path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue  # job-runs/ or the folder went away with its last user: make it again
        except OSError as e:
            raise UserError(f"cannot create the local working copy {path}: {e.strerror}; set TMPDIR to a writable "
                            f"directory or point run.work_dir at one") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # locked a folder its owner removed meanwhile: take the path's new one
    raise UserError(f"could not lock the local working copy {path}: it keeps vanishing; point run.work_dir at a "
                    f"folder of this run's own")
