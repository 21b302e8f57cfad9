"""The datasets registry (DATASETS) and `load_splits`: the train / validation / test arrays of the configured dataset,
with its class names.

Importing this module does not import TensorFlow or Keras (config validation reads DATASETS and runs each dataset's
rules before TensorFlow starts).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from job.data.archive import ARCHIVES, fetch_archive
from job.data.cifar import fine_to_coarse_map, read_cifar10, read_cifar100
from job.data.shards import select
from job.errors import ConfigError, DataError

if TYPE_CHECKING:
    from job.config import Config, DataConfig

IMAGE_SHAPE = (32, 32, 3)  # every built-in dataset is served at CIFAR's shape; a folder at data.image_size
FOLDER_ONLY_KEYS = ("test_split", "split_seed", "cache_dir", "max_unreadable_fraction", "max_pixels",
                    "max_decoded_gb", "stream")
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 20151123  # fixed, so the digits test set never depends on train.seed


@dataclass
class Splits:
    x_train: np.ndarray  # uint8 (N, 32, 32, 3); a streamed folder's: job/data/shards.py ShardedImages
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
    record: dict | None = None  # data.name=folder: what the run keeps as layout.DATA_MANIFEST_FILE (job/data/folder.py)


def load_splits(cfg: DataConfig, seed: int, run_dir: str = "") -> Splits:
    """The dataset `cfg.name`, with `cfg.validation_split` of train held out (stratified, chosen by `seed`). `run_dir`:
    the run it is loaded for (data.name=folder keeps its decoded images there by default, and checks a resume)."""
    if cfg.name not in DATASETS:
        raise DataError(f"data.name={cfg.name!r} is unknown; use {', '.join(DATASETS)}")
    splits = DATASETS[cfg.name].load(cfg, seed, run_dir)
    if cfg.validation_split > 0:
        train, val = stratified_split(splits.y_train, cfg.validation_split, seed)
        if not len(train) or not len(val):
            raise DataError(
                f"data.validation_split={cfg.validation_split} leaves an empty train or validation set out of "
                f"{len(splits.y_train)} examples; choose a fraction strictly between them"
            )
        splits.x_val, splits.y_val = select(splits.x_train, val), splits.y_train[val]
        splits.x_train, splits.y_train = select(splits.x_train, train), splits.y_train[train]
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


def _cifar10(cfg: DataConfig, seed: int, run_dir: str) -> Splits:
    arrays = read_cifar10(fetch_archive(ARCHIVES["cifar10"], cfg.dir, cfg.download, cfg.md5))
    return Splits(arrays.x_train, arrays.y_train, None, None, arrays.x_test, arrays.y_test,
                  num_classes=DATASETS["cifar10"].num_classes["fine"], class_names=arrays.class_names)


def _cifar100(cfg: DataConfig, seed: int, run_dir: str) -> Splits:
    path = fetch_archive(ARCHIVES["cifar100"], cfg.dir, cfg.download, cfg.md5)
    a = read_cifar100(path)
    num_classes = DATASETS["cifar100"].num_classes[cfg.label_mode]
    if cfg.label_mode == "coarse":
        return Splits(a.x_train, a.y_train_coarse, None, None, a.x_test, a.y_test_coarse,
                      num_classes=num_classes, class_names=a.coarse_names)
    mapping = fine_to_coarse_map(np.concatenate([a.y_train, a.y_test]),
                                 np.concatenate([a.y_train_coarse, a.y_test_coarse]), num_classes, path)
    return Splits(a.x_train, a.y_train, None, None, a.x_test, a.y_test, num_classes=num_classes,
                  class_names=a.class_names, coarse_names=a.coarse_names, fine_to_coarse=mapping)


def _digits(cfg: DataConfig, seed: int, run_dir: str) -> Splits:
    """scikit-learn's bundled 8x8 digits (values 0..16), as 32x32x3 uint8 so every model runs unchanged."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = images.repeat(4, axis=1).repeat(4, axis=2)  # nearest-neighbour upsampling keeps the strokes sharp
    images = np.repeat(images[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int32)
    classes = DATASETS["digits"].num_classes["fine"]
    train, test = stratified_split(labels, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    return Splits(images[train], labels[train], None, None, images[test], labels[test],
                  num_classes=classes, class_names=[str(d) for d in range(classes)])


NOISY_DIGITS_SIGMA = 70.0  # Gaussian pixel noise (of 255)
NOISY_DIGITS_LABEL_NOISE = 0.2  # share of TRAINING labels replaced by a random other class; test labels stay true


def _digits_noisy(cfg: DataConfig, seed: int, run_dir: str) -> Splits:
    """A learnable task that does not saturate, made here: the digits at half size (16x16), faint (contrast 0.25 to
    1), at a random place on a 32x32 canvas, under heavy Gaussian noise, with 20% of the training labels wrong; ~144
    training images per class. Generated from fixed seeds: the same images in every run, whatever train.seed."""
    clean = _digits(cfg, seed, run_dir)
    rng = np.random.default_rng([DIGITS_SPLIT_SEED, 0x0D16])

    def corrupt(images: np.ndarray) -> np.ndarray:
        small = images[:, ::2, ::2, 0].astype(np.float32)  # the 32x32 upsampled digit back at 16x16
        n = len(small)
        canvas = np.zeros((n, 32, 32), np.float32)
        top, left = rng.integers(0, 17, n), rng.integers(0, 17, n)
        contrast = rng.uniform(0.25, 1.0, n).astype(np.float32)
        for i in range(n):
            canvas[i, top[i]:top[i] + 16, left[i]:left[i] + 16] = small[i] * contrast[i]
        noisy = canvas[..., None] + rng.normal(0, NOISY_DIGITS_SIGMA, (n, 32, 32, 3)).astype(np.float32)
        return np.clip(np.rint(noisy + 64.0), 0, 255).astype(np.uint8)

    x_train, x_test = corrupt(clean.x_train), corrupt(clean.x_test)
    y_train = clean.y_train.copy()
    wrong = rng.random(len(y_train)) < NOISY_DIGITS_LABEL_NOISE
    y_train[wrong] = (y_train[wrong] + rng.integers(1, clean.num_classes, wrong.sum())) % clean.num_classes
    return Splits(x_train, y_train.astype(np.int32), None, None, x_test, clean.y_test, num_classes=clean.num_classes,
                  class_names=clean.class_names)


def _folder(cfg: DataConfig, seed: int, run_dir: str) -> Splits:
    from job.data.folder import load_folder

    return load_folder(cfg, run_dir)


def _synthetic(cfg: DataConfig, seed: int, run_dir: str) -> Splits:
    """Uniform random images and labels of CIFAR shape: for throughput tests and smoke runs, nothing to learn."""
    n, classes = cfg.synthetic_examples, DATASETS["synthetic"].num_classes["fine"]
    rng = np.random.default_rng([seed, 0x5A7])
    n_test = max(1, n // 5)
    x = rng.integers(0, 256, size=(n + n_test, *IMAGE_SHAPE), dtype=np.uint8)
    y = rng.integers(0, classes, size=n + n_test, dtype=np.int32)
    return Splits(x[:n], y[:n], None, None, x[n:], y[n:], num_classes=classes,
                  class_names=[f"class_{i}" for i in range(classes)])


# --- the registry --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    num_classes: dict[str, int]  # data.label_mode -> number of classes; "fine" is every dataset's default
    offline: bool  # bundled or generated: never downloaded, so data.dir, data.download and data.md5 do not apply
    load: Callable[[DataConfig, int, str], Splits]  # load(cfg.data, train.seed, run dir) -> all of train, and test

    def check(self, cfg: Config) -> None:
        """Refuse settings this dataset cannot honour. Config validation calls it, before TensorFlow starts."""
        from job.config import DataConfig

        data = cfg.data
        if data.label_mode not in self.num_classes:
            having = [d.name for d in DATASETS.values() if data.label_mode in d.num_classes]
            raise ConfigError(f"data.label_mode={data.label_mode} does not apply to {self.name} (only "
                              f"{', '.join(self.num_classes)}); it is for {', '.join(having)}")
        if self.offline and data.md5:
            raise ConfigError(f"data.md5 checks a downloaded archive, and {self.name} has none; remove data.md5")
        if self.name != "synthetic" and data.synthetic_examples != DataConfig.synthetic_examples:
            raise ConfigError(f"data.synthetic_examples={data.synthetic_examples} only applies to data.name=synthetic, "
                              f"not {self.name}; remove it")
        if self.name != "folder" and data.image_size != IMAGE_SHAPE[0]:
            raise ConfigError(f"data.image_size={data.image_size} is for data.name=folder; {self.name}'s images are "
                              f"{IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}: remove it")
        if data.image_size != IMAGE_SHAPE[0] and data.normalization == "gcn_zca":
            raise ConfigError(f"data.normalization=gcn_zca whitens with a matrix of (side x side x 3)^2 values, "
                              f"{(3 * data.image_size ** 2) ** 2 * 4 / 1e6:,.0f} MB at data.image_size="
                              f"{data.image_size}: it is for {IMAGE_SHAPE[0]} only; use standardize")
        if self.name != "folder":
            for key in FOLDER_ONLY_KEYS:
                if getattr(data, key) != getattr(DataConfig, key):
                    raise ConfigError(f"data.{key}={getattr(data, key)} only applies to data.name=folder, not "
                                      f"{self.name}; remove it")
        elif not data.dir.strip():
            raise ConfigError("data.name=folder needs data.dir, the folder (local or gs://) holding a subfolder "
                              "per class")
        if data.augment.cutout >= data.image_size:
            raise ConfigError(f"data.augment.cutout must be in [0, {data.image_size}) (below the image side, "
                              f"data.image_size), got {data.augment.cutout}")


_SPECS = [
    DatasetSpec("cifar10", "CIFAR-10: 50,000 + 10,000 32x32 colour images, 10 classes (downloaded, MD5 checked)",
                {"fine": 10}, offline=False, load=_cifar10),
    DatasetSpec("cifar100", "CIFAR-100: 50,000 + 10,000 32x32 colour images, 100 classes in 20 superclasses "
                "(downloaded, MD5 checked)", {"fine": 100, "coarse": 20}, offline=False, load=_cifar100),
    DatasetSpec("digits", "scikit-learn's bundled 8x8 digits (1,797 images, 10 classes) upsampled to 32x32x3",
                {"fine": 10}, offline=True, load=_digits),
    DatasetSpec("digits_noisy", "the digits made hard (made here, does not saturate): half size, faint, anywhere on "
                "the canvas, heavy pixel noise, 20% wrong training labels", {"fine": 10}, offline=True,
                load=_digits_noisy),
    DatasetSpec("folder", "your own images: data.dir (local or gs://) holding a folder per class, or train/ and "
                "test/ folders that do (docs/own-images.md)", {"fine": 0}, offline=True, load=_folder),
    DatasetSpec("synthetic", "uniform random images and labels (data.synthetic_examples of them): benchmarks and "
                "smoke runs only, nothing to learn", {"fine": 10}, offline=True, load=_synthetic),
]

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}
