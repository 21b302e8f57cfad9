"""Local paths and gs:// URLs behind one small interface. Paths given to a Storage are relative to its URL.

GCS access uses the google-cloud-storage client: anonymous credentials against $STORAGE_EMULATOR_HOST when that is
set (tests, fake-gcs-server), Application Default Credentials otherwise. Transient errors (connection reset/refused,
timeouts, 429, 5xx) are retried with exponential backoff and full jitter until `retry_seconds` run out (default: 120 s,
or $JOB_STORAGE_RETRY_SECONDS); then the call raises.
"""
from __future__ import annotations

import abc
import base64
import getpass
import json
import os
import re
import shutil
import struct
import tempfile
import threading
import uuid
from pathlib import Path

import google_crc32c

from job.errors import StorageUnavailableError, UserError, first_line

DEFAULT_RETRY_SECONDS = 120.0
RETRY_SECONDS_ENV = "JOB_STORAGE_RETRY_SECONDS"  # overrides the default retry budget of every gs:// call
_TEMP_MARK = ".tmp-"  # temp files of atomic writes: ".<name>.tmp-<random>", never listed


class AlreadyExistsError(FileExistsError):
    """A create-if-absent write found the object already there."""


class ChecksumMismatchError(OSError):
    """The stored copy's CRC32C differs from the source's."""


def crc32c_of_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> int:
    checksum = google_crc32c.Checksum()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            checksum.update(chunk)
    return int.from_bytes(checksum.digest(), "big")


def default_retry_seconds() -> float:
    """How long one storage call retries transient errors: $JOB_STORAGE_RETRY_SECONDS, else 120 s."""
    raw = os.environ.get(RETRY_SECONDS_ENV, "").strip()
    if not raw:
        return DEFAULT_RETRY_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UserError(f"{RETRY_SECONDS_ENV}={raw!r} is not a positive number of seconds; unset it or give e.g. 120")
    return value


def open_storage(url: str, retry_seconds: float | None = None) -> Storage:
    """A Storage for a local path or gs://bucket/prefix."""
    if url.startswith("gs://"):
        return GCSStorage(url, retry_seconds=default_retry_seconds() if retry_seconds is None else retry_seconds)
    if "://" in url:
        raise UserError(f"unsupported storage URL {url!r}: use a local path or gs://BUCKET/PREFIX")
    return LocalStorage(url)


def _clean_relpath(relpath: str) -> str:
    relpath = relpath.strip("/")
    if not relpath or any(part in ("", ".", "..") for part in relpath.split("/")):
        raise ValueError(f"bad relative storage path {relpath!r}")
    return relpath


