"""The data layer: the datasets registry, CIFAR-10/100 archives (download, checksum, parsing), digits and synthetic
sets, folders of the user's own images (folder.py) decoded once into a shared cache (decoded.py), the tf.data
pipelines with vectorized stateless augmentation, and the in-model preprocessing layer.

Importing this package does not import TensorFlow or Keras: config validation reads DATASETS before TensorFlow
starts. The names that need TensorFlow are imported from their modules when first used.
"""
from __future__ import annotations

import importlib
from typing import Any

from job.data.splits import DATASETS, DatasetSpec, Splits, load_splits

_LAZY = {  # name -> the module that defines it (and imports TensorFlow or Keras)
    "augmented_grid": "job.data.augment",
    "as_images": "job.data.pipeline",
    "calibration_dataset": "job.data.pipeline",
    "eval_dataset": "job.data.pipeline",
    "steps_per_epoch": "job.data.pipeline",
    "train_dataset": "job.data.pipeline",
    "Preprocess": "job.data.preprocess",
    "fit_preprocessing": "job.data.preprocess",
}

__all__ = ["DATASETS", "DatasetSpec", "Splits", "load_splits", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
