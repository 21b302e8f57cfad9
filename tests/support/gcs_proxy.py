"""A plain-HTTP proxy in front of fake-gcs-server that can hold chosen requests, so that a test kills or cuts off a
client at an exact moment of its conversation with the bucket (while a checkpoint's data file is being uploaded, before
its commit object is written, while an old checkpoint is pruned, while a resume lists the checkpoints) by construction,
instead of after a sleep it hopes is long enough.

    proxy = GcsProxy(gcs_server.endpoint)                       # listening on a 127.0.0.1 port of its own
    env = trainer_env(**proxy.env())                            # the client talks to the proxy, not to the server
    proxy.hold("upload", r"/checkpoints/ckpt-\\d+-\\w+\\.data-", skip=1)   # the 2nd such upload, and later ones
    held = proxy.wait_held(timeout=300)                         # the client has sent it and now waits for it
    ... kill the client ...
    proxy.close()                                               # forwards nothing more

A held request has been read whole but not forwarded: for the server it does not exist yet. `release()` forwards it.
`close()` drops whatever is held and anything that arrives later, and returns once the requests already forwarded
have been answered: after it, nothing of a killed client can still land in the bucket, so what the test reads next is
final. (Use one proxy per client process: a killed client's last bytes may still sit in the listen queue.)
With `after_forwarding=True` a hold lets the request reach the server and holds its response instead: the server's
state has changed, the client has not heard of it yet (the outage test stops the server in that window).

A request the server cannot be reached for is answered by closing the connection, as an unreachable server would.
Runs on daemon threads of the test process; needs only the standard library.
"""
from __future__ import annotations

import http.client
import http.server
import re
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-authorization", "proxy-authenticate", "expect", "content-length", "host"}
# object names (regexes) of a checkpoint's files in a run (job/checkpoint.py)
CHECKPOINT_DATA, COMMIT_OBJECT = r"/checkpoints/ckpt-\d+-[0-9a-f]{8}\.data-", r"/checkpoints/ckpt-\d+\.commit\.json$"
STATE_FILE = r"/checkpoints/checkpoint$"  # TF's state file
INCOMPLETE = object()  # a body whose client closed the connection before all of it arrived
_NAME_IN_METADATA = re.compile(rb'"name"\s*:\s*"((?:[^"\\]|\\.)*)"')


@dataclass(eq=False)
class Request:
    """What a client asked for. kind: "upload" (the POST that stores an object or opens a resumable upload),
    "upload-data" (a resumable upload's data), "download", "metadata", "list", "delete" or "other". name: the object
    name (the prefix for "list"; "" if none)."""
    method: str
    path: str
    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name or self.path}"


def classify(method: str, target: str, body: bytes | None) -> Request:
    url = urllib.parse.urlsplit(target)
    query = dict(urllib.parse.parse_qsl(url.query))
    path = url.path
    kind, name = "other", ""
    objects = re.fullmatch(r"(/upload|/download)?/storage/v1/b/[^/]+/o(?:/(.+))?", path)
    if objects:
        area, encoded = objects.groups()
        name = urllib.parse.unquote(encoded or "")
        if area == "/upload":
            kind = "upload" if method == "POST" else "upload-data"
            if not name:
                name = query.get("name", "")
            if not name and body:
                found = _NAME_IN_METADATA.search(body[:65536])
                name = found.group(1).decode("utf-8", "replace").replace("\\/", "/") if found else ""
        elif method == "DELETE":
            kind = "delete"
        elif method == "GET" and not name:
            kind, name = "list", query.get("prefix", "")
        elif method == "GET":
            kind = "download" if area == "/download" or query.get("alt") == "media" else "metadata"
    return Request(method=method, path=path, kind=kind, name=name)


@dataclass
class _Rule:
    kind: str
    name: re.Pattern
    skip: int
    after_forwarding: bool

    def matches(self, request: Request) -> bool:
        return request.kind == self.kind and bool(self.name.search(request.name))


