"""`python -m job serve` as a real process, and a small HTTP client for it (standard library only: urllib and
http.client), for tests/integration/test_serve.py, tests/integration/test_serve_page.py and bench/serving.py.

    server = ServeProcess.start(["--run-dir", str(run)], log_path=tmp / "serve.log")
    try:
        server.wait_ready(timeout=300)
        reply = post_files(server.url, [("3.png", png_bytes(image))])     # Reply(status, headers, body, json)
    finally:
        server.stop()
"""
from __future__ import annotations

import contextlib
import http.client
import io
import json
import struct
import subprocess
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.support.trainer_runs import (  # also for bench/
    ROOT,
    free_loopback_ports,
    job_command,
    stop_process,
    trainer_env,
)

TOKEN_ENV = "JOB_SERVE_TOKEN"
HOLD_ENV = "JOB_SERVE_TEST_HOLD_LOAD"  # job/serve/__init__.py: the model load waits until this file exists


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def __post_init__(self):
        self.headers = {name.lower(): value for name, value in self.headers.items()}

    @property
    def json(self):
        return json.loads(self.body)

    @property
    def error(self) -> str:
        return self.json["error"]


class ServeProcess:
    def __init__(self, process: subprocess.Popen, port: int, log_path: Path):
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path

    @classmethod
    def start(cls, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> ServeProcess:
        (port,) = free_loopback_ports(1)
        log = open(log_path, "w")
        process = subprocess.Popen(job_command("serve", *args, "--port", str(port)), cwd=ROOT,
                                   env=trainer_env(**(env or {})), stdout=log, stderr=subprocess.STDOUT, text=True)
        log.close()  # the child has its own copy
        return cls(process, port, log_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait(self, path: str, status: int, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited with {self.process.returncode} before {what}:\n"
                                     f"{self.log()[-3000:]}")
            try:
                if get(self.url + path, timeout=5).status == status:
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}:\n{self.log()[-3000:]}")

    def wait_listening(self, timeout: float = 60) -> None:
        self._wait("/healthz", 200, timeout, "/healthz to answer")

    def wait_ready(self, timeout: float = 300) -> None:
        self._wait("/readyz", 200, timeout, "/readyz to say ready")

    def stop(self) -> None:
        stop_process(self.process, timeout=15)

    @classmethod
    @contextlib.contextmanager
    def running(cls, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> Iterator[ServeProcess]:
        """A server started, ready, yielded, stopped; it must have exited cleanly, with no traceback in its log."""
        server = cls.start(args, log_path, env)
        try:
            server.wait_ready(timeout=300)
            yield server
        finally:
            server.stop()
        assert server.process.returncode == 0 and "Traceback" not in server.log(), server.log()[-3000:]


# ------------------------------------------------------------------------------------------------- requests
def request(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
            timeout: float = 120) -> Reply:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            return Reply(answer.status, dict(answer.headers), answer.read())
    except urllib.error.HTTPError as e:
        with e:
            return Reply(e.code, dict(e.headers), e.read())


def get(url: str, token: str | None = None, timeout: float = 60) -> Reply:
    return request("GET", url, headers=bearer(token), timeout=timeout)


def bearer(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


def multipart(files: list[tuple[str, bytes]], field: str = "files") -> tuple[bytes, str]:
    """A multipart/form-data body with one file part per (filename, bytes); returns (body, its Content-Type)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post_files(base_url: str, files: list[tuple[str, bytes]], query: str = "", token: str | None = None,
               timeout: float = 120) -> Reply:
    body, content_type = multipart(files)
    return request("POST", f"{base_url}/v1/predict{query}", body, {"Content-Type": content_type, **bearer(token)},
                   timeout=timeout)


def post_streamed(port: int, body: bytes, content_type: str, chunked: bool, token: str | None = None,
                  chunk_size: int = 65536) -> Reply:
    """POST a body as a client that keeps sending while the server has already answered (and closed): with a
    Content-Length, or chunked (Transfer-Encoding: chunked, no Content-Length). A reset while sending is expected
    when the server refuses early; the answer is read after it."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": content_type, **bearer(token)}
    try:
        try:
            if chunked:
                pieces = (body[i:i + chunk_size] for i in range(0, len(body), chunk_size))
                connection.request("POST", "/v1/predict", body=pieces, headers=headers, encode_chunked=True)
            else:
                connection.request("POST", "/v1/predict", body=body, headers=headers)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the whole body was sent
        answer = connection.getresponse()
        return Reply(answer.status, dict(answer.getheaders()), answer.read())
    finally:
        connection.close()


# --------------------------------------------------------------------------------------------------- images
def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as the digits dataset makes them (job/data/splits.py _digits): uint8 (n, 32, 32, 3)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8).repeat(4, axis=1).repeat(4, axis=2)
    return np.repeat(images[..., None], 3, axis=-1), digits.target.astype(int)


def png_bomb(side: int = 20_000) -> bytes:
    """A PNG whose header claims side x side pixels (400 million at the default) in about 50 KB: 1-bit grayscale, all
    zeros, written chunk by chunk (Pillow would hold the whole image in memory to save it). Decoded as RGB it would
    take 1.2 GB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (side + 7) // 8)  # filter byte 0, then the row's bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
