"""Residual networks for 32x32 images.

- resnet20/56/110: He et al. 2016, "Deep Residual Learning for Image Recognition", Sec. 4.2 (CIFAR-10): a 3x3
  conv with 16 filters, then 3 stages of n basic blocks with 16/32/64 filters (depth 6n+2), global average pooling
  and the classifier. Shortcuts are option A, as in the paper's CIFAR experiments: identity, and where the shape
  changes a parameter-free stride-2 subsampling plus zero-padded channels. Published: 0.27M, 0.85M, 1.7M parameters.
- resnet18: the ImageNet ResNet-18 (He et al. 2016, Table 1) with the usual CIFAR stem (3x3 conv, stride 1, no
  max-pool) and 1x1-conv projection shortcuts (option B), as in kuangliu/pytorch-cifar: about 11.2M parameters.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import keras
from keras import layers, ops

from job.models.common import float32_logits, l2_regularizer

if TYPE_CHECKING:
    from job.config import ModelConfig


@keras.saving.register_keras_serializable(package="job")
class ZeroPadShortcut(layers.Layer):
    """He et al.'s option A shortcut: take every `stride`-th pixel and zero-pad the channels up to `filters`."""

    def __init__(self, filters: int, stride: int, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.stride = stride

    def call(self, x):
        x = x[:, :: self.stride, :: self.stride, :]
        extra = self.filters - x.shape[-1]
        return ops.pad(x, [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]])

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        ceil = lambda n: None if n is None else -(-n // self.stride)  # noqa: E731
        return batch, ceil(height), ceil(width), self.filters

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "stride": self.stride}


def resnet20(cfg: ModelConfig, num_classes: int, image_shape: tuple[int, int, int]) -> keras.Model:
    return _cifar_resnet("resnet20", 3, cfg, num_classes, image_shape)


def resnet56(cfg: ModelConfig, num_classes: int, image_shape: tuple[int, int, int]) -> keras.Model:
    return _cifar_resnet("resnet56", 9, cfg, num_classes, image_shape)


def resnet110(cfg: ModelConfig, num_classes: int, image_shape: tuple[int, int, int]) -> keras.Model:
    return _cifar_resnet("resnet110", 18, cfg, num_classes, image_shape)


def resnet18(cfg: ModelConfig, num_classes: int, image_shape: tuple[int, int, int]) -> keras.Model:
    reg = l2_regularizer(cfg)
    inputs = keras.Input(image_shape, name="images")
    x = _conv_bn(inputs, 64, 3, 1, reg, "stem")
    x = layers.ReLU(name="stem_relu")(x)
    for stage, (filters, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), start=1):
        for block in range(1, 3):
            x = _basic_block(x, filters, stride if block == 1 else 1, "projection", reg, f"stage{stage}_block{block}")
    return _classifier_head(inputs, x, num_classes, reg, "resnet18")


def _cifar_resnet(
    name: str, blocks_per_stage: int, cfg: ModelConfig, num_classes: int, image_shape: tuple[int, int, int]
) -> keras.Model:
    reg = l2_regularizer(cfg)
    inputs = keras.Input(image_shape, name="images")
    x = _conv_bn(inputs, 16, 3, 1, reg, "stem")
    x = layers.ReLU(name="stem_relu")(x)
    for stage, (filters, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
        for block in range(1, blocks_per_stage + 1):
            x = _basic_block(x, filters, stride if block == 1 else 1, "zero_pad", reg, f"stage{stage}_block{block}")
    return _classifier_head(inputs, x, num_classes, reg, name)


def _basic_block(x, filters: int, stride: int, shortcut_type: str, reg, name: str):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        if shortcut_type == "zero_pad":
            shortcut = ZeroPadShortcut(filters, stride, name=f"{name}_shortcut")(x)
        else:
            shortcut = _conv_bn(x, filters, 1, stride, reg, f"{name}_shortcut")
    y = _conv_bn(x, filters, 3, stride, reg, f"{name}_1")
    y = layers.ReLU(name=f"{name}_1_relu")(y)
    y = _conv_bn(y, filters, 3, 1, reg, f"{name}_2")
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def _conv_bn(x, filters: int, kernel: int, stride: int, reg, name: str):
    # no conv bias: the BN right after it has its own shift
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                      kernel_initializer="he_normal", kernel_regularizer=reg, name=f"{name}_conv")(x)
    return layers.BatchNormalization(name=f"{name}_bn")(x)


def _classifier_head(inputs, x, num_classes: int, reg, name: str) -> keras.Model:
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    x = layers.Dense(num_classes, kernel_regularizer=reg, name="classifier")(x)
    return keras.Model(inputs, float32_logits(x), name=name)
