"""Optimizer and learning-rate schedule from the config: LR given per 256 images, scaled by the global batch."""
from __future__ import annotations

import math

import keras
import tensorflow as tf

from job.config import Config


@keras.saving.register_keras_serializable(package="job")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup, then cosine decay, steps, constant, or linear decay to 0 (triangular: airbench's and
    DAWNBench's short schedule); the fine-tuning phase runs at `finetune_factor`."""

    def __init__(self, base_lr: float, total_steps: int, warmup_steps: int, kind: str,
                 boundaries: tuple[int, ...] = (), factor: float = 0.1,
                 finetune_start: int = 0, finetune_factor: float = 1.0):
        self.base_lr = base_lr
        self.total_steps = max(1, total_steps)
        self.warmup_steps = warmup_steps
        self.kind = kind
        self.boundaries = tuple(boundaries)
        self.factor = factor
        self.finetune_start = finetune_start
        self.finetune_factor = finetune_factor

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        lr = tf.constant(self.base_lr, tf.float32)
        if self.kind == "cosine":
            decay_steps = max(1, self.total_steps - self.warmup_steps)
            progress = tf.clip_by_value((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
            lr = lr * 0.5 * (1.0 + tf.cos(math.pi * progress))
        elif self.kind == "triangular":  # linear up over the warmup (below), then linearly down to 0 at the end
            decay_steps = max(1, self.total_steps - self.warmup_steps)
            progress = tf.clip_by_value((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
            lr = lr * (1.0 - progress)
        elif self.kind == "step":
            for boundary in self.boundaries:
                lr = tf.where(step >= boundary, lr * self.factor, lr)
        if self.warmup_steps > 0:
            lr = lr * tf.minimum(1.0, (step + 1.0) / self.warmup_steps)
        if self.finetune_start > 0:
            lr = tf.where(step >= self.finetune_start, lr * self.finetune_factor, lr)
        return lr

    def get_config(self):
        return dict(base_lr=self.base_lr, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
                    kind=self.kind, boundaries=self.boundaries, factor=self.factor,
                    finetune_start=self.finetune_start, finetune_factor=self.finetune_factor)


def make_schedule(cfg: Config, steps_per_epoch: int) -> WarmupSchedule:
    phase1_steps = cfg.train.epochs * steps_per_epoch
    finetune = cfg.train.finetune_epochs > 0
    # Cosine decays over phase 1; the fine-tuning phase then continues at a fixed fraction of the base LR.
    return WarmupSchedule(
        base_lr=cfg.optim.lr * cfg.train.batch_size / 256.0,
        total_steps=phase1_steps,
        warmup_steps=int(cfg.optim.warmup_epochs * steps_per_epoch),
        kind=cfg.optim.schedule,
        boundaries=tuple(int(e * steps_per_epoch) for e in cfg.optim.step_epochs),
        factor=cfg.optim.step_factor,
        finetune_start=phase1_steps if finetune else 0,
        finetune_factor=cfg.train.finetune_lr_factor,
    )


def make_optimizer(cfg: Config, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    schedule = make_schedule(cfg, steps_per_epoch)
    o = cfg.optim
    weight_decay = o.weight_decay or None
    if o.name == "sgd":
        # Keras applies weight_decay decoupled (w -= lr * wd * w), which for SGD equals an L2 term in the loss.
        optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=o.momentum, nesterov=o.nesterov,
                                         weight_decay=weight_decay)
    else:
        optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=o.weight_decay)
    # Norm and bias parameters are not decayed (standard practice; decaying BN gammas hurts accuracy).
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    if cfg.train.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
