"""BatchNorm recalibration (job/precise_bn.py, docs/configuration.md "Recipes"): the recomputed statistics are the
population statistics of each layer's input over the K calibration batches, which depend on seed and epoch alone;
frozen layers keep theirs (real runs, one process and two workers: tests/integration/test_precise_bn_runs.py)."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from job import data as datalib
from job.config import load_config
from job.distribute.base import Shard
from job.distribute.local import SingleDeviceBackend
from job.models.assembly import build_full_model
from job.precise_bn import population_statistics, recalibrate, trainable_batchnorms

K, BATCH, SEED, EPOCH = 3, 32, 5, 1


def digits_model(**overrides):
    cfg = load_config("digits_resnet20", [f"{k}={v}" for k, v in overrides.items()])
    splits = datalib.load_splits(cfg.data, cfg.train.seed)
    model = build_full_model(cfg, splits.num_classes, splits.x_train.shape[1:])
    model.get_layer("preprocess").set_stats(datalib.fit_preprocessing(splits.x_train, cfg.data.normalization))
    return model, splits


def calibration_batches(x: np.ndarray) -> tf.data.Dataset:
    return datalib.calibration_dataset(x, Shard(num_shards=1, index=0, batch_size=BATCH), SEED, EPOCH, K)


def layer_inputs(model, dataset) -> dict[str, list[np.ndarray]]:
    """Each trainable BatchNorm layer's input over `dataset`, captured in eager mode with the model in training mode
    (the layers before each normalising with batch statistics): the direct computation to compare with."""
    layers = trainable_batchnorms(model)
    captured: dict[str, list[np.ndarray]] = {layer.path: [] for layer in layers}
    originals = {layer.path: layer.call for layer in layers}

    def capture(layer):
        def call(inputs, training=None, mask=None):
            captured[layer.path].append(np.asarray(inputs))
            return originals[layer.path](inputs, training=training, mask=mask)
        return call

    saved = [(v, v.numpy()) for v in model.non_trainable_variables]
    for layer in layers:
        layer.call = capture(layer)
    try:
        for images, _ in dataset:
            model(images, training=True)
    finally:
        for layer in layers:
            layer.call = originals[layer.path]
        for variable, value in saved:  # training mode moved the moving averages: put them back
            variable.assign(value)
    return captured


def test_recalibrated_statistics_are_the_population_statistics_of_each_layer_input():
    keras.utils.set_random_seed(0)
    model, splits = digits_model()
    layers = trainable_batchnorms(model)
    assert len(layers) == 19  # ResNet-20: the stem and two per residual block
    captured = layer_inputs(model, calibration_batches(splits.x_train))
    assert all(len(batches) == K for batches in captured.values())

    assert recalibrate(model, SingleDeviceBackend(), calibration_batches(splits.x_train)) == len(layers)
    for layer in layers:
        mean, variance = population_statistics(captured[layer.path])
        np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-5, atol=1e-5, err_msg=layer.path)
        np.testing.assert_allclose(layer.moving_variance.numpy(), variance, rtol=1e-5, atol=1e-5, err_msg=layer.path)
    # The mean of per-batch variances is not what is computed: it misses the spread of the batch means, which here is
    # far above the tolerance, so the comparison above tells the two apart.
    last = layers[-1]
    per_batch = np.mean([population_statistics([b])[1] for b in captured[last.path]], axis=0)
    assert np.max(np.abs(per_batch - last.moving_variance.numpy())) > 1e-3


def test_the_calibration_batches_are_a_function_of_seed_and_epoch_and_the_same_on_any_number_of_workers():
    x = np.arange(200 * 2 * 2 * 3, dtype=np.uint8).reshape(200, 2, 2, 3)

    def images(shards: int, seed=SEED, epoch=EPOCH) -> np.ndarray:
        parts = [[b.numpy() for b, _ in datalib.calibration_dataset(
            x, Shard(num_shards=shards, index=i, batch_size=BATCH // shards), seed, epoch, K)] for i in range(shards)]
        return np.stack([np.concatenate([part[step] for part in parts]) for step in range(K)])

    one = images(1)
    assert one.shape == (K, BATCH, 2, 2, 3)
    np.testing.assert_array_equal(images(2), one)  # two workers' slices make the same global batches
    np.testing.assert_array_equal(images(1), one)
    assert not np.array_equal(images(1, epoch=EPOCH + 1), one)
    assert not np.array_equal(images(1, seed=SEED + 1), one)


def test_frozen_batchnorm_layers_keep_their_statistics():
    model, splits = digits_model()
    frozen = trainable_batchnorms(model)[3]
    frozen.trainable = False
    before = [frozen.moving_mean.numpy().copy(), frozen.moving_variance.numpy().copy()]
    others = trainable_batchnorms(model)
    assert frozen not in others
    others_before = [layer.moving_variance.numpy().copy() for layer in others]
    recalibrate(model, SingleDeviceBackend(), calibration_batches(splits.x_train))
    np.testing.assert_array_equal(frozen.moving_mean.numpy(), before[0])
    np.testing.assert_array_equal(frozen.moving_variance.numpy(), before[1])
    assert all(not np.array_equal(layer.moving_variance.numpy(), old) for layer, old in zip(others, others_before))


def test_a_model_without_batchnorm_is_left_alone():
    model, splits = digits_model(**{"model.name": "mlp"})
    assert recalibrate(model, SingleDeviceBackend(), calibration_batches(splits.x_train)) == 0
