"""Decoded images read from their .npy shard files on local disk, batch by batch (data.stream, docs/own-images.md).

`ShardedImages` stands where a uint8 (N, S, S, 3) array would: len(), .shape, .dtype, and indexing by an int, a slice
or an index array return numpy arrays read from the files at that moment; `select` takes a lazy subset. The rows are
read with os.pread, not a memory map: pages of a map that an epoch has touched count in the process's resident set
until the kernel needs them back, while pread leaves them to the page cache, which the kernel frees at will.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

SHARD_BYTES = 32 << 20  # decoded bytes per shard at most (the decoding of a streamed run holds about one shard)
SHARD_IMAGES = 4096  # images per shard at most (the number of every cache written before SHARD_BYTES)


def images_per_shard(image_size: int) -> int:
    return max(1, min(SHARD_IMAGES, SHARD_BYTES // (image_size * image_size * 3)))


class ShardedImages:
    """Rows `rows` of the concatenation of the uint8 .npy files `paths` (each (n, S, S, 3), C order)."""

    def __init__(self, paths: list[Path], rows: np.ndarray | None = None, _files: tuple | None = None):
        if _files is None:
            counts, offsets, fds, shape = [], [], [], None
            for path in paths:
                with open(path, "rb") as f:
                    version = np.lib.format.read_magic(f)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    file_shape, fortran, dtype = read_header(f)
                    if dtype != np.uint8 or fortran or len(file_shape) != 4 or (shape and file_shape[1:] != shape):
                        raise ValueError(f"{path} is not a uint8 (n, S, S, 3) array like the other shards")
                    shape = file_shape[1:]
                    offsets.append(f.tell())
                counts.append(file_shape[0])
                fds.append(os.open(path, os.O_RDONLY))
            starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            _files = (_Descriptors(fds), np.array(offsets, np.int64), starts, tuple(shape or (0, 0, 3)))
        self._files = _files
        self.rows = np.arange(_files[2][-1], dtype=np.int64) if rows is None else np.asarray(rows, np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self._files[3])

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, index) -> ShardedImages:
        """The lazy subset `index` (an index array or a slice) of these images."""
        return ShardedImages([], self.rows[index], self._files)

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self.read(self.rows[[index]])[0]
        return self.read(self.rows[index])

    def take(self, ids) -> np.ndarray:
        """The images at positions `ids` (what the input pipeline gathers a batch with)."""
        return self.read(self.rows[np.asarray(ids, np.int64)])

    def read(self, rows: np.ndarray) -> np.ndarray:
        fds, offsets, starts, shape = self._files
        row_bytes = int(np.prod(shape))
        out = np.empty((len(rows), *shape), np.uint8)
        flat = out.reshape(len(rows), row_bytes)
        shard = np.searchsorted(starts, rows, side="right") - 1
        for i, (row, s) in enumerate(zip(rows.tolist(), shard.tolist())):
            where = int(offsets[s]) + (row - int(starts[s])) * row_bytes
            flat[i] = np.frombuffer(os.pread(fds.fds[s], row_bytes, where), np.uint8)
        return out

    def __array__(self, dtype=None, copy=None):
        raise TypeError("ShardedImages are streamed from disk; read a batch with take(ids), not the whole set")


class _Descriptors:
    """The open shard files, closed when no subset uses them any more."""

    def __init__(self, fds: list[int]):
        self.fds = fds

    def __del__(self):
        for fd in self.fds:
            os.close(fd)


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def select(images, index):
    """images[index]: a lazy subset of ShardedImages, a copy of an array."""
    return images.select(index) if isinstance(images, ShardedImages) else images[index]
