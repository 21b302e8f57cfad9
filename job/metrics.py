"""The metrics of a run, defined once.

A step (training or validation) returns SUMS over its examples; rates are derived from sums added up over any number
of steps, replicas and workers, so every consumer (the train step, validation, progress, TensorBoard, the choice of the
best checkpoint, early stopping and the final evaluation) computes loss, top-1 and top-5 the same way.
"""
from __future__ import annotations

import tensorflow as tf

SUM_KEYS = ("loss_sum", "correct1", "correct5", "count")
BEST_METRIC = "val_top1"  # what "best" means: the best checkpoint, early stopping, and a tuner's objective
AVERAGED_PREFIX = "ema_"  # the averaged weights' validation figures (job/ema.py): ema_val_loss, ema_val_top1, ...


def best_metric(cfg) -> str:
    """The figure "best" is judged by in a run of `cfg`: the averaged weights' validation top-1 when it keeps them
    (they are what is exported and served), else the trained weights'."""
    return AVERAGED_PREFIX + BEST_METRIC if cfg.train.ema_decay else BEST_METRIC


def batch_sums(logits: tf.Tensor, labels: tf.Tensor, per_example_loss: tf.Tensor) -> dict[str, tf.Tensor]:
    """The sums of one batch, as float32 tensors keyed by SUM_KEYS. Top-k counts a label tied with the k-th logit as
    a hit (tf.math.in_top_k)."""
    labels = tf.cast(labels, tf.int32)
    logits = tf.cast(logits, tf.float32)  # what in_top_k takes; the training step's logits already are
    k5 = min(5, logits.shape[-1])
    return {
        "loss_sum": tf.reduce_sum(per_example_loss),
        "correct1": tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, 1), tf.float32)),
        "correct5": tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, k5), tf.float32)),
        "count": tf.cast(tf.shape(labels)[0], tf.float32),
    }


def rates(sums: dict[str, float]) -> dict[str, float]:
    """Mean loss, top-1 and top-5 of summed counts."""
    count = max(sums["count"], 1.0)
    return {"loss": sums["loss_sum"] / count, "top1": sums["correct1"] / count, "top5": sums["correct5"] / count}


def interval_stats(sums: dict[str, float], elapsed: float, steps: int) -> dict[str, float]:
    """Rates of a stretch of training steps, with its throughput and the mean time per step."""
    return {**rates(sums), "images_per_second": sums["count"] / max(elapsed, 1e-9),
            "step_seconds": elapsed / max(steps, 1)}


def validation_metrics(sums: dict[str, float]) -> dict[str, float]:
    """The figures stored in a commit object and compared for the best checkpoint (val_loss, val_top1, val_top5)."""
    return {f"val_{k}": v for k, v in rates(sums).items()}


def zero_sums() -> dict[str, float]:
    return dict.fromkeys(SUM_KEYS, 0.0)
