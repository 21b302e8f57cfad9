"""job/gradcam.py: one Grad-CAM for every family, nested ImageNet backbones included, tested for meaning."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from job import config as configlib
from job import data as datalib
from job.gradcam import NoFeatureMapError, feature_layer, gradcam
from job.models.assembly import NETWORK_LAYER, PREPROCESS_LAYER, build_full_model
from job.models.transfer import BACKBONE_LAYER
from job.overlay import overlay

PATCH = 8


def model_for(name: str, num_classes: int, *overrides: str) -> keras.Model:
    cfg = configlib.load_config("cifar10_resnet20", [f"model.name={name}", *overrides])
    return build_full_model(cfg, num_classes, (32, 32, 3))


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


@pytest.mark.parametrize("name,size,expected", [("vgg16_imagenet", 32, "block5_conv3"),
                                                ("resnet50_imagenet", 64, "conv5_block3_out")])
def test_nested_imagenet_backbone_map_equals_the_one_built_by_hand_through_the_nesting(name, size, expected):
    """The textbook recipe on the full model fails ("Graph disconnected"; Keras 3.15: "not connected"); built by hand
    through the nesting (preprocessing, the backbone as Model(inputs, [conv, output]), the head), the map is the one
    gradcam() makes."""
    model = model_for(name, 10, "model.weights=none", f"model.input_size={size}", "data.normalization=none")
    layer = feature_layer(model)
    assert layer.name == expected
    with pytest.raises(ValueError, match="[Dd]isconnected|not connected"):
        keras.Model(model.inputs, [layer.output, model.output])

    images = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3)).astype(np.uint8)
    network = model.get_layer(NETWORK_LAYER)
    backbone = network.get_layer(BACKBONE_LAYER)
    tapped = keras.Model(backbone.inputs, [layer.output, backbone.output])
    classes = np.array([0, 3, 5, 9])
    with tf.GradientTape() as tape:
        x = model.get_layer(PREPROCESS_LAYER)(tf.constant(images, tf.float32))
        for step in ("resize", "preprocess"):  # no resize layer when the input is the backbone's size
            x = network.get_layer(step)(x) if step in [each.name for each in network.layers] else x
        features, x = tapped(x, training=False)
        for step in ("global_pool", "head_dropout", "classifier", "logits"):
            x = network.get_layer(step)(x, training=False)
        score = tf.gather(x, classes, axis=1, batch_dims=1)
    grads = tape.gradient(score, features)

    def normalised(cam):
        cam = tf.image.resize(tf.nn.relu(cam)[..., None], (32, 32))[..., 0].numpy()
        peak = cam.max(axis=(1, 2), keepdims=True)
        return np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)

    heatmaps = gradcam(model, images, class_indices=classes)
    assert heatmaps.shape == (4, 32, 32)
    np.testing.assert_allclose(heatmaps, normalised(tf.reduce_sum(grads * features, axis=-1)), atol=1e-4)
    assert any(h.std() > 0.01 for h in heatmaps)  # so the equality is not between constants (random weights)
    if name == "resnet50_imagenet":  # global average pooling right after the map: Grad-CAM's weighting exactly
        textbook = tf.reduce_sum(tf.reduce_mean(grads, axis=(1, 2), keepdims=True) * features, axis=-1)
        np.testing.assert_allclose(heatmaps, normalised(textbook), atol=1e-4)


def test_layer_is_left_as_it_was_and_repeated_calls_agree():
    model = model_for("resnet20", 10)
    layer = feature_layer(model)
    assert layer.name == "stage3_block3_out" and "call" not in vars(layer)
    images = np.random.default_rng(3).integers(0, 256, size=(3, 32, 32, 3)).astype(np.uint8)
    first = gradcam(model, images)
    assert "call" not in vars(layer)  # the tap is removed
    np.testing.assert_array_equal(gradcam(model, images.astype(np.float32)), first)
    np.testing.assert_array_equal(gradcam(model, images[0])[0], first[0])  # one image without the batch axis


def test_dense_only_model_is_refused_in_one_line():
    with pytest.raises(NoFeatureMapError, match="no convolutional feature map"):
        gradcam(model_for("mlp", 10), np.zeros((1, 32, 32, 3), np.uint8))


def test_overlay_blends_the_jet_map_over_grey_or_colour_images():
    heat = np.zeros((32, 32), np.float32)
    heat[:8, :8] = 1.0
    grey = np.full((32, 32, 1), 100, np.uint8)
    out = overlay(grey, heat)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] > out[0, 0, 2]  # hot: red over blue
    assert out[31, 31, 2] > out[31, 31, 0]  # cold: blue over red
    with pytest.raises(ValueError, match="does not match"):
        overlay(np.zeros((16, 16, 3)), heat)
