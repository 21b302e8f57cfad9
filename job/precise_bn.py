"""BatchNorm statistics recomputed from training batches ("precise BN", as pycls and Detectron2 do it).

A BatchNorm layer normalises with batch statistics while training and with its moving averages (momentum 0.99 in
Keras) at inference. After a few dozen steps those averages still remember the first, untrained activations, so a
short run validates near chance although its weights have learned. Before each validation (and so before the epoch's
checkpoint, the final evaluation, the report and the exports, which all use the weights validated last) this module
replaces them with the statistics of the current weights:

- K global training batches (train.bn_recalibration_batches), their examples drawn as a pure function of
  (train.seed, epoch), without augmentation, the same on any number of workers (each takes its slice of every batch);
- one pass of the model with every trainable BatchNorm layer normalising with its batch's statistics (the layers
  before it in training mode, as pycls does) and everything else in inference mode (dropout off, no RNG consumed).
  The batch statistics are those of the GLOBAL batch, summed over replicas and workers while the pass runs
  (synchronised BatchNorm), so a layer's input, and so its statistics, do not depend on how many devices share a batch;
- for each layer, the mean and the biased variance of its input per channel over ALL examples of the K batches: the
  sums of x and x^2 and the counts are summed over replicas and workers, then mean = sum/n, var = sum(x^2)/n - mean^2
  (in float64), not the mean of per-batch variances.

The result is written into the layers' moving mean and variance: that is where inference reads them, so the epoch's
checkpoint holds what was validated, best-checkpoint selection compares what it stores, and a resumed run continues
from the same values as an uninterrupted one (training only ever updates the moving averages, never reads them).
Frozen layers (the transfer backbones' BatchNorm, frozen in both phases) are left alone.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf

log = logging.getLogger("job")


def trainable_batchnorms(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer inside `model` that is trained (frozen ones keep their statistics)."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]


@contextlib.contextmanager
def _global_batch_statistics(layers: list, backend, sums: list) -> Iterator[None]:
    """Inside: each layer normalises with its global batch's statistics (summed over every replica with
    backend.sum_in_step) whatever the model is called with, and appends this replica's per-channel (sum of x, sum of
    x^2, count) of its input to sums[i], in float64. The moving statistics are not touched."""
    originals = [layer.call for layer in layers]

    def synchronised(i: int, layer):
        def call(inputs, training=None, mask=None):
            rank = len(inputs.shape)
            axis = layer.axis if layer.axis >= 0 else rank + layer.axis
            reduce = [a for a in range(rank) if a != axis]
            x = tf.cast(inputs, tf.float64)
            count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(inputs), reduce)), tf.float64)
            local = [tf.reduce_sum(x, reduce), tf.reduce_sum(tf.square(x), reduce), count]
            sums[i].append(local)
            total, squares, n = backend.sum_in_step(local)
            mean = total / n
            variance = tf.maximum(squares / n - tf.square(mean), 0.0)  # biased, as BatchNormalization's own
            shape = [1] * rank
            shape[axis] = -1
            y = (x - tf.reshape(mean, shape)) * tf.math.rsqrt(tf.reshape(variance, shape) + layer.epsilon)
            if layer.scale:
                y *= tf.reshape(tf.cast(layer.gamma, tf.float64), shape)
            if layer.center:
                y += tf.reshape(tf.cast(layer.beta, tf.float64), shape)
            return tf.cast(y, inputs.dtype)
        return call

    for i, layer in enumerate(layers):
        layer.call = synchronised(i, layer)
    try:
        yield
    finally:
        for layer, original in zip(layers, originals):
            layer.call = original


def recalibrate(model: keras.Model, backend, dataset) -> int:
    """Recompute the moving statistics of `model`'s trainable BatchNorm layers from `dataset` (this worker's part of
    each calibration batch, as backend.distribute_dataset makes it; every worker must call this). Returns the number of
    layers recalibrated (0: the model has none, nothing is run)."""
    layers = trainable_batchnorms(model)
    if not layers:
        return 0

    def replica_fn(batch):
        images, _ = batch
        sums: list[list] = [[] for _ in layers]
        with _global_batch_statistics(layers, backend, sums):
            model(images, training=False)
        out = {}
        for i, ((total, squares, count),) in enumerate(sums):  # each layer is called once per forward pass
            out[f"{i}/sum"], out[f"{i}/squares"], out[f"{i}/count"] = total, squares, count
        return out

    step = tf.function(lambda batch: backend.run_step(replica_fn, batch))
    totals: dict[str, np.ndarray] = {}
    for batch in dataset:
        for key, value in step(batch).items():
            totals[key] = totals.get(key, 0.0) + np.asarray(value, np.float64)
    for i, layer in enumerate(layers):
        n = totals[f"{i}/count"]
        mean = totals[f"{i}/sum"] / n
        variance = np.maximum(totals[f"{i}/squares"] / n - np.square(mean), 0.0)
        layer.moving_mean.assign(mean.astype(layer.moving_mean.dtype))
        layer.moving_variance.assign(variance.astype(layer.moving_variance.dtype))
    return len(layers)


def population_statistics(activations: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel mean and biased variance over every example of `activations` (batches of NHWC or NC arrays):
    what recalibrate computes, directly, for tests and documentation."""
    x = np.concatenate([np.asarray(a, np.float64).reshape(-1, a.shape[-1]) for a in activations])
    return x.mean(axis=0), x.var(axis=0)
