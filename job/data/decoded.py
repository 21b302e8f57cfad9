"""A folder's images decoded once, kept as shards with a manifest, and shared by every process that needs them.

    <data.cache_dir>/<key>/shard-00000.npy ...   uint8 (n, S, S, 3) arrays of the decoded images, in listing order
    <data.cache_dir>/<key>/manifest.json         written last: the file list (path, size, version, SHA-256, pixels),
                                                 the shards' SHA-256, the files that could not be decoded
    <data.cache_dir>/<key>/decoding.lock         while one process decodes (create-if-absent, with a heartbeat)

The key is a hash of the folder's listing (every image's path, size and version: job/storage.py list_versions), the
image side and the decoding recipe, so a folder that changed gets a new key and is decoded again. One process decodes
while the others wait on its lock, as long as its heartbeat goes on (rewritten every LOCK_BEAT_SECONDS); a lock whose
heartbeat stopped for LOCK_STALE_SECONDS (its process died) is taken over. Decoding goes through job/images.py, the
same recipe as `predict` and `serve`. numpy and Pillow only: this runs before TensorFlow is imported.

A streamed set (data.stream, `_streamed`) is decoded a quarter shard at a time, each shard written to a staging folder
as it fills, and read back batch by batch from the shard files on local disk (job/data/shards.py): the cache's own
files, or for a gs:// cache a copy in $TMPDIR/job-decoded/<key>/. Both ways write the same shards.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from PIL import Image

from job import images
from job.data.shards import ShardedImages, file_sha256, images_per_shard
from job.errors import DataError, UserError, first_line
from job.storage import AlreadyExistsError, Storage, open_storage

if TYPE_CHECKING:
    from job.config import DataConfig
    from job.data.folder import FolderEntry, FolderListing

log = logging.getLogger("job")
T = TypeVar("T")

DECODE_RECIPE = "job/images.py v1"  # bump when job/images.py decodes differently: every cache is decoded again
MANIFEST = "manifest.json"
LOCK = "decoding.lock"
LOCK_BEAT_SECONDS = 5.0
LOCK_STALE_SECONDS = 60.0  # a heartbeat unchanged this long (by the waiter's own clock): its process is gone
POLL_SECONDS = 0.5
WAIT_LOG_SECONDS = 30.0
_NAMED_AT_MOST = 3


@dataclass
class DecodedSet:
    images: np.ndarray | ShardedImages  # uint8 (n, S, S, 3): the images that decoded, in listing order
    kept: np.ndarray  # int64 (n,): their indices in the listing
    sha256: list[str]  # (n,) of the files' bytes
    skipped: list[list[str]]  # [path, reason] of the files that could not be decoded


def listing_key(entries: list[FolderEntry], image_size: int) -> str:
    listing = [[e.path, e.size, e.version] for e in entries]
    blob = json.dumps({"recipe": DECODE_RECIPE, "image_size": image_size, "files": listing}, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def load_or_decode(listing: FolderListing, key: str, cache_url: str, cfg: DataConfig,
                   assemble: Callable[[DecodedSet], T]) -> T:
    """assemble(the folder's images), from the cache at `cache_url`/`key`, decoded into it first if nobody has.
    `assemble` makes the dataset of them and refuses what cannot be one: before anything is written."""
    streamed = _streamed(listing, cfg)
    store = open_storage(f"{cache_url.rstrip('/')}/{key}")
    while True:
        manifest = _read_manifest(store)
        if manifest is not None:
            log.info("using the decoded cache %s (%d images, %d skipped)", store.url,
                     len(manifest["files"]) - len(manifest["skipped"]), len(manifest["skipped"]))
            decoded = _open_streamed(store, manifest, key) if streamed else _load(store, manifest)
            return assemble(_checked(decoded, listing, manifest, cfg))
        lock = DecodingLock(store, len(listing.entries))
        if lock.acquire():
            try:
                if _read_manifest(store) is not None:  # finished by another process just before we locked
                    continue
                return _decode_into(store, listing, key, cfg, lock, assemble, streamed)
            finally:
                lock.release()
        lock.wait()


def local_shards_dir(store: Storage, key: str) -> Path:
    """Where a streamed run reads the shards from: the cache itself on local disk; for a gs:// cache, a copy in
    $TMPDIR/job-decoded/<key> (the decoded size on disk; kept for a restarted container to reuse)."""
    if not store.is_remote:
        return Path(store.url)
    return Path(tempfile.gettempdir()) / "job-decoded" / key


# --- decoding ------------------------------------------------------------------------------------------------------
def _decode_into(store: Storage, listing: FolderListing, key: str, cfg: DataConfig, lock: DecodingLock,
                 assemble: Callable[[DecodedSet], T], streamed: bool) -> T:
    source = open_storage(listing.url)
    entries = listing.entries
    log.info("decoding %d images from %s at %dx%d into %s", len(entries), listing.url, cfg.image_size,
             cfg.image_size, store.url)
    started, cpu_started = time.monotonic(), time.process_time()
    sha, pixels, reasons = [""] * len(entries), [0] * len(entries), [""] * len(entries)
    per_shard = images_per_shard(cfg.image_size)
    staging = local_shards_dir(store, key) / f"staging-{uuid.uuid4().hex[:12]}" if streamed else None
    shards = _ShardWriter(per_shard, staging)
    try:
        # In chunks of a quarter shard: a streamed run holds one shard and one chunk, never the whole set.
        chunk = max(1, per_shard // 4)
        with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as pool:
            for begin in range(0, len(entries), chunk):
                out = np.zeros((min(chunk, len(entries) - begin), cfg.image_size, cfg.image_size, 3), np.uint8)

                def one(i: int, begin=begin, out=out) -> None:
                    sha[i], pixels[i], reasons[i] = _decode_one(source, entries[i], cfg, out[i - begin])
                    lock.progress += 1

                list(pool.map(one, range(begin, begin + len(out))))
                shards.add(out[[not reasons[i] for i in range(begin, begin + len(out))]])
        images = shards.finish()
        seconds = time.monotonic() - started
        log.info("decoded %d images in %.1f s (%.0f images/s, %.1f CPU-s)", len(entries), seconds,
                 len(entries) / max(seconds, 1e-9), time.process_time() - cpu_started)
        manifest = {"format": 1, "key": key, "recipe": DECODE_RECIPE, "image_size": cfg.image_size,
                    "source": listing.url,
                    "files": [[e.path, e.size, e.version, sha[i], pixels[i], reasons[i]] for i, e in
                              enumerate(entries)]}
        manifest["skipped"] = [[e.path, reasons[i]] for i, e in enumerate(entries) if reasons[i]]
        _check_pixels(listing.url, manifest, cfg)  # refused before anything is written
        _check_unreadable(listing.url, manifest, cfg)
        kept = np.array([i for i in range(len(entries)) if not reasons[i]], np.int64)
        decoded = DecodedSet(images, kept, [sha[i] for i in kept], manifest["skipped"])
        result = assemble(decoded)
        if streamed:
            _publish_staged(store, shards, manifest)
        else:
            _write(store, decoded.images, manifest, per_shard)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    _warn_skipped(manifest)
    return result


class _ShardWriter:
    """The decoded rows, cut into shards of `per_shard`: kept in memory, or (streamed) copied into one shard's buffer
    and written to a .npy file in `staging` each time it fills, so no more than one shard is held."""

    def __init__(self, per_shard: int, staging: Path | None):
        self.per_shard, self.staging = per_shard, staging
        self.held: list[np.ndarray] = []  # in memory: every row
        self.buffer: np.ndarray | None = None  # streamed: the shard being filled, `fill` rows of it so far
        self.fill = 0
        self.written: list[dict] = []  # streamed: {"name", "count", "sha256"} of the files written
        if staging is not None:
            staging.mkdir(parents=True, exist_ok=True)

    def add(self, rows: np.ndarray) -> None:
        if self.staging is None:
            self.held.append(rows)
            return
        while len(rows):
            if self.buffer is None:
                self.buffer = np.empty((self.per_shard, *rows.shape[1:]), np.uint8)
            n = min(len(rows), self.per_shard - self.fill)
            self.buffer[self.fill:self.fill + n] = rows[:n]
            self.fill, rows = self.fill + n, rows[n:]
            if self.fill == self.per_shard:
                self._write_shard(self.buffer)
                self.fill = 0

    def _write_shard(self, rows: np.ndarray) -> None:
        path = self.staging / f"shard-{len(self.written):05d}.npy"
        with open(path, "wb") as f:
            np.save(f, rows, allow_pickle=False)  # straight from the buffer, no copy in memory
        self.written.append({"name": path.name, "count": len(rows), "sha256": file_sha256(path)})

    def finish(self) -> np.ndarray | ShardedImages:
        if self.staging is None:
            return np.concatenate(self.held) if self.held else np.zeros((0, 0, 0, 3), np.uint8)
        if self.fill or not self.written:
            self._write_shard(self.buffer[:self.fill] if self.buffer is not None else np.zeros((0, 1, 1, 3),
                                                                                               np.uint8))
        self.buffer = None
        return ShardedImages([self.staging / s["name"] for s in self.written])


def _publish_staged(store: Storage, shards: _ShardWriter, manifest: dict) -> None:
    """The staged shards into the cache (renamed on local disk: the open files stay valid; uploaded to gs:// and
    kept as the local copy), then the manifest."""
    try:
        for shard in shards.written:
            staged = shards.staging / shard["name"]
            if store.is_remote:
                store.put_file(staged, shard["name"])
            os.replace(staged, shards.staging.parent / shard["name"])
        manifest["shards"] = shards.written
        _write_manifest(store, manifest)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - OSError locally, google.api_core errors for gs://
        raise _write_error(store, e) from None


def _decode_one(source: Storage, entry: FolderEntry, cfg: DataConfig, into: np.ndarray) -> tuple[str, int, str]:
    """(SHA-256 of the file, its pixel count, why it cannot be used or ""), the image written into `into`."""
    try:
        data = source.read_bytes(entry.path)
    except OSError as e:
        return "", 0, f"cannot be read ({e.strerror or type(e).__name__})"
    digest = hashlib.sha256(data).hexdigest()
    try:
        image = images.open_rgb(data, cfg.max_pixels)
    except images.TooManyPixelsError:
        width, height = Image.open(io.BytesIO(data)).size  # the header only, as open_rgb read it
        return digest, width * height, "too many pixels"
    except images.ImageError as e:
        return digest, 0, str(e)
    into[...] = images.to_model_input(image, cfg.image_size)
    return digest, image.size[0] * image.size[1], ""


def _write(store: Storage, decoded: np.ndarray, manifest: dict, per_shard: int) -> None:
    shards = []
    try:
        for n, start in enumerate(range(0, max(len(decoded), 1), per_shard)):
            buffer = io.BytesIO()
            np.save(buffer, decoded[start:start + per_shard], allow_pickle=False)
            name = f"shard-{n:05d}.npy"
            store.write_bytes(name, buffer.getvalue())
            shards.append({"name": name, "count": len(decoded[start:start + per_shard]),
                           "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()})
        manifest["shards"] = shards
        _write_manifest(store, manifest)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - OSError locally, google.api_core errors for gs://
        raise _write_error(store, e) from None


def _write_manifest(store: Storage, manifest: dict) -> None:
    try:
        store.write_bytes(MANIFEST, json.dumps(manifest).encode(), if_absent=True)
    except AlreadyExistsError:
        pass  # a process that took over a stale lock finished too: same listing, same recipe, same images


def _write_error(store: Storage, e: Exception) -> DataError:
    return DataError(f"cannot write the decoded images to {store.url} ({type(e).__name__}: {first_line(e)}); "
                     "set data.cache_dir to a writable folder or gs:// prefix")


# --- reading the cache ---------------------------------------------------------------------------------------------
def _read_manifest(store: Storage) -> dict | None:
    try:
        return json.loads(store.read_bytes(MANIFEST))
    except FileNotFoundError:
        return None
    except ValueError:
        raise DataError(f"{store.url}/{MANIFEST} is not the JSON this trainer writes; delete {store.url} to decode "
                        "the folder again") from None


def _load(store: Storage, manifest: dict) -> DecodedSet:
    parts = []
    for shard in manifest["shards"]:
        raw = store.read_bytes(shard["name"])
        if hashlib.sha256(raw).hexdigest() != shard["sha256"]:
            raise _damaged(store, shard)
        parts.append(np.load(io.BytesIO(raw), allow_pickle=False))
    return _decoded_set(np.concatenate(parts), manifest)


def _open_streamed(store: Storage, manifest: dict, key: str) -> DecodedSet:
    """The cache's shards as ShardedImages on local disk (a gs:// cache's copied first), checksums verified: each file
    hashed once, or twice where a gs:// copy had to be fetched again."""
    local = local_shards_dir(store, key)
    paths = []
    for shard in manifest["shards"]:
        path = local / shard["name"]
        intact = path.is_file() and file_sha256(path) == shard["sha256"]
        if not intact and store.is_remote:
            try:
                store.get_file(shard["name"], path)  # to a temporary name, then renamed: other workers may copy too
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001 - OSError (disk full), google.api_core errors
                raise DataError(f"cannot copy {store.url}/{shard['name']} to {path} ({type(e).__name__}: "
                                f"{first_line(e)}); a streamed run needs the decoded size free in $TMPDIR "
                                f"({tempfile.gettempdir()}): free it, or point TMPDIR at a larger disk") from None
            intact = file_sha256(path) == shard["sha256"]
        if not intact:
            raise _damaged(store, shard)
        paths.append(path)
    return _decoded_set(ShardedImages(paths), manifest)


