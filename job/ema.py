"""Weight EMA (train.ema_decay, as timm's ModelEma): an exponential moving average of the weights, kept beside them.

    averaged_0 = the initial weights;  averaged_t = decay * averaged_(t-1) + (1 - decay) * weights_t

one update per optimizer step, inside the compiled step, so
averaged_t = decay^t w_0 + (1 - decay) sum_k decay^(t-k) w_k.
The averages are variables of the checkpoint (exact resume). BatchNorm's moving statistics are not averaged: the
averaged weights get statistics of their own, recomputed for them (job/precise_bn.py) before they are validated, and
kept beside the averages. `swapped()` puts the averaged weights (and their statistics) into the model for as long as
a validation, an evaluation or an export needs them, and the trained ones back afterwards.

The variables averaged are those any phase trains (a transfer model's backbone top too): a weight that is frozen
throughout keeps its value, and so does its average.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import tensorflow as tf

from job.precise_bn import trainable_batchnorms


class WeightAverage:
    def __init__(self, model: keras.Model, weights: list, decay: float):
        """`weights`: the model's variables that training changes (its trainable variables in every phase), in a
        fixed order: the checkpoint matches them by position. Call inside the backend's scope."""
        self.decay = decay
        self.weights = list(weights)
        self.statistics = [v for layer in trainable_batchnorms(model)
                           for v in (layer.moving_mean, layer.moving_variance)]
        # Every replica computes the same update from the same weights: the first replica's is kept.
        self.averages = [self._twin(v, "average") for v in self.weights]
        self.averaged_statistics = [self._twin(v, "statistic") for v in self.statistics]
        self.trackable = tf.train.Checkpoint(weights=self.averages, statistics=self.averaged_statistics)

    @staticmethod
    def _twin(variable, kind: str) -> tf.Variable:
        return tf.Variable(tf.identity(variable.value), trainable=False, name=f"ema_{kind}",
                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def update(self) -> None:
        """One step of the average (inside the compiled training step, after the optimizer's update)."""
        for average, weight in zip(self.averages, self.weights):
            average.assign(self.decay * average + (1.0 - self.decay) * tf.cast(weight.value, average.dtype))

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Inside: the model holds the averaged weights and their BatchNorm statistics; what is written into those
        statistics meanwhile (a recalibration) stays with the averages."""
        live = self.weights + self.statistics
        kept = self.averages + self.averaged_statistics
        trained = [v.numpy() for v in live]
        for variable, average in zip(live, kept):
            variable.assign(average.numpy())
        try:
            yield
        finally:
            for average, variable in zip(self.averaged_statistics, self.statistics):
                average.assign(variable.numpy())
            for variable, value in zip(live, trained):
                variable.assign(value)

    def copy_into_model(self) -> None:
        """For inference: the model keeps the averaged weights and statistics for good."""
        for variable, average in zip(self.weights + self.statistics, self.averages + self.averaged_statistics):
            variable.assign(average.numpy())
