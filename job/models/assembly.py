"""The model a run trains and exports: raw pixels in [0, 255] -> preprocessing -> a family's network -> logits.

The preprocessing statistics are weights of the model, so checkpoints and exports carry them.
"""
from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING

import keras
import numpy as np
from keras.src.random import seed_generator

from job.data import Preprocess
from job.models import MODELS, build_model, initialize_from_data, set_transfer_phase

if TYPE_CHECKING:
    from job.config import Config

NETWORK_LAYER = "network"  # the family's model inside the full model (its own last layer may be called "classifier")
PREPROCESS_LAYER = "preprocess"


def build_full_model(cfg: Config, num_classes: int, image_shape: tuple[int, ...]) -> keras.Model:
    """Float32 images of `image_shape` in [0, 255] in, float32 logits out. Call inside the backend's scope. Its
    initial weights depend on train.seed alone."""
    with seeded_weight_initialization(cfg.train.seed):
        inputs = keras.Input(shape=tuple(image_shape), name="image", dtype="float32")
        x = Preprocess(cfg.data.normalization, image_shape=tuple(image_shape), name=PREPROCESS_LAYER)(inputs)
        network = build_model(cfg.model, num_classes, tuple(image_shape))
        network.name = NETWORK_LAYER
        outputs = network(x)
        return keras.Model(inputs, outputs, name=f"{cfg.model.name}_{cfg.data.name}")


DATA_INIT_IMAGES = 5000  # the first this many training images (airbench94's sample for its whitening)


def initialize_network_from_data(model: keras.Model, cfg: Config, x_train: np.ndarray) -> bool:
    """A fresh start's data-dependent initialisation of the network (ModelSpec.data_init, e.g. airbench94's whitened
    stem), from the first DATA_INIT_IMAGES training images as the network sees them: through the model's preprocessing
    layer, whose statistics must be set. A pure function of the training images, so of the data and train.seed."""
    if not MODELS[cfg.model.name].data_init:
        return False
    preprocess = model.get_layer(PREPROCESS_LAYER)
    sample = x_train[:DATA_INIT_IMAGES]
    images = np.concatenate([np.asarray(preprocess(sample[i:i + 500].astype(np.float32)))
                             for i in range(0, len(sample), 500)])
    return initialize_from_data(cfg.model.name, model.get_layer(NETWORK_LAYER), images)


def is_transfer(cfg: Config) -> bool:
    return MODELS[cfg.model.name].transfer


def set_phase(model: keras.Model, cfg: Config, phase: int) -> None:
    """Transfer models: phase 1 trains the head, phase 2 also the backbone's top `model.unfreeze_top` layers."""
    set_transfer_phase(model.get_layer(NETWORK_LAYER), phase, cfg.model.unfreeze_top)


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