def _decoded_set(images: np.ndarray | ShardedImages, manifest: dict) -> DecodedSet:
    files = manifest["files"]
    kept = np.array([i for i, f in enumerate(files) if not f[5]], np.int64)
    return DecodedSet(images, kept, [files[i][3] for i in kept], manifest["skipped"])


def _damaged(store: Storage, shard: dict) -> DataError:
    return DataError(f"decoded shard {store.url}/{shard['name']} does not match its checksum in the manifest "
                     f"(damaged); delete {store.url} to decode the folder again")


def _checked(decoded: DecodedSet, listing: FolderListing, manifest: dict, cfg: DataConfig) -> DecodedSet:
    """The limits of this run's config hold for a cache another config made too."""
    if len(decoded.images) != len(decoded.kept) or [f[0] for f in manifest["files"]] != [e.path for e in
                                                                                        listing.entries]:
        raise DataError(f"the decoded cache for {listing.url} does not match its manifest; delete it to decode again")
    _check_pixels(listing.url, manifest, cfg)
    _check_unreadable(listing.url, manifest, cfg)
    _warn_skipped(manifest)
    return decoded


# --- limits --------------------------------------------------------------------------------------------------------
def _streamed(listing: FolderListing, cfg: DataConfig) -> bool:
    """data.stream: `auto` streams a folder whose decoded images take more than data.max_decoded_gb, `always` any
    folder, `never` none (and refuses one over the limit)."""
    needed = len(listing.entries) * cfg.image_size ** 2 * 3
    over = needed > cfg.max_decoded_gb * 1e9
    if cfg.stream == "never" and over:
        raise DataError(f"data.dir={listing.url}: {len(listing.entries):,} images at {cfg.image_size}x"
                        f"{cfg.image_size} take {_size(needed)} decoded, over data.max_decoded_gb="
                        f"{cfg.max_decoded_gb} with data.stream=never (held in memory): raise the limit if the "
                        "machine has the memory, or set data.stream=auto to stream them from the shards")
    streamed = cfg.stream == "always" or over
    if streamed:
        log.info("streaming the decoded images from their shards (%s decoded; data.stream=%s, "
                 "data.max_decoded_gb=%s)", _size(needed), cfg.stream, cfg.max_decoded_gb)
    return streamed


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} bytes"


