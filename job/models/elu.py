"""The CIFAR networks of Clevert, Unterthiner & Hochreiter 2015, "Fast and Accurate Deep Network Learning by
Exponential Linear Units (ELUs)", arXiv:1511.07289 (ICLR 2016).

Each network is a list of stacks; a stack is a list of (layers, filters, kernel) as the paper writes them
("layers x units x receptive field"). 2x2 max-pooling (stride 2) follows each of the first five stacks (32 -> 1) and
each stack's last layer gets that stack's dropout rate. The last stack is the 1x1 classifier conv (the paper's
"1x100x1" for CIFAR-100; here num_classes filters), averaged over what is left of the image to give logits.
No batch norm: the paper finds it does not help ELU networks.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import keras
from keras import layers

from job.models.common import float32_logits, l2_regularizer

if TYPE_CHECKING:
    from job.config import ModelConfig

Stack = list[tuple[int, int, int]]

# The 18-layer network of the paper's CIFAR-10/100 benchmark (Clevert et al. 2015): 24.28% CIFAR-100 test error.
# The paper calls it 18 layers; its stack list counts 18 hidden conv layers plus the 1x1 classifier.
ELU18_STACKS: list[Stack] = [
    [(1, 384, 3)],
    [(1, 384, 1), (1, 384, 2), (2, 640, 2)],
    [(1, 640, 1), (3, 768, 2)],
    [(1, 768, 1), (2, 896, 2)],
    [(1, 896, 3), (2, 1024, 2)],
    [(1, 1024, 1), (1, 1152, 2)],
    [(1, 1152, 1)],
]
ELU18_DROPOUT = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.0)

# The 11-layer network the paper uses to compare ELU with other activations and with batch-normalized ReLU nets on
# CIFAR-100: stacks ([1x192x5], [1x192x1, 1x240x3], [1x240x1, 1x260x2], [1x260x1, 1x280x2], [1x280x1, 1x300x2],
# [1x300x1], [1x100x1]), dropout (0, 0, 0, 0, 0, 0.1, 0) on each stack's last layer. Checked against independent
# reimplementations: the "CIFAR100-ELU" example network of the SMAUG simulator (conv0_stack0 192x5x5 ...
# conv0_stack6 100x1x1), a Torch createModel annotated 1x192x5 ... 1x100x1, and a PyTorch ELUNetwork "build11"
# (same kernels, 2x wider, its own dropout schedule).
ELU11_STACKS: list[Stack] = [
    [(1, 192, 5)],
    [(1, 192, 1), (1, 240, 3)],
    [(1, 240, 1), (1, 260, 2)],
    [(1, 260, 1), (1, 280, 2)],
    [(1, 280, 1), (1, 300, 2)],
    [(1, 300, 1)],
]
ELU11_DROPOUT = (0.0, 0.0, 0.0, 0.0, 0.0, 0.1)

POOLED_STACKS = 5


def elu18(cfg: ModelConfig, num_classes: int, image_shape: tuple[int, int, int]) -> keras.Model:
    return _elu_network("elu18", ELU18_STACKS, ELU18_DROPOUT, cfg, num_classes, image_shape)


def elu11(cfg: ModelConfig, num_classes: int, image_shape: tuple[int, int, int]) -> keras.Model:
    return _elu_network("elu11", ELU11_STACKS, ELU11_DROPOUT, cfg, num_classes, image_shape)


def _elu_network(
    name: str,
    stacks: list[Stack],
    dropout: tuple[float, ...],
    cfg: ModelConfig,
    num_classes: int,
    image_shape: tuple[int, int, int],
) -> keras.Model:
    reg = l2_regularizer(cfg)
    inputs = keras.Input(image_shape, name="images")
    x = inputs
    for s, (stack, rate) in enumerate(zip(stacks, dropout), start=1):
        conv = 0
        for repeat, filters, kernel in stack:
            for _ in range(repeat):
                conv += 1
                x = layers.Conv2D(filters, kernel, padding="same", kernel_initializer="he_normal",
                                  kernel_regularizer=reg, name=f"stack{s}_conv{conv}")(x)
                x = layers.ELU(alpha=1.0, name=f"stack{s}_elu{conv}")(x)
        if rate > 0:
            x = layers.Dropout(rate, name=f"stack{s}_dropout")(x)
        if s <= POOLED_STACKS:
            # 'same' keeps images smaller than 32x32 (e.g. 8x8 digits) from pooling down to nothing
            x = layers.MaxPooling2D(2, padding="same", name=f"stack{s}_pool")(x)
    x = layers.Conv2D(num_classes, 1, kernel_regularizer=reg, name="classifier")(x)
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)  # 1x1 after five pools of a 32x32 image
    return keras.Model(inputs, float32_logits(x), name=name)
