"""VGG-16 with batch norm for 32x32 images.

The CIFAR variant of Li et al. 2017 ("Pruning Filters for Efficient ConvNets", after Zagoruyko's cifar.torch):
the 13 3x3 conv layers of VGG-16, each followed by BN and ReLU, 2x2 max-pools after each of the 5 blocks (32 -> 1),
then one 512-unit hidden layer with BN instead of the two 4096-unit ImageNet layers, then the classifier.
Published size: 1.5e7 parameters (Li et al., Table 1), 14.98M in HRank (Lin et al. 2020, Table 1), CIFAR-10.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import keras
from keras import layers

from job.models.common import float32_logits, l2_regularizer

if TYPE_CHECKING:
    from job.config import ModelConfig

VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))  # (filters, convs) per block


def vgg16(cfg: ModelConfig, num_classes: int, image_shape: tuple[int, int, int]) -> keras.Model:
    reg = l2_regularizer(cfg)
    inputs = keras.Input(image_shape, name="images")
    x = inputs
    for b, (filters, convs) in enumerate(VGG16_BLOCKS, start=1):
        for c in range(1, convs + 1):
            # no conv bias: the BN right after it has its own shift
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                              kernel_regularizer=reg, name=f"block{b}_conv{c}")(x)
            x = layers.BatchNormalization(name=f"block{b}_bn{c}")(x)
            x = layers.ReLU(name=f"block{b}_relu{c}")(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"block{b}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(512, use_bias=False, kernel_regularizer=reg, name="fc")(x)
    x = layers.BatchNormalization(name="fc_bn")(x)
    x = layers.ReLU(name="fc_relu")(x)
    x = layers.Dropout(cfg.dropout, name="fc_dropout")(x)
    x = layers.Dense(num_classes, kernel_regularizer=reg, name="classifier")(x)
    return keras.Model(inputs, float32_logits(x), name="vgg16")