def _check_pixels(url: str, manifest: dict, cfg: DataConfig) -> None:
    over = [f for f in manifest["files"] if f[4] > cfg.max_pixels]
    if over:
        path, pixels = over[0][0], over[0][4]
        more = f" (and {len(over) - 1} more)" if len(over) > 1 else ""
        raise DataError(f"data.dir={url}: {path} has {pixels:,} pixels, over data.max_pixels={cfg.max_pixels:,}"
                        f"{more}; scale it down, or raise data.max_pixels")


def _check_unreadable(url: str, manifest: dict, cfg: DataConfig) -> None:
    bad, total = manifest["skipped"], len(manifest["files"])
    if bad and len(bad) / total > cfg.max_unreadable_fraction:
        named = "; ".join(f"{p} ({r})" for p, r in bad[:_NAMED_AT_MOST])
        more = f"; and {len(bad) - _NAMED_AT_MOST} more" if len(bad) > _NAMED_AT_MOST else ""
        raise DataError(f"data.dir={url}: {len(bad)} of {total} images cannot be decoded ({len(bad) / total:.1%}, "
                        f"over data.max_unreadable_fraction={cfg.max_unreadable_fraction}): {named}{more}; replace "
                        "or remove them, or raise data.max_unreadable_fraction to skip them")


