"""Parsing the pickled dicts of the official CIFAR-10/100 python archives into NHWC uint8 arrays.

Layout (https://www.cs.toronto.edu/~kriz/cifar.html): each batch dict has b'data', a uint8 (N, 3072) array whose rows
are 1024 red, then 1024 green, then 1024 blue values of a 32x32 image in row-major order, and label lists
(b'labels' for CIFAR-10, b'fine_labels' and b'coarse_labels' for CIFAR-100). The meta dict names the classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from job.data.archive import ARCHIVES, ArchiveSpec, read_members
from job.errors import DataError

CIFAR10_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


@dataclass
class CifarArrays:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    # CIFAR-100 only: the superclass of every example and the superclass names
    y_train_coarse: np.ndarray | None = None
    y_test_coarse: np.ndarray | None = None
    coarse_names: list[str] | None = None


def read_cifar10(path: Path) -> CifarArrays:
    spec = ARCHIVES["cifar10"]
    members = read_members(path, spec, CIFAR10_TRAIN_BATCHES + ["test_batch", "batches.meta"])
    check = _Checker(path, spec)
    names = check.names(members["batches.meta"], "batches.meta", b"label_names", 10)
    train = [check.batch(members[m], m, {b"labels": 10}) for m in CIFAR10_TRAIN_BATCHES]
    x_test, labels = check.batch(members["test_batch"], "test_batch", {b"labels": 10})
    return CifarArrays(
        x_train=np.concatenate([x for x, _ in train]),
        y_train=np.concatenate([y[b"labels"] for _, y in train]),
        x_test=x_test,
        y_test=labels[b"labels"],
        class_names=names,
    )


def read_cifar100(path: Path) -> CifarArrays:
    spec = ARCHIVES["cifar100"]
    members = read_members(path, spec, ["train", "test", "meta"])
    check = _Checker(path, spec)
    fine_names = check.names(members["meta"], "meta", b"fine_label_names", 100)
    coarse_names = check.names(members["meta"], "meta", b"coarse_label_names", 20)
    label_keys = {b"fine_labels": 100, b"coarse_labels": 20}
    x_train, train = check.batch(members["train"], "train", label_keys)
    x_test, test = check.batch(members["test"], "test", label_keys)
    return CifarArrays(
        x_train=x_train,
        y_train=train[b"fine_labels"],
        x_test=x_test,
        y_test=test[b"fine_labels"],
        class_names=fine_names,
        y_train_coarse=train[b"coarse_labels"],
        y_test_coarse=test[b"coarse_labels"],
        coarse_names=coarse_names,
    )


def fine_to_coarse_map(fine: np.ndarray, coarse: np.ndarray, num_fine: int, path: Path) -> np.ndarray:
    """The superclass of each fine class, from the (fine, coarse) label pairs; -1 for a class that never occurs."""
    mapping = np.full(num_fine, -1, dtype=np.int32)
    mapping[fine] = coarse
    inconsistent = np.flatnonzero(mapping[fine] != coarse)
    if inconsistent.size:
        i = inconsistent[0]
        raise DataError(
            f"{path}: fine class {fine[i]} appears with superclasses {mapping[fine[i]]} and {coarse[i]}; the labels "
            f"are corrupted, replace the archive with a fresh copy of {ARCHIVES['cifar100'].url}"
        )
    return mapping


class _Checker:
    """Validates the members' keys, dtypes and shapes, naming the member and the fix on failure."""

    def __init__(self, path: Path, spec: ArchiveSpec):
        self.path, self.spec = path, spec

    def fail(self, member: str, problem: str) -> DataError:
        return DataError(
            f"{self.path}: member {self.spec.folder}/{member} {problem}; it is not the official python-version "
            f"{self.spec.filename}, download {self.spec.url}"
        )

    def get(self, d: dict, member: str, key: bytes):
        if key not in d:
            raise self.fail(member, f"lacks key {key!r} (has {sorted(map(repr, d))})")
        return d[key]

    def names(self, meta: dict, member: str, key: bytes, count: int) -> list[str]:
        raw = self.get(meta, member, key)
        if not isinstance(raw, (list, tuple)) or len(raw) != count:
            raise self.fail(member, f"has {key!r} that is not a list of {count} names")
        return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in raw]

    def batch(self, d: dict, member: str, label_keys: dict[bytes, int]) -> tuple[np.ndarray, dict[bytes, np.ndarray]]:
        data = np.asarray(self.get(d, member, b"data"))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise self.fail(member, f"has b'data' of dtype {data.dtype} and shape {data.shape}, not uint8 (N, 3072)")
        images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels = {}
        for key, num_classes in label_keys.items():
            y = np.asarray(self.get(d, member, key))
            if y.shape != (len(data),) or y.dtype.kind not in "iu":
                raise self.fail(member, f"has {key!r} of shape {y.shape}, not {len(data)} integer labels")
            if y.size and (y.min() < 0 or y.max() >= num_classes):
                raise self.fail(member, f"has {key!r} outside [0, {num_classes})")
            labels[key] = y.astype(np.int32)
        return images, labels
