"""job/gradcam.py tested for meaning: on a model trained until it has learned where the class evidence is, the
heat map peaks there."""
import keras
import numpy as np
import pytest

from job import data as datalib
from job.gradcam import gradcam
from job.models.assembly import PREPROCESS_LAYER
from tests.unit.test_gradcam import model_for

PATCH = 8


def patch_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise everywhere; for class 1 a bright 8x8 patch somewhere in the top-left quadrant, the only evidence of the
    class. Returns images, labels and each patch's top-left corner (drawn for class 0 too, unused)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 110, size=(n, 32, 32, 3)).astype(np.uint8)
    labels = np.arange(n) % 2
    corners = rng.integers(0, 16 - PATCH + 1, size=(n, 2))
    for image, label, (row, col) in zip(images, labels, corners):
        if label == 1:
            image[row:row + PATCH, col:col + PATCH] = 255
    return images, labels, corners


@pytest.mark.slow
@pytest.mark.timeout(600)  # trains a model
@pytest.mark.parametrize("name", ["simple_cnn", "resnet20"])
def test_heat_map_peaks_where_the_class_evidence_is(name):
    keras.utils.set_random_seed(0)
    x, y, _ = patch_images(1024, seed=1)
    model = model_for(name, 2)
    model.get_layer(PREPROCESS_LAYER).set_stats(datalib.fit_preprocessing(x, "standardize"))
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x.astype(np.float32), y, batch_size=32, epochs=5, verbose=0)  # 160 steps

    images, labels, corners = patch_images(64, seed=2)
    logits = model.predict(images.astype(np.float32), verbose=0)
    assert (logits.argmax(axis=1) == labels).mean() >= 0.95  # it learned the task, so its evidence is the patch

    heatmaps = gradcam(model, images)  # of the predicted class
    assert heatmaps.shape == (64, 32, 32) and heatmaps.dtype == np.float32
    assert heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0
    maps, corners = heatmaps[labels == 1], corners[labels == 1]
    assert np.allclose(maps.max(axis=(1, 2)), 1.0)  # a map on every class-1 image, not zeros
    peaks = np.array([np.unravel_index(h.argmax(), h.shape) for h in maps])
    in_quadrant = (peaks < 16).all(axis=1)
    assert in_quadrant.mean() >= 0.9, (in_quadrant.mean(), peaks[~in_quadrant])
    on_patch = np.zeros_like(maps, bool)
    for mask, (row, col) in zip(on_patch, corners):
        mask[row:row + PATCH, col:col + PATCH] = True
    assert maps[on_patch].mean() > 3 * maps[~on_patch].mean()  # bright on the patch, dim off it
