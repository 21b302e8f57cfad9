"""Test-time augmentation (job/tta.py; docs/configuration.md "Recipes"): flip TTA is the mean of the model's logits on
the images and on their mirror images, flip-translate adds the +-2 px translations (a run evaluated with it:
tests/integration/test_tta_runs.py)."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from job.config import ModelConfig  # noqa: E402
from job.evaluate import predict_logits  # noqa: E402
from job.inference import Classifier, ModelInfo  # noqa: E402
from job.models import build_model  # noqa: E402


@pytest.fixture(scope="module")
def model_and_images():
    """A ResNet-20 (BatchNorm in inference mode) with its moving statistics moved off their initial values, so a
    wrong mode of BatchNorm would show; random images, which no model sees as mirror-symmetric."""
    keras_model = build_model(ModelConfig(name="resnet20"), 10)
    rng = np.random.default_rng(0)
    for layer in keras_model.layers:
        if "batch_normalization" in layer.name:
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape).astype(np.float32))
    images = rng.integers(0, 256, size=(12, 32, 32, 3)).astype(np.float32)
    return keras_model, images


def logits_of(model, images: np.ndarray) -> np.ndarray:
    return model(tf.constant(images), training=False).numpy()


def shifted(images: np.ndarray, d: int) -> np.ndarray:
    """Content moved by d pixels down and right (d < 0: up and left), zeros coming in."""
    out = np.zeros_like(images)
    h, w = images.shape[1:3]
    src = slice(max(0, -d), h - max(0, d)), slice(max(0, -d), w - max(0, d))
    dst = slice(max(0, d), h - max(0, -d)), slice(max(0, d), w - max(0, -d))
    out[:, dst[0], dst[1]] = images[:, src[0], src[1]]
    return out


def test_flip_tta_is_the_mean_of_the_logits_on_the_images_and_their_mirror_images(model_and_images):
    model, images = model_and_images
    expected = (logits_of(model, images) + logits_of(model, images[:, :, ::-1])) / 2
    got = predict_logits(model, images, batch_size=5, tta="flip")  # batches of 5: a partial one too
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, predict_logits(model, images, 5), atol=1e-3)  # TTA changed something


def test_flip_translate_tta_adds_the_mirror_means_of_two_translated_copies(model_and_images):
    model, images = model_and_images

    def mirror_mean(x):
        return (logits_of(model, x) + logits_of(model, x[:, :, ::-1])) / 2

    expected = 0.5 * mirror_mean(images) + 0.25 * (mirror_mean(shifted(images, -2)) + mirror_mean(shifted(images, 2)))
    got = predict_logits(model, images, batch_size=12, tta="flip-translate")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_the_classifier_answers_with_the_softmax_of_the_averaged_logits(model_and_images):
    model, images = model_and_images
    info = ModelInfo(model="resnet20", dataset="x", classes=[str(i) for i in range(10)], image_size=32, source="-",
                     weights="-")
    expected = tf.nn.softmax((logits_of(model, images) + logits_of(model, images[:, :, ::-1])) / 2).numpy()
    np.testing.assert_allclose(Classifier(model, info, tta="flip").predict(images), expected, rtol=1e-5, atol=1e-6)
    plain = Classifier(model, info).predict(images)
    np.testing.assert_allclose(plain, tf.nn.softmax(logits_of(model, images)).numpy(), rtol=1e-5, atol=1e-6)
