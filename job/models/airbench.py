"""airbench94's network (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", arXiv 2404.00498): a 2x2
stem convolution with 24 filters and GELU, then three conv groups (3x3 conv, 2x2 max-pool, BatchNorm, GELU, 3x3 conv,
BatchNorm, GELU) of 64, 256 and 256 filters, a 3x3 max-pool, and a bias-free linear classifier scaled by 1/9.

As airbench: BatchNorm has no learned scale (Keras `scale=False`, airbench freezes its weight at 1), a small epsilon
and momentum 0.6 in PyTorch's convention (0.4 in Keras'). The stem's kernel is set by whitening 2x2 patches of the
(normalised) training images on a fresh start (`init_whitening`, called through ModelSpec.data_init by
job/models/assembly.py) and frozen, as airbench does; its bias trains. Not ported (docs/configuration.md, "Recipes"):
airbench's freezing of the stem's bias after 3 epochs, the identity initialisation of the second conv of each group, and
the 64x learning rate of the BatchNorm biases (one optimizer, one learning rate here). About 1.97M parameters with 10
classes, of which the stem's 288 kernel weights are frozen.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import keras
import numpy as np
from keras import layers

from job.models.common import float32_logits, l2_regularizer

if TYPE_CHECKING:
    from job.config import ModelConfig

WIDTHS = (64, 256, 256)
STEM_FILTERS = 24  # 2 * 3 channels * 2x2 patch: the whitening stem's width
BN_MOMENTUM = 0.4  # PyTorch's momentum 0.6: new = 0.4 * old + 0.6 * batch
BN_EPSILON = 1e-5  # airbench's 1e-12 is below float32 resolution for small variances; Keras' minimum is 1.001e-5
SCALE = 1.0 / 9.0
STEM = "stem"
WHITENING_EPS = 5e-4  # airbench94's: added to each eigenvalue, so near-constant directions are not blown up
WHITENING_IMAGES = 5000  # airbench94 whitens with the first 5,000 training images
_PATCH = 2


def airbench94(cfg: ModelConfig, num_classes: int, image_shape: tuple = (32, 32, 3)) -> keras.Model:
    reg = l2_regularizer(cfg)
    inputs = keras.Input(image_shape)
    # frozen (set from the data, not learned), so no weight decay on it either
    stem = layers.Conv2D(STEM_FILTERS, _PATCH, padding="valid", name=STEM)
    x = layers.Activation("gelu")(stem(inputs))
    stem.kernel.trainable = False
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


def init_whitening(network: keras.Model, images: np.ndarray) -> None:
    """airbench94's whitening initialisation of the stem: its kernel set to `whitening_kernel` of `images` (the
    normalised training images the network sees, float (n, H, W, C)). Call on a fresh start only: a resume restores the
    kernel from the checkpoint."""
    stem = network.get_layer(STEM)
    stem.kernel.assign(whitening_kernel(images, stem.kernel.shape[-1]).astype(stem.kernel.dtype))


def whitening_kernel(images: np.ndarray, filters: int = STEM_FILTERS, eps: float = WHITENING_EPS) -> np.ndarray:
    """A (2, 2, C, 2 * 4C) Conv2D kernel whose first 4C filters are the eigenvectors of the second-moment matrix of
    all 2x2 patches of `images`, each divided by sqrt(its eigenvalue + eps), and whose last 4C are their negatives
    (airbench's both signs, so a GELU after it keeps each direction's information). The outputs of the first 4C
    filters on these patches then have the second-moment matrix diag(lambda / (lambda + eps)): identity but for the
    directions whose eigenvalue is not well above eps. As airbench, the moments are not centred (its images are
    normalised to mean 0 per channel)."""
    channels = images.shape[-1]
    dim = _PATCH * _PATCH * channels
    if filters != 2 * dim:
        raise ValueError(f"a whitening stem of {channels}-channel 2x2 patches has {2 * dim} filters, not {filters}")
    moments, count = np.zeros((dim, dim)), 0
    for start in range(0, len(images), 500):  # 500 images of 32x32 at a time: ~46 MB of float64 patches
        flat = patches(images[start:start + 500]).astype(np.float64)
        moments += flat.T @ flat
        count += len(flat)
    eigenvalues, eigenvectors = np.linalg.eigh(moments / count)  # ascending; columns are the eigenvectors
    scaled = eigenvectors / np.sqrt(eigenvalues + eps)
    return np.concatenate([scaled, -scaled], axis=1).reshape(_PATCH, _PATCH, channels, filters)


def patches(images: np.ndarray) -> np.ndarray:
    """Every 2x2 patch (stride 1, no padding) of images (n, H, W, C) as rows of 4C values, in the order a Conv2D
    kernel (kh, kw, c) flattens to, so `patches(x) @ kernel.reshape(4C, -1)` is the convolution's output."""
    _, height, width, channels = images.shape
    rows, cols = height - _PATCH + 1, width - _PATCH + 1
    views = [images[:, a:a + rows, b:b + cols] for a in range(_PATCH) for b in range(_PATCH)]
    return np.stack(views, axis=-2).reshape(-1, _PATCH * _PATCH * channels)
