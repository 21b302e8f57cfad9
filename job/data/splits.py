"""`load_splits`: the train / validation / test arrays of the configured dataset, with its class names."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from job.config import DataConfig
from job.data.archive import ARCHIVES, fetch_archive
from job.data.cifar import fine_to_coarse_map, read_cifar10, read_cifar100
from job.errors import DataError

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 20151123  # fixed, so the digits test set never depends on train.seed
SYNTHETIC_CLASSES = 10


@dataclass
class Splits:
    x_train: np.ndarray  # uint8 (N, 32, 32, 3)
    y_train: np.ndarray  # int32 (N,)
    x_val: np.ndarray | None  # None when data.validation_split == 0
    y_val: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: list[str]
    # CIFAR-100 with label_mode=fine only (with coarse labels these are the labels themselves):
    coarse_names: list[str] | None = None
    fine_to_coarse: np.ndarray | None = None  # int32 (num_classes,), the superclass of each fine class
    y_test_coarse: np.ndarray | None = None


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    """The dataset `cfg.name`, with `cfg.validation_split` of train held out (stratified, chosen by `seed`)."""
    if cfg.name == "cifar10":
        splits = _cifar10(cfg)
    elif cfg.name == "cifar100":
        splits = _cifar100(cfg)
    elif cfg.name == "digits":
        splits = _digits()
    elif cfg.name == "synthetic":
        splits = _synthetic(cfg.synthetic_examples, seed)
    else:
        raise DataError(f"data.name={cfg.name!r} is unknown; use cifar10, cifar100, digits or synthetic")
    if cfg.validation_split > 0:
        train, val = stratified_split(splits.y_train, cfg.validation_split, seed)
        if not len(train) or not len(val):
            raise DataError(
                f"data.validation_split={cfg.validation_split} leaves an empty train or validation set out of "
                f"{len(splits.y_train)} examples; choose a fraction strictly between them"
            )
        splits.x_val, splits.y_val = splits.x_train[val], splits.y_train[val]
        splits.x_train, splits.y_train = splits.x_train[train], splits.y_train[train]
    return splits


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held_out) index arrays, sorted; held_out has round(fraction * N) examples, each class in proportion.

    Within every class the examples are put in a random order (by `seed`); each gets its quantile in that order, and
    the examples with the smallest quantiles over all classes are held out, so every class gives up the same share.
    """
    n = len(labels)
    n_held = int(round(fraction * n))
    rng = np.random.default_rng([seed, 0x5EED])
    shuffled = rng.permutation(n)
    by_class = shuffled[np.argsort(labels[shuffled], kind="stable")]
    counts = np.bincount(labels)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    cls = labels[by_class]
    quantile = (np.arange(n) - starts[cls] + 0.5) / counts[cls]
    held = by_class[np.argsort(quantile, kind="stable")[:n_held]]
    kept = np.setdiff1d(np.arange(n), held)
    return kept, np.sort(held)


def _cifar10(cfg: DataConfig) -> Splits:
    arrays = read_cifar10(fetch_archive(ARCHIVES["cifar10"], cfg.dir, cfg.download, cfg.md5))
    return Splits(arrays.x_train, arrays.y_train, None, None, arrays.x_test, arrays.y_test,
                  num_classes=10, class_names=arrays.class_names)


def _cifar100(cfg: DataConfig) -> Splits:
    path = fetch_archive(ARCHIVES["cifar100"], cfg.dir, cfg.download, cfg.md5)
    a = read_cifar100(path)
    if cfg.label_mode == "coarse":
        return Splits(a.x_train, a.y_train_coarse, None, None, a.x_test, a.y_test_coarse,
                      num_classes=20, class_names=a.coarse_names)
    if cfg.label_mode != "fine":
        raise DataError(f"data.label_mode={cfg.label_mode!r} is unknown; use fine or coarse")
    mapping = fine_to_coarse_map(np.concatenate([a.y_train, a.y_test]),
                                 np.concatenate([a.y_train_coarse, a.y_test_coarse]), 100, path)
    return Splits(a.x_train, a.y_train, None, None, a.x_test, a.y_test, num_classes=100,
                  class_names=a.class_names, coarse_names=a.coarse_names, fine_to_coarse=mapping,
                  y_test_coarse=a.y_test_coarse)


def _digits() -> Splits:
    """scikit-learn's bundled 8x8 digits (values 0..16), as 32x32x3 uint8 so every model runs unchanged."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = images.repeat(4, axis=1).repeat(4, axis=2)  # nearest-neighbour upsampling keeps the strokes sharp
    images = np.repeat(images[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int32)
    train, test = stratified_split(labels, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    return Splits(images[train], labels[train], None, None, images[test], labels[test],
                  num_classes=10, class_names=[str(d) for d in range(10)])


def _synthetic(n: int, seed: int) -> Splits:
    """Uniform random images and labels of CIFAR shape: for throughput tests and smoke runs, nothing to learn."""
    if n <= 0:
        raise DataError(f"data.synthetic_examples={n} must be positive")
    rng = np.random.default_rng([seed, 0x5A7])
    n_test = max(1, n // 5)
    x = rng.integers(0, 256, size=(n + n_test, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, SYNTHETIC_CLASSES, size=n + n_test, dtype=np.int32)
    return Splits(x[:n], y[:n], None, None, x[n:], y[n:], num_classes=SYNTHETIC_CLASSES,
                  class_names=[f"class_{i}" for i in range(SYNTHETIC_CLASSES)])
