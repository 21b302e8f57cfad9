"""Test-time augmentation (TTA): the model's logits averaged over fixed views of each image, as airbench does.

- off: the model on the image.
- flip: the mean of the LOGITS on the image and on its mirror image (left-right).
- flip-translate: half the flip mean on the image, plus half the mean of the flip means on two copies translated
  diagonally by -2 and +2 pixels with zero padding (the padding training's random crop uses). airbench translates
  by 1 pixel with reflection padding; 2 pixels with zeros matches this trainer's crop augmentation (data.augment
  .crop_padding, default 4).

Logits, not probabilities, are averaged (airbench's rule); the probabilities shown are the softmax of the mean. The
views go through the model as one batch (2x or 6x the images), so a view's logits are the model's on it in inference
mode. Exports stay TTA-free: TTA is applied around the model by evaluate, report, predict and serve.
"""
from __future__ import annotations

from collections.abc import Callable

MODES = ("off", "flip", "flip-translate")
VIEWS = {"off": 1, "flip": 2, "flip-translate": 6}  # forward passes per image: the cost
TRANSLATE_PIXELS = 2


def tta_logits(forward: Callable, images, mode: str):
    """`forward(images) -> logits` under TTA `mode`; images float (n, H, W, C) in [0, 255]. Works in a tf.function."""
    if mode not in MODES:
        raise ValueError(f"unknown TTA mode {mode!r}; use one of {', '.join(MODES)}")
    if mode == "off":
        return forward(images)
    if mode == "flip":
        return _mirror_mean(forward, images)
    return translate_mean(lambda views: _mirror_mean(forward, views), images)


def translate_mean(view_logits: Callable, images):
    """Half of `view_logits` on the images, plus a quarter each on copies translated diagonally by -p and +p pixels
    with zero padding (p = TRANSLATE_PIXELS), the three views in one call. flip-translate's `view_logits` is the flip
    mean; the bench's translate-only TTA (bench/recipe.py) passes the model itself."""
    import tensorflow as tf

    p = TRANSLATE_PIXELS
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    padded = tf.pad(images, [[0, 0], [p, p], [p, p], [0, 0]])
    up_left = padded[:, 2 * p:2 * p + height, 2 * p:2 * p + width]  # content moved by -p, -p
    down_right = padded[:, :height, :width]  # content moved by +p, +p
    n = tf.shape(images)[0]
    means = view_logits(tf.concat([images, up_left, down_right], axis=0))
    return 0.5 * means[:n] + 0.25 * (means[n:2 * n] + means[2 * n:])


def _mirror_mean(forward: Callable, images):
    import tensorflow as tf

    n = tf.shape(images)[0]
    both = forward(tf.concat([images, tf.reverse(images, axis=[2])], axis=0))
    return 0.5 * (both[:n] + both[n:])


def describe(mode: str) -> str:
    return {"off": "no TTA", "flip": "flip TTA (2 views)",
            "flip-translate": f"flip + translate ±{TRANSLATE_PIXELS} px TTA (6 views)"}[mode]
