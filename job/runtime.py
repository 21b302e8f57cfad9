"""Process-wide TensorFlow settings a run needs before any model or dataset exists."""
from __future__ import annotations

import logging

import keras
import tensorflow as tf

from job.config import Config

log = logging.getLogger("job")


def configure(cfg: Config) -> None:
    keras.utils.set_random_seed(cfg.train.seed)
    if cfg.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(cfg.train.precision)
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)
