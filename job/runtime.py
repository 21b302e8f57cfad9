"""Process-wide TensorFlow settings a run needs before any model or dataset exists."""
from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator

import keras
import tensorflow as tf
from keras.src.random import seed_generator

from job.config import Config

log = logging.getLogger("job")


def configure(cfg: Config) -> None:
    keras.utils.set_random_seed(cfg.train.seed)
    if cfg.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(cfg.train.precision)
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)


@contextlib.contextmanager
def seeded_weight_initialization(seed: int) -> Iterator[None]:
    """Keras draws the seed of every initializer and dropout layer it creates from Python's global `random`
    (keras.src.random.seed_generator.make_default_seed). Other threads draw from it too: google-cloud-storage's
    uploads (multipart boundaries, retry jitter) on the run directory's background thread. A model built while an
    upload ran got other initial weights, so a gs:// run differed from a local one of the same seed, and from itself
    when an upload's timing changed. Inside this block Keras draws from a generator of its own, seeded with `seed`."""
    shared = seed_generator.python_random
    seed_generator.python_random = random.Random(seed)
    try:
        yield
    finally:
        seed_generator.python_random = shared
