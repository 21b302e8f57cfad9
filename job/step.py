"""The compiled training and validation steps. Both return the sums of job.metrics; the training step also applies
the gradient and carries the stop votes of job.stopping through the same all-reduce."""
from __future__ import annotations

import keras
import tensorflow as tf

from job.builder import RunParts
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

    def replica_step(batch, stop_votes):
        images, labels = batch
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), tf.float32)
            per_example = keras.losses.categorical_crossentropy(
                tf.one_hot(labels, num_classes), logits, from_logits=True, label_smoothing=smoothing)
            loss = tf.reduce_sum(per_example) / global_batch
            if model.losses:  # L2 kernel regularizers (ELU recipe): once per step, split over the replicas
                loss += tf.add_n([tf.cast(term, tf.float32) for term in model.losses]) / backend.num_replicas
            scaled = optimizer.scale_loss(loss)
        grads = backend.reduce_gradients(tape.gradient(scaled, variables))
        if clip > 0:
            # Gradients are still multiplied by the loss scale here, so the threshold is too.
            norm = backend.global_norm(grads)
            factor = tf.minimum(1.0, clip * optimizer.scale_loss(1.0) / (norm + 1e-12))
            grads = [g * factor for g in grads]
        optimizer.apply(grads, variables)
        # The votes are summed over all replicas with the metrics, so every worker sees every worker's request.
        # (identity: a per-replica value; the captured tensor itself cannot be reduced by MirroredStrategy.)
        return {**batch_sums(logits, labels, per_example), "stop_votes": tf.identity(stop_votes)}

    def step(batch, stop_votes):
        out = backend.run_step(lambda replica_batch: replica_step(replica_batch, stop_votes), batch)
        for key in SUM_KEYS:
            sums[key].assign_add(tf.cast(out[key], tf.float64))
        parts.state.step.assign_add(1)
        return out["stop_votes"]

    return tf.function(step, jit_compile=cfg.train.jit_compile or None, reduce_retracing=True)


@tf.function(reduce_retracing=True)
def eval_step(model: keras.Model, images: tf.Tensor, labels: tf.Tensor) -> dict[str, tf.Tensor]:
    logits = tf.cast(model(images, training=False), tf.float32)
    labels = tf.cast(labels, tf.int32)
    per_example = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    return batch_sums(logits, labels, per_example)