class GcsProxy:
    def __init__(self, upstream: str):
        """`upstream`: the server's endpoint, http://127.0.0.1:PORT."""
        self.upstream = urllib.parse.urlsplit(upstream).netloc
        self._cv = threading.Condition()
        self._rule: _Rule | None = None
        self._held: list[Request] = []
        self._inflight = 0
        self._closed = False
        self.seen: list[Request] = []  # every request, in the order they arrived
        self._server = _Server(self)
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"gcs proxy {self.port}", daemon=True)
        self._thread.start()

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.endpoint}

    # ------------------------------------------------------------------------------------------------ control

    def hold(self, kind: str, name: str = "", skip: int = 0, after_forwarding: bool = False) -> None:
        """From now on hold every request of `kind` whose object name matches the regex `name` (re.search), once
        `skip` of them have gone through. Replaces an earlier rule (what it holds stays held until release())."""
        with self._cv:
            self._rule = _Rule(kind, re.compile(name), skip, after_forwarding)

    def hold_checkpoint_moment(self, moment: str, nth: int, resume_downloads: bool) -> None:
        """Hold a checkpoint's moment for a kill: `resume` (the download of the newest checkpoint, or the listing when
        there is nothing to download), or the `nth` checkpoint data `upload`, `commit` object upload, upload of TF's
        `state` file or `prune` delete. `delay` holds nothing (the test kills after a delay)."""
        if moment == "resume":
            self.hold(*(("download", CHECKPOINT_DATA) if resume_downloads else ("list", r"/checkpoints/ckpt-$")))
        elif moment == "upload":
            self.hold("upload", CHECKPOINT_DATA, skip=nth - 1)
        elif moment == "commit":
            self.hold("upload", COMMIT_OBJECT, skip=nth - 1)
        elif moment == "state":
            self.hold("upload", STATE_FILE, skip=nth - 1)
        elif moment == "prune":
            self.hold("delete", r"/checkpoints/ckpt-", skip=nth - 1)

    def wait_held(self, timeout: float, check=None) -> Request:
        """The first request held, once there is one. `check()` is called between waits (to raise if the client
        failed); AssertionError after `timeout` s, which only bounds a hang."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while not self._held:
                if check is not None:
                    self._cv.release()
                    try:
                        check()
                    finally:
                        self._cv.acquire()
                    if self._held:
                        break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no request was held within {timeout} s (rule {self._rule}; "
                                         f"last requests: {[str(r) for r in self.seen[-5:]]})")
                self._cv.wait(min(remaining, 0.2))
            return self._held[0]

    def release(self) -> None:
        """Forward what is held (or deliver its held response) and hold nothing more."""
        with self._cv:
            self._rule = None
            self._held.clear()
            self._cv.notify_all()

    def close(self, timeout: float = 60.0) -> None:
        """Drop what is held and every request from now on; stop listening; return once every request already
        forwarded has been answered by the server."""
        with self._cv:
            self._closed = True
            self._held.clear()
            self._cv.notify_all()
        self._server.shutdown()
        self._server.server_close()
        with self._cv:
            if not self._cv.wait_for(lambda: self._inflight == 0, timeout):
                raise AssertionError(f"{self._inflight} forwarded request(s) still unanswered after {timeout} s")

    # ------------------------------------------------------------------------------------------------ the requests

    def _admit(self, request: Request) -> tuple[bool, bool]:
        """(forward it, hold its response). Blocks while the request itself is held."""
        with self._cv:
            self.seen.append(request)
            held = False
            rule = self._rule
            if rule is not None and not self._closed and rule.matches(request):
                if rule.skip > 0:
                    rule.skip -= 1
                else:
                    held = True
            if held and not rule.after_forwarding:
                self._held.append(request)
                self._cv.notify_all()
                self._cv.wait_for(lambda: request not in self._held or self._closed)
                held = False
            if self._closed:
                return False, False
            self._inflight += 1
            return True, held

    def _forwarded(self) -> None:
        with self._cv:
            self._inflight -= 1
            self._cv.notify_all()

    def _deliver(self, request: Request) -> bool:
        """For a request whose response is held: wait for release(); False if closed meanwhile (drop it)."""
        with self._cv:
            self._held.append(request)
            self._cv.notify_all()
            self._cv.wait_for(lambda: request not in self._held or self._closed)
            return not self._closed


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, proxy: GcsProxy):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.proxy = proxy

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # killed clients reset their connections: expected
            super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the storage client expects
    timeout = 600  # a connection idle this long is closed (bounds a leaked thread)
    server: _Server

    def do_GET(self):
        self._proxy()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _proxy(self) -> None:
        proxy = self.server.proxy
        try:
            body = read_request_body(self)
        except (OSError, ValueError):
            body = INCOMPLETE
        if body is INCOMPLETE:  # the client went away while sending it (killed): nothing of it is forwarded
            self.close_connection = True
            return
        request = classify(self.command, self.path, body)
        forward, hold_response = proxy._admit(request)
        if not forward:
            self.close_connection = True  # dropped: no answer at all, as from a client's point of view a cut line
            return
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers["Host"] = proxy.upstream
            if body is not None:
                headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(proxy.upstream, timeout=120)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            finally:
                conn.close()
        except OSError:
            self.close_connection = True  # the server is down: the client sees its connection closed
            return
        finally:
            proxy._forwarded()
        if hold_response and not proxy._deliver(request):
            self.close_connection = True
            return
        self.send_response(response.status, response.reason)
        for k, v in response.getheaders():
            if k.lower() == "location":  # resumable upload sessions: keep the client on the proxy
                v = v.replace(f"//{proxy.upstream}", f"//127.0.0.1:{proxy.port}", 1)
            if k.lower() not in _HOP_BY_HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", response.getheader("Content-Length", "0") if self.command == "HEAD"
                         else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


    def log_message(self, format, *args):  # quiet
        pass


def read_request_body(handler: http.server.BaseHTTPRequestHandler) -> bytes | None | object:
    """The request's body, de-chunked (TensorFlow's curl sends chunked uploads); None without one; INCOMPLETE if the
    client closed the connection before all of it arrived (a killed trainer)."""
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline().strip():  # trailers, up to the blank line
                    pass
                return b"".join(chunks)
            chunk = handler.rfile.read(size)
            if len(chunk) < size:
                return INCOMPLETE
            chunks.append(chunk)
            handler.rfile.readline()  # the CRLF after each chunk
    length = handler.headers.get("Content-Length")
    if length is None:
        return None
    body = handler.rfile.read(int(length))
    return body if len(body) == int(length) else INCOMPLETE
