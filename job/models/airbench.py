"""airbench94's network (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", arXiv 2404.00498): a 2x2
stem convolution with 24 filters and GELU, then three conv groups (3x3 conv, 2x2 max-pool, BatchNorm, GELU, 3x3 conv,
BatchNorm, GELU) of 64, 256 and 256 filters, a 3x3 max-pool, and a bias-free linear classifier scaled by 1/9.

As airbench: BatchNorm has no learned scale (Keras `scale=False`, airbench freezes its weight at 1), a small epsilon
and momentum 0.6 in PyTorch's convention (0.4 in Keras'). Not ported (docs/configuration.md, "Recipes"): the stem's
initialisation by whitening 2x2 patches of the training images (a builder sees the config, not the data), the identity
initialisation of the second conv of each group, and the 64x learning rate of the BatchNorm biases (one optimizer, one
learning rate here). About 1.97M parameters with 10 classes.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import keras
from keras import layers

from job.models.common import float32_logits, l2_regularizer

if TYPE_CHECKING:
    from job.config import ModelConfig

WIDTHS = (64, 256, 256)
STEM_FILTERS = 24  # 2 * 3 channels * 2x2 patch: the whitening stem's width
BN_MOMENTUM = 0.4  # PyTorch's momentum 0.6: new = 0.4 * old + 0.6 * batch
BN_EPSILON = 1e-5  # airbench's 1e-12 is below float32 resolution for small variances; Keras' minimum is 1.001e-5
SCALE = 1.0 / 9.0


def airbench94(cfg: ModelConfig, num_classes: int, image_shape: tuple = (32, 32, 3)) -> keras.Model:
    reg = l2_regularizer(cfg)
    inputs = keras.Input(image_shape)
    x = layers.Conv2D(STEM_FILTERS, 2, padding="valid", kernel_regularizer=reg, name="stem")(inputs)
    x = layers.Activation("gelu")(x)
    for i, width in enumerate(WIDTHS):
        x = _conv_group(x, width, reg, f"group{i + 1}")
    x = layers.MaxPooling2D(3)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(num_classes, use_bias=False, kernel_regularizer=reg, name="classifier")(x)
    x = layers.Rescaling(SCALE)(x)
    return keras.Model(inputs, float32_logits(x), name="airbench94")


def _conv_group(x, filters: int, reg, name: str):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_regularizer=reg, name=f"{name}_conv1")(x)
    x = layers.MaxPooling2D(2)(x)
    x = _bn_gelu(x, f"{name}_bn1")
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_regularizer=reg, name=f"{name}_conv2")(x)
    return _bn_gelu(x, f"{name}_bn2")


def _bn_gelu(x, name: str):
    x = layers.BatchNormalization(scale=False, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)(x)
    return layers.Activation("gelu")(x)
