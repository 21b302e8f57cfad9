"""A real PostgreSQL server for tests and rehearsals: Debian's `postgresql` binaries (tests/tools/install.sh installs
them), a cluster of the test's own in a temporary folder, on a free port of 127.0.0.1, run as the unprivileged
`postgres` user (PostgreSQL refuses to run as root), no system service involved. Stopped with `pg_ctl stop -m fast`,
and by the postmaster's pid (SIGKILL to its process group) if that fails.

    initdb -D DIR/data -A trust -U test
    pg_ctl -D DIR/data -l DIR/server.log -o "-p PORT -k DIR -c listen_addresses=127.0.0.1 ..." -w start

Fixtures (register the module in tests/conftest.py's `pytest_plugins`):
  postgres_server     one server for the whole session: a PostgresServer (`.url`, `.create_database(name)`, ...)
  postgres_database   a fresh, empty database on it for one test: its SQLAlchemy URL
                      (postgresql+psycopg://test@127.0.0.1:PORT/NAME), so tests never share a study

Without the pytest fixtures (tests/rehearsal/rehearse_tune.py):

    with PostgresServer() as server:
        url = server.create_database("study")
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

USER = "test"  # the cluster's superuser; trust authentication, so no password
SYSTEM_USER = "postgres"  # the unprivileged user the server runs as when the tests run as root
# A server for tests: no durability needed, and two cores are shared with everything else.
SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=200")
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PostgresNotInstalled(RuntimeError):
    pass


def postgres_bin() -> Path:
    """The newest /usr/lib/postgresql/<major>/bin that has initdb and pg_ctl (Debian's layout; the /usr/bin wrappers
    of postgresql-common do not include initdb)."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found = [d for d in found if (d / "pg_ctl").exists() and (d / "postgres").exists()]
    if not found:
        raise PostgresNotInstalled("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); "
                                   "run `bash tests/tools/install.sh`")

    def major(directory: Path) -> float:
        try:
            return float(directory.parent.name)
        except ValueError:
            return 0.0

    return max(found, key=major)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes (its parent, pg_ctl's shell, is gone and init reaps it).
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class PostgresServer:
    """One PostgreSQL cluster of our own: `start()` makes it (initdb) and starts it; `stop()` stops it and deletes its
    folder. `root` (default: a new folder under the system temp dir) must be reachable by the postgres user."""

    def __init__(self, root: Path | None = None, port: int | None = None):
        self.bin = postgres_bin()
        self._own_root = root is None
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="pg-test-"))
        self.data = self.root / "data"
        self.log_file = self.root / "server.log"
        self.port = port
        self.pid: int | None = None
        self.as_root = os.geteuid() == 0

    # --- addresses ---
    @property
    def url(self) -> str:
        """SQLAlchemy / Optuna URL of the `postgres` database."""
        return self.database_url("postgres")

    def database_url(self, name: str, user: str = USER) -> str:
        return f"postgresql+psycopg://{user}@127.0.0.1:{self.port}/{name}"

    def conninfo(self, name: str = "postgres") -> str:
        """libpq URL for psycopg.connect()."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{name}"

    # --- life cycle ---
    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if self.as_root:
            command = ["runuser", "-u", SYSTEM_USER, "--", *command]
        # cwd: the postgres user may not be able to enter the caller's working directory.
        return subprocess.run(command, cwd=self.root, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "LC_ALL": "C.UTF-8", "TZ": "UTC"})

    def start(self, timeout: float = 60) -> PostgresServer:
        assert self.pid is None, "already running"
        self.root.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            shutil.chown(self.root, SYSTEM_USER, SYSTEM_USER)
            self.root.chmod(0o700)
        if not (self.data / "PG_VERSION").exists():
            out = self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", USER, "-E", "UTF8", "--no-sync")
            if out.returncode != 0:
                raise RuntimeError(f"initdb failed ({out.returncode}):\n{out.stdout}{out.stderr}")
        fixed_port = self.port is not None
        for attempt in range(5):  # a free port may be taken by someone else between our check and the server's bind
            self.port = self.port if fixed_port else _free_port()
            options = " ".join([f"-p {self.port}", f"-k {self.root}", "-c listen_addresses=127.0.0.1",
                                *(f"-c {s}" for s in SETTINGS)])
            out = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_file), "-o", options,
                            "-w", "-t", str(int(timeout)), "start", timeout=timeout + 30)
            if out.returncode == 0:
                break
            self._kill_leftover()
            if fixed_port or attempt == 4 or "already in use" not in self.log_text():
                raise RuntimeError(f"pg_ctl start failed ({out.returncode}):\n{out.stdout}{out.stderr}\n"
                                   f"server log:\n{self.log_text()[-3000:]}")
        self.pid = self._postmaster_pid()
        if self.pid is None:
            raise RuntimeError(f"pg_ctl started the server but {self.data}/postmaster.pid names no process")
        return self

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.data / "postmaster.pid").read_text().splitlines()[0]
        except (OSError, IndexError):
            return None
        return int(first) if first.strip().isdigit() else None

    def _kill_leftover(self) -> None:
        pid = self._postmaster_pid()
        if pid is not None and _alive(pid):
            self._kill(pid)

    @staticmethod
    def _kill(pid: int) -> None:
        """SIGKILL the postmaster and its backends: pg_ctl starts it in a session of its own (setsid), so its process
        group is the server's; then wait until the postmaster is gone."""
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.pid is not None and _alive(self.pid)

    def stop(self, remove: bool = True) -> None:
        """`pg_ctl stop -m fast` (clients disconnected, clean shutdown); SIGKILL by the postmaster's pid if that fails
        or leaves it running. Then the folder is deleted (if it was ours and `remove`)."""
        if self.pid is not None:
            pid, self.pid = self.pid, None
            try:
                out = self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop", timeout=60)
                failed = out.returncode != 0
            except (subprocess.SubprocessError, OSError):
                failed = True
            if failed or _alive(pid):
                self._kill(pid)
        if remove and self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start() if self.pid is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    # --- databases ---
    def create_database(self, name: str | None = None) -> str:
        """A new empty database (a unique name by default; names are lower-case identifiers); its SQLAlchemy URL."""
        import psycopg
        from psycopg import sql

        name = name or f"test_{uuid.uuid4().hex[:12]}"
        if not _NAME.fullmatch(name):
            raise ValueError(f"database name {name!r}: use lower-case letters, digits and _, at most 63")
        with psycopg.connect(self.conninfo(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.database_url(name)


# --- pytest fixtures -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres_server():
    try:
        server = PostgresServer()
    except PostgresNotInstalled as e:
        pytest.fail(str(e), pytrace=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_database(postgres_server, request) -> str:
    """A fresh database for this test, named after it; its SQLAlchemy URL."""
    stem = re.sub(r"[^a-z0-9_]+", "_", request.node.name.lower())[:40].strip("_")
    return postgres_server.create_database(f"{stem}_{uuid.uuid4().hex[:8]}")
