"""Finding, downloading and verifying the official CIFAR archives, and reading their pickled members.

Every failure is a one-line DataError that names the file and the fix. A user's file is never deleted or
overwritten: downloads go to a temporary name and are renamed into place only after their MD5 checks out.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job.errors import DataError, first_line

DOWNLOAD_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class ArchiveSpec:
    filename: str
    url: str
    md5: str  # published on https://www.cs.toronto.edu/~kriz/cifar.html
    folder: str  # the top-level directory inside the tar


ARCHIVES = {
    "cifar10": ArchiveSpec(
        filename="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
    ),
    "cifar100": ArchiveSpec(
        filename="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
    ),
}


def fetch_archive(spec: ArchiveSpec, data_dir: str, download: bool, md5: str = "") -> Path:
    """A local path of the verified archive: from `data_dir` (a folder or gs:// prefix), downloaded if allowed."""
    expected = md5 or spec.md5
    if data_dir.startswith("gs://"):
        return _fetch_from_bucket(spec, data_dir, download, expected)
    path = Path(data_dir) / spec.filename
    if not path.exists():
        if not download:
            raise DataError(
                f"{path} not found and data.download=false; put the official {spec.filename} ({spec.url}) there "
                f"or set data.download=true"
            )
        _download(spec.url, path, expected)  # verifies the MD5 while streaming
        return path
    verify_md5(path, expected, spec)
    return path


def verify_md5(path: Path, expected: str, spec: ArchiveSpec, shown_name: str | None = None) -> None:
    try:
        actual = file_md5(path)
    except OSError as e:
        raise DataError(f"cannot read {shown_name or path} ({e.strerror or e}); make it a readable copy of "
                        f"{spec.url}") from None
    if actual != expected.lower():
        raise DataError(
            f"{shown_name or path} has MD5 {actual}, expected {expected}: it is incomplete or not the official "
            f"{spec.filename}; replace it with a fresh copy of {spec.url} (or set data.md5 for a modified archive)"
        )


def file_md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _fetch_from_bucket(spec: ArchiveSpec, data_dir: str, download: bool, expected: str) -> Path:
    """gs:// archives are copied once into a local cache (keyed by bucket path) and verified there."""
    from job.storage import open_storage  # lazy: the storage module is optional for local data

    url = f"{data_dir.rstrip('/')}/{spec.filename}"
    cache = _cache_dir(data_dir) / spec.filename
    if cache.exists() and file_md5(cache) == expected.lower():
        return cache
    storage = open_storage(data_dir)
    if storage.exists(spec.filename):
        tmp = _temp_name(cache)
        try:
            storage.get_file(spec.filename, str(tmp))
            verify_md5(tmp, expected, spec, shown_name=url)
            os.replace(tmp, cache)
        finally:
            tmp.unlink(missing_ok=True)
        return cache
    if not download:
        raise DataError(
            f"{url} not found and data.download=false; upload the official {spec.filename} ({spec.url}) there "
            f"or set data.download=true"
        )
    _download(spec.url, cache, expected)
    return cache


def _cache_dir(data_dir: str) -> Path:
    relative = data_dir[len("gs://"):].strip("/").replace("/", "__")
    path = Path(tempfile.gettempdir()) / "job-data-cache" / relative
    path.mkdir(parents=True, exist_ok=True)
    return path


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.part")


def _download(url: str, path: Path, expected_md5: str) -> None:
    """Stream `url` to a temporary file next to `path`, check its MD5, then rename it into place."""
    from tqdm import tqdm

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {path.parent} for the download ({e.strerror}); set data.dir to a writable "
                        f"folder") from None
    tmp = _temp_name(path)
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {path.name}", disable=None) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != expected_md5.lower():
            raise DataError(
                f"download of {url} has MD5 {digest.hexdigest()}, expected {expected_md5}; retry, or put a good copy "
                f"at {path} by hand"
            )
        os.replace(tmp, path)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
        raise DataError(
            f"could not download {url} to {path} ({first_line(reason)}); put the archive there by hand, or point "
            f"data.dir at a folder that has it"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def read_members(path: Path, spec: ArchiveSpec, names: Iterable[str]) -> dict[str, dict]:
    """Unpickle the wanted members of the tar.gz in one sequential pass (gzip cannot seek cheaply)."""
    wanted = {f"{spec.folder}/{name}": name for name in names}
    found: dict[str, dict] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                name = wanted.get(member.name)
                if name is None or not member.isfile():
                    continue
                found[name] = _unpickle(tar.extractfile(member).read(), path, member.name, spec)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(
            f"{path} is not a readable tar.gz archive ({first_line(e)}); replace it with a fresh copy of {spec.url}"
        ) from None
    missing = [member for member, name in wanted.items() if name not in found]
    if missing:
        raise DataError(
            f"{path} has no member {missing[0]}: it is not the official python-version {spec.filename}; "
            f"download {spec.url}"
        )
    return found


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """The CIFAR pickles hold dicts, lists, bytes and numpy arrays; refuse anything else (pickle can run code)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # pickle protocol 5
        ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(raw: bytes, path: Path, member: str, spec: ArchiveSpec) -> dict:
    try:
        obj = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - a corrupt pickle raises almost anything (UnpicklingError, EOFError, ...)
        raise DataError(
            f"{path}: member {member} is not a CIFAR pickle ({type(e).__name__}: {first_line(e)}); replace the "
            f"archive with a fresh copy of {spec.url}"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(
            f"{path}: member {member} holds a {type(obj).__name__}, not the CIFAR dict; replace the archive with a "
            f"fresh copy of {spec.url}"
        )
    return obj


