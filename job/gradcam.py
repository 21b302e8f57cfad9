"""Grad-CAM (Selvaraju et al. 2017) for every model this package builds, the transfer models' nested ImageNet
backbones included.

The map is relu(sum over channels of gradient x activation) at each location of the last convolutional feature map,
the class's logit differentiated (the element-wise weighting of HiResCAM, Draelos & Carin 2020). Behind global
average pooling (ResNets, the transfer heads) the gradient is the same at every location, so this is Grad-CAM's
channel-averaged weighting exactly; behind Flatten and dense layers (simple_cnn) the averaged gradients cancel and
Grad-CAM's map came out zero everywhere on a model that had learned its task perfectly
(tests/integration/test_gradcam_training.py), while this one points at the evidence.

The textbook recipe, `keras.Model(model.inputs, [conv_layer.output, model.output])`, fails with "Graph disconnected"
when the conv layer sits inside a nested Model (the transfer models' `backbone`): its output tensor belongs to the
inner model's graph, not the outer one's. Here nothing is rebuilt: while the model runs eagerly under a gradient tape,
the feature-map layer's `call` is tapped, so its output is recorded (and watched) wherever it is nested, and the
gradient of the class logit flows back to it through the real call of every enclosing model.

    heatmaps = gradcam(model, images)          # (n, H, W) in [0, 1]; images (n, H, W, C) uint8 or float in [0, 255]
    rgb = overlay(images[0], heatmaps[0])      # (H, W, 3) uint8 (job/overlay.py)
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf

_lock = threading.Lock()  # a tap replaces a layer's call for the duration of one Grad-CAM computation
_BATCH = 64


class NoFeatureMapError(ValueError):
    """The model has no convolutional feature map (a dense-only network such as `mlp`)."""


def feature_layer(model: keras.Model) -> keras.layers.Layer:
    """The layer whose output is the model's last 4-D feature map after its first convolution, searched through
    nested models in execution order; one with a spatial size above 1 is preferred (a backbone run at a small input
    ends in 1x1 maps, where Grad-CAM can show nothing)."""
    candidates: list[tuple[keras.layers.Layer, tuple]] = []
    seen_conv = False
    for layer in _layers_in_order(model):
        seen_conv = seen_conv or isinstance(layer, keras.layers.Conv2D)
        shape = _output_shape(layer)
        if seen_conv and shape is not None and len(shape) == 4:
            candidates.append((layer, shape))
    if not candidates:
        raise NoFeatureMapError(f"{model.name} has no convolutional feature map, so Grad-CAM does not apply to it")
    spatial = [layer for layer, shape in candidates if (shape[1] or 0) > 1 or (shape[2] or 0) > 1]
    return (spatial or [layer for layer, _ in candidates])[-1]


def gradcam(model: keras.Model, images, class_indices=None, layer: keras.layers.Layer | None = None) -> np.ndarray:
    """Grad-CAM heat maps of `images` ((n, H, W, C) or one (H, W, C), raw pixels in [0, 255], uint8 or float) for
    `class_indices` (default: each image's predicted class), as float32 (n, H, W) in [0, 1], each scaled to its own
    maximum (all zeros where no location speaks for the class). `layer`: the feature map to use (feature_layer)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"images must be (n, H, W, C) or (H, W, C), got shape {images.shape}")
    layer = layer or feature_layer(model)
    if class_indices is not None:
        class_indices = np.broadcast_to(np.asarray(class_indices, np.int64), (len(images),))
    out = np.zeros(images.shape[:3], np.float32)
    with _lock, _tapped(layer) as captured:
        for start in range(0, len(images), _BATCH):
            batch = images[start:start + _BATCH]
            classes = None if class_indices is None else class_indices[start:start + _BATCH]
            out[start:start + _BATCH] = _batch_gradcam(model, batch, classes, captured)
    return out


# --------------------------------------------------------------------------------------------------- internals

def _batch_gradcam(model, batch: np.ndarray, classes, captured: list) -> np.ndarray:
    captured.clear()
    x = tf.constant(batch, tf.float32)
    with tf.GradientTape() as tape:
        captured.append(tape)  # the tap watches the feature map on this tape
        logits = tf.cast(model(x, training=False), tf.float32)
        if len(captured) < 2:
            raise RuntimeError("the feature-map layer was not called by the model")
        features = captured[1]
        chosen = tf.argmax(logits, axis=1) if classes is None else tf.constant(classes)
        score = tf.gather(logits, chosen, axis=1, batch_dims=1)
    grads = tape.gradient(score, features)
    features, grads = tf.cast(features, tf.float32), tf.cast(grads, tf.float32)
    cam = tf.nn.relu(tf.reduce_sum(grads * features, axis=-1))[..., None]  # each location's first-order share
    cam = tf.image.resize(cam, batch.shape[1:3], method="bilinear")[..., 0]
    peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
    cam = tf.math.divide_no_nan(cam, peak)
    return np.clip(cam.numpy(), 0.0, 1.0)


@contextlib.contextmanager
def _tapped(layer: keras.layers.Layer) -> Iterator[list]:
    """While inside, `layer`'s output is appended to the list yielded (after the tape put there first) and watched on
    that tape."""
    captured: list = []
    original = layer.call

    def call(*args, **kwargs):
        output = original(*args, **kwargs)
        if captured:
            captured[0].watch(output)
            captured.append(output)
        return output

    layer.call = call
    try:
        yield captured
    finally:
        del layer.call  # back to the class's method


def _layers_in_order(model: keras.Model) -> Iterator[keras.layers.Layer]:
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _layers_in_order(layer)
        else:
            yield layer


def _output_shape(layer: keras.layers.Layer) -> tuple | None:
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError):  # never called, or shared (several outputs)
        return None
