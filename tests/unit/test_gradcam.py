"""job/gradcam.py: one Grad-CAM for every family, nested ImageNet backbones included (the map of a trained model,
tested for meaning: tests/integration/test_gradcam_training.py)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from job import config as configlib
from job.gradcam import NoFeatureMapError, feature_layer, gradcam
from job.models.assembly import NETWORK_LAYER, PREPROCESS_LAYER, build_full_model
from job.models.transfer import BACKBONE_LAYER
from job.overlay import overlay


def model_for(name: str, num_classes: int, *overrides: str) -> keras.Model:
    cfg = configlib.load_config("cifar10_resnet20", [f"model.name={name}", *overrides])
    return build_full_model(cfg, num_classes, (32, 32, 3))


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