class Storage(abc.ABC):
    url: str
    is_remote: bool

    @abc.abstractmethod
    def exists(self, relpath: str) -> bool: ...

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Relative paths of every object whose path starts with `prefix` (a plain string prefix), sorted."""

    @abc.abstractmethod
    def list_versions(self, prefix: str = "") -> list[tuple[str, int, str]]:
        """(relative path, size in bytes, version) of every object under `prefix`, sorted: the version changes when
        the object is rewritten (local: the modification time in ns; gs://: the stored CRC32C)."""

    @abc.abstractmethod
    def read_bytes(self, relpath: str) -> bytes:
        """Raises FileNotFoundError if absent."""

    @abc.abstractmethod
    def write_bytes(self, relpath: str, data: bytes, if_absent: bool = False) -> None:
        """Atomic whole-object write. With if_absent, raises AlreadyExistsError if the object exists."""

    @abc.abstractmethod
    def put_file(self, local_path: str | os.PathLike, relpath: str) -> None:
        """Store a local file; the stored copy's CRC32C is checked against the file's."""

    @abc.abstractmethod
    def get_file(self, relpath: str, local_path: str | os.PathLike) -> None:
        """Copy to a local file atomically (temp + rename). Raises FileNotFoundError if absent."""

    @abc.abstractmethod
    def delete(self, relpath: str) -> None:
        """Remove an object; absent is fine."""

    def read_json(self, relpath: str) -> dict | None:
        """The JSON object stored at `relpath` (a run's records: status, history, metrics); None if absent."""
        try:
            value = json.loads(self.read_bytes(relpath))
        except FileNotFoundError:
            return None
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise UserError(f"{self.url}/{relpath} is not a JSON object as this trainer writes it; is something "
                            "else writing there?")
        return value

    @abc.abstractmethod
    def preflight(self) -> None:
        """Write, read and delete a small object; a problem the user must fix raises a one-line UserError."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage(Storage):
    is_remote = False

    def __init__(self, path: str | os.PathLike):
        self.url = str(path)
        self.root = Path(path)

    def _path(self, relpath: str) -> Path:
        return self.root / _clean_relpath(relpath)

    def _temp_for(self, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        return dest.with_name(f".{dest.name}{_TEMP_MARK}{uuid.uuid4().hex[:8]}")

    def exists(self, relpath: str) -> bool:
        return self._path(relpath).is_file()

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        # Only walk the folder the prefix points into.
        start = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        found = []
        for dirpath, _, filenames in os.walk(start):
            for name in filenames:
                if name.startswith(".") and _TEMP_MARK in name:
                    continue
                rel = Path(dirpath, name).relative_to(self.root).as_posix()
                if rel.startswith(prefix):
                    found.append(rel)
        return sorted(found)

    def list_versions(self, prefix: str = "") -> list[tuple[str, int, str]]:
        found = []
        for rel in self.list(prefix):
            stat = (self.root / rel).stat()
            found.append((rel, stat.st_size, str(stat.st_mtime_ns)))
        return found

    def read_bytes(self, relpath: str) -> bytes:
        return self._path(relpath).read_bytes()

    def write_bytes(self, relpath: str, data: bytes, if_absent: bool = False) -> None:
        dest = self._path(relpath)
        temp = self._temp_for(dest)
        try:
            with open(temp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if if_absent:
                try:
                    os.link(temp, dest)  # atomic create-if-absent of a complete file
                except FileExistsError:
                    raise AlreadyExistsError(f"{self.url}/{relpath} exists already") from None
            else:
                os.replace(temp, dest)
            _fsync_dir(dest.parent)
        finally:
            temp.unlink(missing_ok=True)

    def put_file(self, local_path: str | os.PathLike, relpath: str) -> None:
        dest = self._path(relpath)
        if Path(local_path).resolve() == dest.resolve():
            return
        temp = self._temp_for(dest)
        try:
            shutil.copyfile(local_path, temp)
            if crc32c_of_file(temp) != crc32c_of_file(local_path):
                raise ChecksumMismatchError(f"copy of {local_path} to {dest} differs (file changed while copying?)")
            os.replace(temp, dest)
        finally:
            temp.unlink(missing_ok=True)

    def get_file(self, relpath: str, local_path: str | os.PathLike) -> None:
        source, dest = self._path(relpath), Path(local_path)
        if source.resolve() == dest.resolve():
            if not source.is_file():
                raise FileNotFoundError(str(source))
            return
        temp = self._temp_for(dest)
        try:
            shutil.copyfile(source, temp)
            os.replace(temp, dest)
        finally:
            temp.unlink(missing_ok=True)

    def delete(self, relpath: str) -> None:
        path = self._path(relpath)
        path.unlink(missing_ok=True)
        if path.parent != self.root:  # its folder goes with its last file, as in a bucket (e.g. TF's <prefix>_temp/)
            try:
                path.parent.rmdir()
            except OSError:
                pass  # not empty, or gone already

    def check_writable(self) -> None:
        """Like preflight, but without creating anything: the run directory, or the nearest folder above it that
        exists, must be a folder this user may write in."""
        existing = next(p for p in (self.root, *self.root.absolute().parents) if p.exists())
        problem = ("" if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK) else
                   "Not a directory" if not existing.is_dir() else "Permission denied")
        if problem:
            raise UserError(f"cannot write to run dir {self.url} as user {getpass.getuser()}: {problem} "
                            f"({existing}); choose a writable run.dir")

    def preflight(self) -> None:
        name = f".preflight-{uuid.uuid4().hex[:8]}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.write_bytes(name, b"ok")
            if self.read_bytes(name) != b"ok":
                raise OSError("read back different bytes")
            self.delete(name)
        except OSError as e:
            raise UserError(f"cannot write to run dir {self.url} as user {getpass.getuser()}: "
                            f"{e.strerror or e}; choose a writable run.dir") from None


# ---------------------------------------------------------------------------------------------------------------- GCS

def _crc32c_b64(value: int) -> str:
    """CRC32C as GCS reports it: base64 of the big-endian 4 bytes."""
    return base64.b64encode(struct.pack(">I", value)).decode()


def _error_message(e) -> str:
    """The server's own message of an HTTP error, on one line."""
    message = getattr(e, "message", "") or str(e)
    return " ".join(message.split())[:300]


class GCSStorage(Storage):
    is_remote = True
    _TIMEOUT = (10.0, 120.0)  # (connect, read) seconds per HTTP request

    def __init__(self, url: str, retry_seconds: float = DEFAULT_RETRY_SECONDS):
        from google.cloud.storage.retry import DEFAULT_RETRY

        match = re.fullmatch(r"gs://([a-z0-9][a-z0-9._-]{1,220}[a-z0-9])(/.*)?", url.rstrip("/"))
        if not match:
            raise UserError(f"bad GCS URL {url!r}: expected gs://BUCKET or gs://BUCKET/PREFIX")
        self.url = url.rstrip("/")
        self.bucket_name = match.group(1)
        self.base = (match.group(2) or "").strip("/")
        self.retry_seconds = retry_seconds
        # The storage library's predicate (429, 5xx, connection errors, timeouts) and its full-jitter backoff.
        self._retry = DEFAULT_RETRY.with_delay(initial=0.25, maximum=8.0, multiplier=2.0).with_timeout(retry_seconds)
        self._client_args, self.identity = _client_args()
        self._per_thread = threading.local()

    @property
    def client(self):
        """One client per thread: the upload thread and the training thread do not share HTTP sessions."""
        from google.cloud import storage
        client = getattr(self._per_thread, "client", None)
        if client is None:
            client = self._per_thread.client = storage.Client(**self._client_args)
        return client

    @property
    def bucket(self):
        return self.client.bucket(self.bucket_name)

    def _name(self, relpath: str) -> str:
        relpath = _clean_relpath(relpath)
        return f"{self.base}/{relpath}" if self.base else relpath

    def _blob(self, relpath: str):
        return self.bucket.blob(self._name(relpath))

    def exists(self, relpath: str) -> bool:
        return self._blob(relpath).exists(retry=self._retry, timeout=self._TIMEOUT)

    def list(self, prefix: str = "") -> list[str]:
        full = f"{self.base}/{prefix}" if self.base else prefix
        strip = len(self.base) + 1 if self.base else 0
        blobs = self.client.list_blobs(self.bucket_name, prefix=full, retry=self._retry, timeout=self._TIMEOUT)
        return sorted(b.name[strip:] for b in blobs if not b.name.endswith("/"))

    def list_versions(self, prefix: str = "") -> list[tuple[str, int, str]]:
        full = f"{self.base}/{prefix}" if self.base else prefix
        strip = len(self.base) + 1 if self.base else 0
        blobs = self.client.list_blobs(self.bucket_name, prefix=full, retry=self._retry, timeout=self._TIMEOUT)
        return sorted((b.name[strip:], int(b.size or 0), b.crc32c or str(b.generation))
                      for b in blobs if not b.name.endswith("/"))

    def read_bytes(self, relpath: str) -> bytes:
        from google.api_core.exceptions import NotFound
        try:
            return self._blob(relpath).download_as_bytes(retry=self._retry, timeout=self._TIMEOUT,
                                                         checksum="crc32c")
        except NotFound:
            raise FileNotFoundError(f"{self.url}/{relpath}") from None

    def write_bytes(self, relpath: str, data: bytes, if_absent: bool = False) -> None:
        from google.api_core.exceptions import PreconditionFailed
        try:
            self._blob(relpath).upload_from_string(data, if_generation_match=0 if if_absent else None,
                                                   retry=self._retry, timeout=self._TIMEOUT, checksum="crc32c")
        except PreconditionFailed:
            # A retried request whose first attempt did land finds its own object: identical bytes mean success.
            # (Writers that need to tell themselves apart put something unique in `data`.)
            try:
                if self.read_bytes(relpath) == data:
                    return
            except FileNotFoundError:
                pass
            raise AlreadyExistsError(f"{self.url}/{relpath} exists already") from None

    def put_file(self, local_path: str | os.PathLike, relpath: str, attempts: int = 3) -> None:
        for _ in range(attempts):
            expected = crc32c_of_file(local_path)
            blob = self._blob(relpath)
            blob.upload_from_filename(str(local_path), retry=self._retry, timeout=self._TIMEOUT, checksum="crc32c")
            if blob.crc32c == _crc32c_b64(expected):
                return
        raise ChecksumMismatchError(f"{self.url}/{relpath}: stored CRC32C {blob.crc32c} != {_crc32c_b64(expected)} "
                                    f"of {local_path} after {attempts} uploads (file changing while uploaded?)")

    def get_file(self, relpath: str, local_path: str | os.PathLike) -> None:
        from google.api_core.exceptions import NotFound
        dest = Path(local_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{dest.name}{_TEMP_MARK}", dir=dest.parent)
        os.close(fd)
        try:
            self._blob(relpath).download_to_filename(temp, retry=self._retry, timeout=self._TIMEOUT,
                                                     checksum="crc32c")
            os.replace(temp, dest)
        except NotFound:
            raise FileNotFoundError(f"{self.url}/{relpath}") from None
        finally:
            Path(temp).unlink(missing_ok=True)

    def delete(self, relpath: str) -> None:
        from google.api_core.exceptions import NotFound
        try:
            self._blob(relpath).delete(retry=self._retry, timeout=self._TIMEOUT)
        except NotFound:
            pass

    def preflight(self) -> None:
        from google.api_core import exceptions as api

        name = f".preflight-{uuid.uuid4().hex[:8]}"
        step = "storage.objects.create"
        try:
            self.write_bytes(name, b"ok")
            step = "storage.objects.get"
            if self.read_bytes(name) != b"ok":
                raise UserError(f"storage at {self.url} returned different bytes than were written; "
                                f"check STORAGE_EMULATOR_HOST or proxies")
            step = "storage.objects.delete"
            self.delete(name)
        except api.NotFound:
            raise UserError(f"cannot use {self.url}: bucket {self.bucket_name!r} does not exist; create it "
                            f"(gcloud storage buckets create gs://{self.bucket_name}) or fix run.dir") from None
        except (api.Forbidden, api.Unauthorized) as e:
            message = str(e)
            permission = (re.findall(r"storage\.\w+\.\w+", message) or [step])[0]
            who = re.search(r"([\w.+-]+@[\w.-]+) does not have", message)
            identity = who.group(1) if who else self.identity
            raise UserError(f"cannot use {self.url}: {identity} lacks permission {permission} on bucket "
                            f"{self.bucket_name!r}; grant roles/storage.objectUser on it to that identity "
                            f"(HTTP {e.code})") from None
        except api.BadRequest as e:  # e.g. an object name GCS does not accept (longer than 1024 bytes)
            raise UserError(f"cannot use {self.url}: the storage refused {step} of a test object under it "
                            f"(HTTP 400: {_error_message(e)}); fix run.dir") from None
        except FileNotFoundError:
            raise UserError(f"cannot use {self.url}: an object written there could not be read back") from None
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - transient errors that outlasted the retry budget
            raise StorageUnavailableError(f"cannot reach {self.url} within {self.retry_seconds:.0f} s of retries "
                            f"({type(e).__name__}: {first_line(e)}); check the network or "
                            f"STORAGE_EMULATOR_HOST") from None


def _client_args() -> tuple[dict, str]:
    """(storage.Client keyword arguments, identity description) for the emulator or for Application Default
    Credentials. Credentials are looked up once and shared by every thread's client."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        from google.auth.credentials import AnonymousCredentials
        if "://" not in emulator:
            emulator = f"http://{emulator}"
        return (dict(project="emulator", credentials=AnonymousCredentials(), client_options={"api_endpoint": emulator}),
                f"anonymous client of STORAGE_EMULATOR_HOST={emulator}")

    import google.auth
    from google.auth.exceptions import DefaultCredentialsError
    try:
        credentials, project = google.auth.default(
            scopes=["https://www.googleapis.com/auth/devstorage.read_write"])
    except DefaultCredentialsError as e:
        raise UserError(f"no usable Google Cloud credentials for gs:// storage ({first_line(e)}): run `gcloud auth "
                        f"application-default login`, set GOOGLE_APPLICATION_CREDENTIALS to a key file, or give the "
                        f"pod a Workload Identity") from None
    email = getattr(credentials, "service_account_email", None)
    if email == "default":  # metadata-server credentials before their first refresh
        email = "the node's default service account"
    identity = email or getattr(credentials, "account", None) or "the Application Default Credentials' identity"
    return dict(project=project, credentials=credentials), identity
