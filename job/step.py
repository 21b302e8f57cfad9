"""The compiled training and validation steps. Both return the sums of job.metrics; the training step also applies
the gradient and carries the stop votes of job.stopping through the same all-reduce."""
from __future__ import annotations

import keras
import tensorflow as tf

from job.builder import RunParts
from job.data.mix import dominant_labels
from job.metrics import SUM_KEYS, batch_sums


def make_train_step(parts: RunParts, sums: dict[str, tf.Variable]):
    """`step(batch, stop_votes) -> summed stop votes`: one optimizer step on the global batch; adds the batch's sums
    to `sums` and 1 to the step counter. The trainable variables are fixed when this is made: make it again after a
    transfer model's phase change."""
    cfg, backend, model, optimizer = parts.cfg, parts.backend, parts.model, parts.optimizer
    global_batch = float(cfg.train.batch_size)
    num_classes = model.output_shape[-1]
    smoothing = cfg.optim.label_smoothing
    clip = cfg.optim.clip_norm
    variables = list(model.trainable_variables)

    accumulation = parts.batches.accumulation

    def micro_step(images, labels, with_regularizer: bool):
        """The loss's gradient on some of the global batch (scaled by the loss scale), and its sums."""
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), tf.float32)
            # int labels, or data.mix's soft labels (batch, classes); smoothing applies to either (job/data/mix.py)
            targets = labels if labels.shape.rank == 2 else tf.one_hot(labels, num_classes)
            per_example = keras.losses.categorical_crossentropy(
                targets, logits, from_logits=True, label_smoothing=smoothing)
            loss = tf.reduce_sum(per_example) / global_batch
            if model.losses and with_regularizer:  # L2 kernel regularizers (ELU recipe): once per step, split over
                regularizer = tf.add_n([tf.cast(term, tf.float32) for term in model.losses])  # the replicas
                loss += regularizer / backend.num_replicas
            scaled = optimizer.scale_loss(loss)
        return tape.gradient(scaled, variables), batch_sums(logits, dominant_labels(labels), per_example)

    def replica_step(batch, stop_votes):
        images, labels = batch
        if accumulation == 1:
            grads, sums_here = micro_step(images, labels, True)
        else:
            # Micro-batches one after the other (each waits for the previous gradient), so only one micro-batch's
            # activations are alive at a time: what lets a large per-replica batch fit a small device.
            size = tf.shape(images)[0] // accumulation
            grads, sums_here = None, None
            for i in range(accumulation):
                with tf.control_dependencies([g for g in grads if g is not None] if grads else []):
                    part = slice_micro(images, labels, i, size)
                    g, s = micro_step(*part, i == 0)
                grads = g if grads is None else [_add(a, b) for a, b in zip(grads, g)]
                sums_here = s if sums_here is None else {k: sums_here[k] + s[k] for k in s}
        grads = backend.reduce_gradients(grads)
        if clip > 0:
            # Gradients are still multiplied by the loss scale here, so the threshold is too.
            norm = backend.global_norm(grads)
            factor = tf.minimum(1.0, clip * optimizer.scale_loss(1.0) / (norm + 1e-12))
            grads = [g * factor for g in grads]
        optimizer.apply(grads, variables)
        if parts.ema is not None:
            parts.ema.update()
        # The votes are summed over all replicas with the metrics, so every worker sees every worker's request.
        # (identity: a per-replica value; the captured tensor itself cannot be reduced by MirroredStrategy.)
        return {**sums_here, "stop_votes": tf.identity(stop_votes)}

    def step(batch, stop_votes):
        out = backend.run_step(lambda replica_batch: replica_step(replica_batch, stop_votes), batch)
        for key in SUM_KEYS:
            sums[key].assign_add(tf.cast(out[key], tf.float64))
        parts.state.step.assign_add(1)
        return out["stop_votes"]

    return tf.function(step, jit_compile=cfg.train.jit_compile or None, reduce_retracing=True)


def make_multi_step(one_step):
    """`steps(iterator, count, stop_votes) -> summed stop votes`: `count` training steps in one call, each taking the
    iterator's next batch (Keras' steps_per_execution, Orbit's steps_per_loop): the host's work between steps is paid
    once per call. `one_step` stays its own function (and XLA cluster with jit_compile); the loop around it cannot be
    compiled by XLA (it reads the iterator). `count` is a tensor: one trace for every length."""

    def steps(iterator, count, stop_votes):
        votes = tf.zeros([2])
        for _ in tf.range(count):
            votes += one_step(next(iterator), stop_votes)
        return votes

    return tf.function(steps)


def _add(a, b):
    return b if a is None else a if b is None else a + b


def slice_micro(images, labels, index: int, size):
    start = index * size
    return images[start:start + size], labels[start:start + size]


@tf.function(reduce_retracing=True)
def eval_step(model: keras.Model, images: tf.Tensor, labels: tf.Tensor) -> dict[str, tf.Tensor]:
    logits = tf.cast(model(images, training=False), tf.float32)
    labels = tf.cast(labels, tf.int32)
    per_example = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    return batch_sums(logits, labels, per_example)
