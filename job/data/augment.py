"""Vectorized, stateless augmentation of a whole batch of uint8 NHWC images.

Without rotation or zoom, pad + random crop and horizontal flip are two batched gathers (rows, then columns) from the
zero-padded batch: exact, and about twice as fast as a projective transform. With rotation or zoom, crop, flip,
rotation and zoom are one affine map per image, so the batch goes through a single bilinear ImageProjectiveTransformV3
call (a translation by t in [-p, p] with zero fill is exactly "zero-pad p pixels, then crop at a random offset").
Every random number comes from a stateless op keyed on the batch's `key`, so the same key gives the same images
whatever the thread scheduling or however the run was resumed.
"""
from __future__ import annotations

import math

import tensorflow as tf

from job.config import AugmentConfig


def augment_batch(images: tf.Tensor, key: tf.Tensor, cfg: AugmentConfig, part: tuple[int, int] | None = None
                  ) -> tf.Tensor:
    """uint8 (B, H, W, C) images and an int64 [2] stateless key -> augmented float32 images in [0, 255].

    `part=(offset, total)`: these B images are positions offset..offset+B-1 of a batch of `total` whose random numbers
    are drawn as a whole, so a global batch split among any number of workers (or accumulation steps) is augmented
    exactly as one worker augments it whole: what lets a run resume on another number of workers."""
    offset, total = part or (0, None)
    draw = _Draw(tf.shape(images)[0], offset, total)
    keys = tf.random.experimental.stateless_split(key, num=6)
    if cfg.rotation_degrees > 0 or cfg.zoom > 0:
        images = _affine(tf.cast(images, tf.float32), keys, cfg, draw)
    else:
        if cfg.crop_padding > 0 or cfg.flip:
            images = _crop_and_flip(images, keys, cfg, draw)
        images = tf.cast(images, tf.float32)
    if cfg.cutout > 0:
        images = _cutout(images, keys[5], cfg.cutout, draw)
    return images


class _Draw:
    """Per-image uniform random numbers for a part of a batch: drawn for the whole batch, this part sliced out."""

    def __init__(self, count, offset: int, total: int | None):
        self.count, self.offset, self.total = count, offset, total if total is not None else count

    def __call__(self, lead: list, key, minval=0, maxval=None, dtype=tf.float32) -> tf.Tensor:
        values = tf.random.stateless_uniform([*lead, self.total], key, minval, maxval, dtype=dtype)
        return values[..., self.offset:self.offset + self.count]


def _crop_and_flip(images: tf.Tensor, keys: tf.Tensor, cfg: AugmentConfig, draw: _Draw) -> tf.Tensor:
    shape = tf.shape(images)
    h, w = shape[1], shape[2]
    p = cfg.crop_padding
    padded = tf.pad(images, [[0, 0], [p, p], [p, p], [0, 0]]) if p else images
    offset = draw([2], keys[0], 0, 2 * p + 1, dtype=tf.int32)  # crop corner in padded
    cols = tf.range(w)[None, :]
    if cfg.flip:
        flip = draw([], keys[1]) < 0.5
        cols = tf.where(flip[:, None], w - 1 - cols, cols)
    rows = tf.range(h)[None, :] + offset[0][:, None]  # (B, H)
    cols = cols + offset[1][:, None]  # (B, W)
    picked_rows = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(picked_rows, cols, axis=2, batch_dims=1)


def _affine(images: tf.Tensor, keys: tf.Tensor, cfg: AugmentConfig, draw: _Draw) -> tf.Tensor:
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    # The transform maps each OUTPUT pixel (x, y) to the INPUT point it samples: in = M (out - c) + c + t.
    if cfg.rotation_degrees > 0:
        limit = cfg.rotation_degrees * math.pi / 180.0
        angle = draw([], keys[2], -limit, limit)
        cos, sin = tf.cos(angle), tf.sin(angle)
    else:
        cos, sin = tf.ones([b]), tf.zeros([b])
    inv_zoom = 1.0 / draw([], keys[3], 1.0 - cfg.zoom, 1.0 + cfg.zoom) if cfg.zoom > 0 \
        else tf.ones([b])
    flip = tf.where(draw([], keys[1]) < 0.5, -1.0, 1.0) if cfg.flip else tf.ones([b])
    # M = flip_x @ rotation(-angle) / zoom (the inverse of "rotate by angle, then zoom in")
    m00, m01 = flip * cos * inv_zoom, flip * sin * inv_zoom
    m10, m11 = -sin * inv_zoom, cos * inv_zoom
    if cfg.crop_padding > 0:
        p = cfg.crop_padding
        shift = tf.cast(draw([2], keys[0], -p, p + 1, dtype=tf.int32), tf.float32)
        tx, ty = shift[0], shift[1]
    else:
        tx = ty = tf.zeros([b])
    cx, cy = (wf - 1.0) / 2.0, (hf - 1.0) / 2.0
    zeros = tf.zeros([b])
    transforms = tf.stack(
        [m00, m01, cx - m00 * cx - m01 * cy + tx, m10, m11, cy - m10 * cx - m11 * cy + ty, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.stack([h, w]), fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")


def _cutout(images: tf.Tensor, key: tf.Tensor, size: int, draw: _Draw) -> tf.Tensor:
    """Zero a size x size square per image, centred anywhere (it may stick out of the image), as DeVries & Taylor."""
    shape = tf.shape(images)
    h, w = shape[1], shape[2]
    key_y, key_x = tf.unstack(tf.random.experimental.stateless_split(key, num=2))
    cy = draw([], key_y, 0, h, dtype=tf.int32)
    cx = draw([], key_x, 0, w, dtype=tf.int32)
    top, left = cy - size // 2, cx - size // 2
    rows, cols = tf.range(h)[None, :], tf.range(w)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)  # (B, W)
    keep = tf.cast(~(in_rows[:, :, None] & in_cols[:, None, :]), images.dtype)
    return images * keep[..., None]


def augmented_grid(images: tf.Tensor, n: int = 16) -> tf.Tensor:
    """The first n images (float [0, 255] or uint8) tiled into one (1, rows*H, cols*W, C) uint8 image."""
    images = tf.convert_to_tensor(images)[:n]
    if images.dtype != tf.uint8:
        images = tf.cast(tf.clip_by_value(tf.round(images), 0.0, 255.0), tf.uint8)
    count = int(images.shape[0])
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    pad = rows * cols - count
    h, w, c = (int(d) for d in images.shape[1:])
    if pad:
        images = tf.concat([images, tf.zeros([pad, h, w, c], tf.uint8)], axis=0)
    grid = tf.reshape(images, [rows, cols, h, w, c])
    grid = tf.transpose(grid, [0, 2, 1, 3, 4])
    return tf.reshape(grid, [1, rows * h, cols * w, c])
