"""Pieces every model family shares: the L2 regularizer from the config and the float32 logits output."""
from __future__ import annotations

from typing import TYPE_CHECKING

import keras
from keras import layers

if TYPE_CHECKING:
    from job.config import ModelConfig


def l2_regularizer(cfg: ModelConfig) -> keras.regularizers.Regularizer | None:
    """L2 on kernels as layer losses (model.losses); None when cfg.l2 is 0 so no zero-valued losses are added."""
    return keras.regularizers.L2(cfg.l2) if cfg.l2 > 0 else None


def float32_logits(x: keras.KerasTensor) -> keras.KerasTensor:
    """Cast the output to float32 so the loss stays stable under mixed precision; no softmax (the loss takes logits)."""
    return layers.Activation("linear", dtype="float32", name="logits")(x)
