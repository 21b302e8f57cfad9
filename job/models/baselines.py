"""Small baselines: the classic Keras CIFAR-10 CNN and a dense-only MLP."""
from __future__ import annotations

from typing import TYPE_CHECKING

import keras
from keras import layers

from job.models.common import float32_logits, l2_regularizer

if TYPE_CHECKING:
    from job.config import ModelConfig


def simple_cnn(cfg: ModelConfig, num_classes: int, image_shape: tuple[int, int, int]) -> keras.Model:
    """keras-team/keras examples/cifar10_cnn.py: Conv32-Conv32-Pool-Conv64-Conv64-Pool-Dense512-Dense.

    The example's dropout is 0.25 after each pooling and 0.5 before the classifier; here the classifier gets
    cfg.dropout and the conv blocks half of it, so model.dropout=0.5 reproduces the example exactly.
    """
    reg = l2_regularizer(cfg)
    inputs = keras.Input(image_shape, name="images")
    x = inputs
    for block, filters in enumerate((32, 64), start=1):
        # 'same' then 'valid' padding, as in the example (this fixes the 2304-wide flatten for 32x32 inputs)
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_regularizer=reg,
                          name=f"block{block}_conv1")(x)
        x = layers.Conv2D(filters, 3, padding="valid", activation="relu", kernel_regularizer=reg,
                          name=f"block{block}_conv2")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        x = layers.Dropout(cfg.dropout / 2, name=f"block{block}_dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(512, activation="relu", kernel_regularizer=reg, name="fc")(x)
    x = layers.Dropout(cfg.dropout, name="fc_dropout")(x)
    x = layers.Dense(num_classes, kernel_regularizer=reg, name="classifier")(x)
    return keras.Model(inputs, float32_logits(x), name="simple_cnn")


def mlp(cfg: ModelConfig, num_classes: int, image_shape: tuple[int, int, int]) -> keras.Model:
    """Flatten, two ReLU hidden layers (1024, 512) with dropout, then the classifier."""
    reg = l2_regularizer(cfg)
    inputs = keras.Input(image_shape, name="images")
    x = layers.Flatten(name="flatten")(inputs)
    for i, units in enumerate((1024, 512), start=1):
        x = layers.Dense(units, activation="relu", kernel_regularizer=reg, name=f"fc{i}")(x)
        x = layers.Dropout(cfg.dropout, name=f"fc{i}_dropout")(x)
    x = layers.Dense(num_classes, kernel_regularizer=reg, name="classifier")(x)
    return keras.Model(inputs, float32_logits(x), name="mlp")
