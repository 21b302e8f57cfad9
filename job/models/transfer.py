"""ImageNet backbones from keras.applications with a new classifier head, for transfer learning.

The model takes raw pixels in [0, 255]: it resizes them to the backbone's input size and applies the backbone's own
`preprocess_input` inside the graph, so the trainer feeds these models like any other.

Training has two phases (set_transfer_phase): 1 = backbone frozen (feature extraction), 2 = the top layers of the
backbone trainable (fine-tuning). BatchNorm layers of the backbone stay frozen, and the backbone is called with
training=False, so they keep using their ImageNet statistics in both phases.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import keras
from keras import layers

from job.errors import ConfigError, UserError, first_line
from job.models.common import float32_logits, l2_regularizer

if TYPE_CHECKING:
    from job.config import ModelConfig

BACKBONE_LAYER = "backbone"
DEFAULT_INPUT_SIZE = 224  # the ImageNet training resolution of both backbones
MIN_INPUT_SIZE = 32  # keras.applications refuses smaller inputs for these backbones


@dataclass(frozen=True)
class Backbone:
    constructor: Callable[..., keras.Model]
    preprocess: Callable
    weights_file: str  # keras' own cache name for the no-top ImageNet weights
    weights_url: str
    weights_md5: str


_KERAS_APPS = "https://storage.googleapis.com/tensorflow/keras-applications"
# File names, URLs and MD5s are the ones keras.applications itself downloads (keras/src/applications/*.py).
BACKBONES = {
    "vgg16": Backbone(
        keras.applications.VGG16,
        keras.applications.vgg16.preprocess_input,
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        f"{_KERAS_APPS}/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "6d6bbae143d832006294945121d1f1fc",
    ),
    "resnet50": Backbone(
        keras.applications.ResNet50,
        keras.applications.resnet50.preprocess_input,
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        f"{_KERAS_APPS}/resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "4d473c1dd8becc155b73f8504c6f6626",
    ),
}


@keras.saving.register_keras_serializable(package="job")
class ImagenetPreprocess(layers.Layer):
    """The named backbone's keras.applications preprocess_input as a layer, so saved models carry it."""

    def __init__(self, backbone: str, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone

    def call(self, x):
        return BACKBONES[self.backbone].preprocess(x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone}


def vgg16_imagenet(cfg: ModelConfig, num_classes: int, image_shape: tuple[int, int, int]) -> keras.Model:
    return _transfer_model("vgg16", cfg, num_classes, image_shape)


def resnet50_imagenet(cfg: ModelConfig, num_classes: int, image_shape: tuple[int, int, int]) -> keras.Model:
    return _transfer_model("resnet50", cfg, num_classes, image_shape)


def set_transfer_phase(model: keras.Model, phase: int, unfreeze_top: int) -> None:
    """Phase 1: backbone frozen. Phase 2: the last `unfreeze_top` layers of backbone.layers trainable (counted like
    the Keras fine-tuning guide, weightless layers included; 0 = the whole backbone), BatchNorm layers still frozen.
    The head is trainable in both phases. Re-trace any tf.function train step afterwards."""
    backbone = model.get_layer(BACKBONE_LAYER)
    if phase == 1:
        backbone.trainable = False
        return
    if phase != 2:
        raise ValueError(f"transfer phase must be 1 or 2, got {phase}")
    if unfreeze_top < 0:
        raise ConfigError(f"model.unfreeze_top must be >= 0, got {unfreeze_top}")
    backbone.trainable = True  # sets every sublayer; then freeze all below the top
    first_trainable = len(backbone.layers) - unfreeze_top if unfreeze_top else 0
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= first_trainable and not isinstance(layer, layers.BatchNormalization)


def _transfer_model(name: str, cfg: ModelConfig, num_classes: int, image_shape: tuple[int, int, int]) -> keras.Model:
    spec = BACKBONES[name]
    size = cfg.input_size or DEFAULT_INPUT_SIZE
    if size < MIN_INPUT_SIZE:
        raise ConfigError(f"model.input_size={size} is too small for {name}; use at least {MIN_INPUT_SIZE} (0 = 224)")
    backbone = spec.constructor(include_top=False, weights=None, input_shape=(size, size, 3), name=BACKBONE_LAYER)
    _load_backbone_weights(backbone, name, cfg.weights)
    backbone.trainable = False  # phase 1 until set_transfer_phase says otherwise

    inputs = keras.Input(image_shape, name="images")
    x = inputs
    if image_shape[-1] == 1:  # grayscale data: the backbone wants RGB
        x = layers.Concatenate(name="gray_to_rgb")([x, x, x])
    if tuple(image_shape[:2]) != (size, size):
        x = layers.Resizing(size, size, name="resize")(x)
    x = ImagenetPreprocess(name, name="preprocess")(x)
    x = backbone(x, training=False)  # BN in inference mode even when fine-tuning
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    x = layers.Dropout(cfg.dropout, name="head_dropout")(x)
    x = layers.Dense(num_classes, kernel_regularizer=l2_regularizer(cfg), name="classifier")(x)
    return keras.Model(inputs, float32_logits(x), name=f"{name}_imagenet")


def _load_backbone_weights(backbone: keras.Model, name: str, weights: str) -> None:
    if weights.lower() in ("none", ""):
        return
    path = _download_imagenet_weights(name) if weights.lower() == "imagenet" else weights
    if not os.path.isfile(path):
        raise UserError(
            f"model.weights={weights} does not exist; give the path of a Keras {name} no-top weights file "
            f"(e.g. {BACKBONES[name].weights_file}), 'imagenet' or 'none'"
        )
    try:
        backbone.load_weights(path)
    except Exception as e:  # noqa: BLE001 - h5py/keras raise many types for a file that is not the right weights file
        raise UserError(
            f"could not load {name} backbone weights from {path} ({first_line(e)}); it must be a Keras {name} "
            f"no-top weights file such as {BACKBONES[name].weights_file}"
        ) from None


def _download_imagenet_weights(name: str) -> str:
    """keras' own download and cache ($KERAS_HOME or ~/.keras, under models/); a clear error without internet."""
    spec = BACKBONES[name]
    cache_dir = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    models_dir = os.path.join(cache_dir, "models")
    try:
        return keras.utils.get_file(
            spec.weights_file, spec.weights_url, cache_dir=cache_dir, cache_subdir="models", file_hash=spec.weights_md5
        )
    except Exception as e:  # noqa: BLE001 - URL errors, timeouts, hash mismatches: all fixed the same way
        raise UserError(
            f"could not download the ImageNet weights for {name} ({first_line(e)}); place {spec.weights_file} "
            f"(from {spec.weights_url}) in {models_dir}/, or set model.weights=PATH to a copy of it"
        ) from None
