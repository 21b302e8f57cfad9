"""Mixup and CutMix of a global batch, after augmentation, as timm's `Mixup` in batch mode (its parameters:
`mixup_alpha`, `cutmix_alpha`, `prob`, `switch_prob`; `correct_lam` on, no `cutmix_minmax`).

One lambda (and one CutMix box) per GLOBAL batch: example p of the global batch is mixed with example G-1-p (timm's
`x.flip(0)`), with image  lam*x_p + (1-lam)*x_{G-1-p}  (mixup) or x_p with the box pasted from x_{G-1-p} (CutMix,
lam then being 1 - the box's share of the image, clipped box included), and soft label
lam*onehot(y_p) + (1-lam)*onehot(y_{G-1-p}). Every random number is drawn from the batch's stateless key, so every
worker (and a resumed run) draws the same ones; a worker holding positions offset..offset+B-1 is handed its
partners' images by the pipeline (job/data/pipeline.py), so N workers make exactly the batch one worker makes.

Label smoothing (optim.label_smoothing) is applied by the loss to these soft labels: y(1-s) + s/K is linear in y, so
smoothing then mixing (timm's mixup_target) and mixing then smoothing give the same target.
"""
from __future__ import annotations

import tensorflow as tf

from job.config import MixConfig


def draw_mix(key: tf.Tensor, cfg: MixConfig, height: int, width: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(lam, use_cutmix, box) of one global batch, as timm's _params_per_batch and rand_bbox draw them (from a
    stateless key instead of numpy's global state): lam float32 (after CutMix's area correction; 1.0 when the batch
    is not mixed), use_cutmix bool, box int32 [top, bottom, left, right) (all 0 unless CutMix)."""
    keys = tf.random.experimental.stateless_split(key, num=6)
    mixed = tf.random.stateless_uniform([], keys[0]) < cfg.prob
    if cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0:
        use_cutmix = tf.random.stateless_uniform([], keys[1]) < cfg.switch_prob
    else:
        use_cutmix = tf.constant(cfg.cutmix_alpha > 0)
    alpha = tf.where(use_cutmix, cfg.cutmix_alpha, cfg.mixup_alpha)
    lam = _beta(keys[2], alpha)
    use_cutmix = mixed & use_cutmix
    # rand_bbox: a box of sides int(H*sqrt(1-lam)), int(W*sqrt(1-lam)) centred uniformly in the image, clipped
    ratio = tf.sqrt(1.0 - lam)
    cut_h = tf.cast(tf.cast(height, tf.float32) * ratio, tf.int32)
    cut_w = tf.cast(tf.cast(width, tf.float32) * ratio, tf.int32)
    cy = tf.random.stateless_uniform([], keys[3], 0, height, dtype=tf.int32)
    cx = tf.random.stateless_uniform([], keys[4], 0, width, dtype=tf.int32)
    top, bottom = tf.clip_by_value(cy - cut_h // 2, 0, height), tf.clip_by_value(cy + cut_h // 2, 0, height)
    left, right = tf.clip_by_value(cx - cut_w // 2, 0, width), tf.clip_by_value(cx + cut_w // 2, 0, width)
    box = tf.where(use_cutmix, tf.stack([top, bottom, left, right]), tf.zeros([4], tf.int32))
    area = tf.cast((box[1] - box[0]) * (box[3] - box[2]), tf.float32)
    cut_lam = 1.0 - area / float(height * width)  # timm's correct_lam: the label follows the pasted area
    lam = tf.where(mixed, tf.where(use_cutmix, cut_lam, lam), 1.0)
    return lam, use_cutmix, box


def mix_batch(images: tf.Tensor, labels: tf.Tensor, partner_images: tf.Tensor, partner_labels: tf.Tensor,
              key: tf.Tensor, cfg: MixConfig, num_classes: int) -> tuple[tf.Tensor, tf.Tensor]:
    """float32 images (B, H, W, C) and int labels (B,), each with its partner's -> mixed images and float32 soft
    labels (B, num_classes)."""
    shape = tf.shape(images)
    lam, use_cutmix, box = draw_mix(key, cfg, images.shape[1] or shape[1], images.shape[2] or shape[2])
    rows, cols = tf.range(shape[1]), tf.range(shape[2])
    in_rows = (rows >= box[0]) & (rows < box[1])
    in_cols = (cols >= box[2]) & (cols < box[3])
    pasted = tf.cast(in_rows[:, None] & in_cols[None, :], images.dtype)[None, :, :, None]
    cut = images * (1.0 - pasted) + partner_images * pasted
    blended = lam * images + (1.0 - lam) * partner_images
    mixed_images = tf.where(use_cutmix, cut, blended)
    soft = lam * tf.one_hot(labels, num_classes) + (1.0 - lam) * tf.one_hot(partner_labels, num_classes)
    return mixed_images, soft


def _beta(key: tf.Tensor, alpha: tf.Tensor) -> tf.Tensor:
    """One Beta(alpha, alpha) draw as G1 / (G1 + G2) of two stateless Gamma(alpha) draws (1.0 when alpha is 0)."""
    safe = tf.maximum(alpha, 1e-6)
    g = tf.random.stateless_gamma([2], key, alpha=safe)
    return tf.where(alpha > 0, g[0] / (g[0] + g[1]), 1.0)


def dominant_labels(labels: tf.Tensor) -> tf.Tensor:
    """int32 labels of a batch: themselves, or a soft batch's largest weight (mixing: the label with lam >= 0.5;
    a tie goes to the lower class id). What the train top-1 and top-5 are counted against."""
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 2:
        return tf.argmax(labels, axis=-1, output_type=tf.int32)
    return tf.cast(labels, tf.int32)
