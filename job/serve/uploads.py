"""A multipart/form-data request body read into memory under limits: nothing is ever written to disk.

Starlette's `request.form()` spools every file over 1 MB to a temporary file, and reads the whole body before any
limit could apply. Here the body is read chunk by chunk, counted against the byte limit whether or not the client sent
a Content-Length (a chunked upload is cut off at the limit too), and fed to python-multipart's streaming parser, which
hands back each part's bytes; the file count is checked as each part starts. What a request can hold in memory is
therefore bounded by the byte limit, whatever the client claims.

    uploads = await read_uploads(request, limits)     # [Upload(filename, content_type, data), ...]; or RequestError
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import anyio
from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from job.images import DEFAULT_MAX_PIXELS

_FILENAME_LIMIT = 200  # characters of a client's file name kept (in answers and error messages)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Limits:
    """What one request may hold. The defaults suit a model with a 32x32 input served to the public."""
    max_request_bytes: int = 32 * 1024 * 1024
    max_files: int = 64
    max_pixels: int = DEFAULT_MAX_PIXELS  # per image, checked from its header before it is decoded
    upload_seconds: float = 60.0  # the whole body must arrive within this time (a slow client holds a connection)

    def as_dict(self) -> dict:
        return {"max_request_bytes": self.max_request_bytes, "max_files": self.max_files,
                "max_pixels": self.max_pixels, "upload_seconds": self.upload_seconds}


class RequestError(Exception):
    """A request the server refuses: the HTTP status and one line for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class Upload:
    filename: str
    content_type: str
    data: bytes


@dataclass
class _Part:
    headers: dict[str, bytes] = field(default_factory=dict)
    filename: str = ""
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0


def clean_filename(raw: str) -> str:
    """The last path component of a client's file name (some browsers send C:\\...\\x.png), printable, bounded."""
    name = _UNSAFE.sub("?", raw.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    if len(name) > _FILENAME_LIMIT:
        name = name[:_FILENAME_LIMIT - 1] + "…"
    return name or "(unnamed file)"


def megabytes(n: int) -> str:
    return f"{n / (1024 * 1024):.3g} MB"


class MultipartReader:
    """Feed it the body's chunks in order, then `finish()` for the files. Raises RequestError (400/413)."""

    def __init__(self, content_type: str | None, limits: Limits):
        media, options = parse_options_header(content_type or "")
        if media != b"multipart/form-data":
            shown = (content_type or "none").split(";")[0].strip()[:80]
            raise RequestError(415, f"the request body must be multipart/form-data (got {shown}); send the images "
                                    f"as files, e.g. curl -F files=@photo.png")
        boundary = options.get(b"boundary")
        if not boundary:
            raise RequestError(400, "the multipart/form-data Content-Type has no boundary")
        self.limits = limits
        self.files: list[Upload] = []
        self._part: _Part | None = None
        self._header_field: list[bytes] = []
        self._header_value: list[bytes] = []
        self._ended = False
        self._problem: RequestError | None = None
        callbacks = {
            "on_part_begin": self._on_part_begin,
            "on_header_field": lambda data, start, end: self._header_field.append(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.append(data[start:end]),
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }
        try:
            self._parser = MultipartParser(boundary, callbacks)
        except (ValueError, MultipartParseError) as e:  # python-multipart's FormParserError is a ValueError
            raise RequestError(400, f"bad multipart boundary ({e})") from None

    # ----------------------------------------------------------------------------------------------- callbacks
    def _on_part_begin(self) -> None:
        self._part = _Part()

    def _on_header_end(self) -> None:
        name = b"".join(self._header_field).decode("latin-1").strip().lower()
        self._part.headers[name] = b"".join(self._header_value).strip()
        self._header_field, self._header_value = [], []

    def _on_headers_finished(self) -> None:
        disposition = self._part.headers.get("content-disposition", b"")
        _, options = parse_options_header(disposition)
        declared_type = self._part.headers.get("content-type", b"").split(b";")[0].strip().lower()
        # a part without a file name is still a file when it says it is one (some clients name only the field);
        # a plain text field (`-F files=photo.png`, the @ forgotten) is not
        if b"filename" not in options and declared_type in (b"", b"text/plain"):
            name = options.get(b"name", b"").decode("utf-8", "replace")[:80]
            self._fail(RequestError(400, f"form field {name!r} is not a file; send each image as a file, "
                                         f"e.g. curl -F files=@photo.png"))
            return
        if len(self.files) + 1 > self.limits.max_files:
            self._fail(RequestError(413, f"more than {self.limits.max_files} files in one request; send at most "
                                         f"{self.limits.max_files} per request"))
            return
        raw_name = options.get(b"filename") or options.get(b"name", b"")
        self._part.filename = clean_filename(raw_name.decode("utf-8", "replace"))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._problem is None:
            self._part.chunks.append(bytes(data[start:end]))
            self._part.size += end - start

    def _on_part_end(self) -> None:
        part, self._part = self._part, None
        if self._problem is None and part is not None:
            content_type = part.headers.get("content-type", b"").decode("latin-1")
            self.files.append(Upload(part.filename, content_type, b"".join(part.chunks)))

    def _on_end(self) -> None:
        self._ended = True

    def _fail(self, problem: RequestError) -> None:
        if self._problem is None:
            self._problem = problem

    # --------------------------------------------------------------------------------------------------- feeding
    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except MultipartParseError as e:
            raise RequestError(400, f"the multipart body is malformed ({e})") from None
        if self._problem is not None:
            raise self._problem

    def finish(self) -> list[Upload]:
        if not self._ended:
            raise RequestError(400, "the multipart body ended before its closing boundary (a cut-off upload?)")
        if not self.files:
            raise RequestError(400, "the request has no files; send one or more images, e.g. curl -F "
                                    "files=@photo.png")
        return self.files


async def read_uploads(request, limits: Limits) -> list[Upload]:
    """The files of a Starlette request's multipart body, read under `limits` (RequestError otherwise)."""
    _check_declared_length(request, limits)
    reader = MultipartReader(request.headers.get("content-type"), limits)
    await _read_chunks(request, limits, reader.feed)
    return reader.finish()


async def read_body(request, limits: Limits) -> bytes:
    """A request's whole body (e.g. a v2 inference request), read under the byte and time limits."""
    _check_declared_length(request, limits)
    chunks: list[bytes] = []
    await _read_chunks(request, limits, chunks.append)
    return b"".join(chunks)


def _too_large(limits: Limits) -> RequestError:
    return RequestError(413, f"the request is larger than the limit of {megabytes(limits.max_request_bytes)}; "
                             f"send fewer or smaller images per request", headers={"Connection": "close"})


def _check_declared_length(request, limits: Limits) -> None:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise RequestError(400, f"Content-Length {declared[:40]!r} is not a number")
        if int(declared) > limits.max_request_bytes:
            raise _too_large(limits)  # before reading a byte of it


async def _read_chunks(request, limits: Limits, feed) -> None:
    """Each non-empty chunk of the body to `feed`, counted against the byte limit, all within the upload time."""
    received = 0
    try:
        with anyio.fail_after(limits.upload_seconds):
            async for chunk in request.stream():
                received += len(chunk)
                if received > limits.max_request_bytes:  # chunked uploads, or a Content-Length that lied
                    raise _too_large(limits)
                if chunk:
                    feed(chunk)
    except TimeoutError:
        raise RequestError(408, f"the upload took longer than {limits.upload_seconds:g} s",
                           headers={"Connection": "close"}) from None
    except ClientDisconnect:  # nobody reads the answer; this keeps the log to the access line
        raise RequestError(400, "the client disconnected during the upload") from None
