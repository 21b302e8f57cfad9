"""airbench94's whitened stem (job/models/airbench.py, docs/configuration.md "Recipes"): on a fresh start the stem's
kernel whitens the 2x2 patches of the training images the network sees, is the same for the same seed and data, stays
frozen while training, and a resume takes it from the checkpoint without needing the data."""
from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from job.builder import build_run  # noqa: E402
from job.config import load_config  # noqa: E402
from job.loop import Loop  # noqa: E402
from job.models.airbench import WHITENING_EPS  # noqa: E402
from job.models.assembly import NETWORK_LAYER, PREPROCESS_LAYER  # noqa: E402
from job.stopping import StopRequest  # noqa: E402

pytestmark = pytest.mark.timeout(600)  # airbench94 traced on a shared CPU


def airbench_run(run_dir, splits=None):
    cfg = load_config("cifar10_airbench", [
        "data.name=digits_noisy", "data.augment.flip=false", "train.tta=off", "train.batch_size=32",
        "train.epochs=1", "train.max_steps_per_epoch=2", "data.validation_split=0", "train.deterministic=true",
        "train.bn_recalibration_batches=2", f"run.dir={run_dir}", "run.progress=false"])
    return build_run(cfg, writers=False, splits=splits)


def stem(parts):
    return parts.model.get_layer(NETWORK_LAYER).get_layer("stem")


def test_a_fresh_stem_whitens_the_training_patches_the_same_way_for_a_seed(tmp_path):
    parts = airbench_run(tmp_path / "a")
    parts.restore_or_initialize()
    kernel = stem(parts).kernel.numpy()
    assert kernel.shape == (2, 2, 3, 24)

    # The images as the network sees them, and the stem's convolution (without its bias, zero at the start) on them.
    images = np.asarray(parts.model.get_layer(PREPROCESS_LAYER)(parts.splits.x_train.astype(np.float32)))
    outputs = np.asarray(keras.ops.conv(images, kernel, padding="valid"), np.float64).reshape(-1, 24)
    moments = outputs.T @ outputs / len(outputs)
    first, second = moments[:12, :12], moments[:12, 12:]
    # Whitened: the first 12 filters' outputs are uncorrelated with unit second moment. Each diagonal entry is exactly
    # lambda / (lambda + eps) (airbench's eps 5e-4); the standardised noisy digits' patch eigenvalues are all >= 0.76,
    # so 1 - 7e-4 <= diag <= 1 (the bound below is 1.5x that); off the diagonal only float32 rounding remains (~1e-7
    # measured, 1e-5 allowed).
    np.testing.assert_allclose(np.diag(first), 1.0, atol=1.5 * WHITENING_EPS / 0.76)
    assert np.all(np.diag(first) <= 1.0 + 1e-6)
    np.testing.assert_allclose(first - np.diag(np.diag(first)), 0.0, atol=1e-5)
    # Both signs, as airbench: filter i + 12 is filter i negated, so their outputs' moments are the negatives.
    np.testing.assert_array_equal(kernel[..., 12:], -kernel[..., :12])
    np.testing.assert_allclose(second, -first, atol=1e-6)

    again = airbench_run(tmp_path / "b")
    again.restore_or_initialize()
    np.testing.assert_array_equal(stem(again).kernel.numpy(), kernel)  # a pure function of the data and seed
    for p in (parts, again):
        p.run.close(10)


def test_the_stem_kernel_stays_frozen_and_a_resume_restores_it_without_the_data(tmp_path):
    parts = airbench_run(tmp_path / "run")
    parts.restore_or_initialize()
    layer = stem(parts)
    whitened, bias = layer.kernel.numpy(), layer.bias.numpy()
    trainable = {id(v) for v in parts.model.trainable_variables}
    assert id(layer.kernel) not in trainable and id(layer.bias) in trainable  # airbench: the weight frozen
    Loop(parts, [], StopRequest()).run(restored=False)  # 2 steps, then the final save
    np.testing.assert_array_equal(layer.kernel.numpy(), whitened)
    assert not np.array_equal(layer.bias.numpy(), bias)  # the bias trains
    trained = {v.path: v.numpy() for v in parts.model.variables}
    parts.run.close(30)

    # The resume is given images the whitening would turn into another kernel (all zero): it must not look at them.
    blank = dataclasses.replace(parts.splits, x_train=np.zeros_like(parts.splits.x_train))
    resumed = airbench_run(tmp_path / "run", splits=blank)
    assert resumed.restore_or_initialize() is not None
    for variable in resumed.model.variables:
        np.testing.assert_array_equal(variable.numpy(), trained[variable.path], err_msg=variable.path)
    resumed.run.close(10)