def _warn_skipped(manifest: dict) -> None:
    bad = manifest["skipped"]
    if bad:
        named = ", ".join(p for p, _ in bad[:_NAMED_AT_MOST]) + (" ..." if len(bad) > _NAMED_AT_MOST else "")
        log.warning("skipping %d of %d images that cannot be decoded (%s); the run's data_manifest.json lists them",
                    len(bad), len(manifest["files"]), named)


# --- the lock ------------------------------------------------------------------------------------------------------
class DecodingLock:
    """`decoding.lock` in the cache: created if absent by the one process that decodes, rewritten every
    LOCK_BEAT_SECONDS while it does (its progress in it), deleted when it is done."""

    def __init__(self, store: Storage, total: int):
        self.store, self.total, self.progress = store, total, 0
        self.owner = {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        self._beats: threading.Thread | None = None

    def _body(self, beat: int) -> bytes:
        return json.dumps({**self.owner, "beat": beat, "done": self.progress, "total": self.total}).encode()

    def acquire(self) -> bool:
        try:
            self.store.write_bytes(LOCK, self._body(0), if_absent=True)
        except AlreadyExistsError:
            return False
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001
            raise DataError(f"cannot write to the decoded-image cache {self.store.url} ({type(e).__name__}: "
                            f"{first_line(e)}); set data.cache_dir to a writable folder or gs:// prefix") from None
        self._beats = threading.Thread(target=self._beat, name="decoding-lock", daemon=True)
        self._beats.start()
        return True

    def _beat(self) -> None:
        beat = 0
        while not self._stop.wait(LOCK_BEAT_SECONDS):
            beat += 1
            try:
                self.store.write_bytes(LOCK, self._body(beat))
            except Exception as e:  # noqa: BLE001 - a missed beat only makes the others wait longer
                log.warning("could not renew %s/%s (%s)", self.store.url, LOCK, first_line(e))

    def release(self) -> None:
        self._stop.set()
        if self._beats is not None:
            self._beats.join()
        self.store.delete(LOCK)

    def wait(self) -> None:
        """Until the holder is done (its manifest is there, or its lock gone) or found dead (then its lock is
        removed, for the caller to take over)."""
        last, changed_at, logged_at = None, time.monotonic(), 0.0
        while _read_manifest(self.store) is None:
            try:
                body = self.store.read_bytes(LOCK)
            except FileNotFoundError:
                return
            now = time.monotonic()
            if body != last:
                last, changed_at = body, now
            holder = _parse(body)
            if now - changed_at > LOCK_STALE_SECONDS or _dead_here(holder):
                log.warning("the process decoding into %s (%s pid %s) stopped; taking over", self.store.url,
                            holder.get("host"), holder.get("pid"))
                self.store.delete(LOCK)
                return
            if now - logged_at >= WAIT_LOG_SECONDS:
                log.info("waiting for %s pid %s to decode the images into %s (%s of %s done)", holder.get("host"),
                         holder.get("pid"), self.store.url, holder.get("done"), holder.get("total"))
                logged_at = now
            time.sleep(POLL_SECONDS)


def _parse(body: bytes) -> dict:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _dead_here(holder: dict) -> bool:
    """The holder ran on this host and its process is gone (a decoder killed with kill -9 and started again)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    if holder["pid"] == os.getpid():  # a restarted container: same host name, often the same pid, and not us
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
