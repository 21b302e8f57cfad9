"""The model zoo: a registry of model builders, one module per family.

Importing this package does not import Keras or TensorFlow (config validation reads MODELS and runs each family's
rules, ModelSpec.check); a family's module is imported when one of its models is built.

Every model takes float32 images of `image_shape` and returns float32 logits of shape (batch, num_classes).
From-scratch models expect images already normalized: the full model (job/models/assembly.py) puts the Preprocess
layer (data.normalization) in front of them. Transfer models (`transfer=True`) take raw pixels in [0, 255] and resize
and preprocess them themselves (so they need data.normalization=none).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from job.errors import ConfigError

if TYPE_CHECKING:
    import keras

    from job.config import Config, ModelConfig

Builder = Callable[["ModelConfig", int, tuple], "keras.Model"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    build: Builder  # build(cfg, num_classes, image_shape) -> keras.Model
    # Learnable parameters of the published architecture with 10 classes (transfer: the ImageNet backbone without
    # its top); None where no source gives one. tests/unit/test_models.py checks the models against these.
    published_params: int | None
    transfer: bool = False
    # Transfer models: len(backbone.layers) of the keras.applications no-top model, its input layer included (what
    # model.unfreeze_top counts; tests/unit/test_registries.py builds the backbones to check these numbers).
    backbone_layers: int = 0
    # "module:function" of an initialisation from the training data, run on a fresh start only (a resume restores the
    # weights): function(network, images) with the normalised images the network sees (job/models/assembly.py)
    data_init: str = ""

    def check(self, cfg: Config) -> None:
        """Refuse settings this family cannot honour. Config validation calls it, before TensorFlow starts."""
        (_check_transfer if self.transfer else _check_from_scratch)(self, cfg)


def _check_transfer(spec: ModelSpec, cfg: Config) -> None:
    if cfg.data.normalization != "none":
        raise ConfigError(f"{spec.name} applies its backbone's ImageNet preprocessing to raw pixels itself; set "
                          f"data.normalization=none (not {cfg.data.normalization})")
    if cfg.model.unfreeze_top > spec.backbone_layers:
        raise ConfigError(f"model.unfreeze_top must be in [0, {spec.backbone_layers}] for {spec.name} (its backbone "
                          f"has {spec.backbone_layers} layers; 0 = all of them), got {cfg.model.unfreeze_top}")


def _check_from_scratch(spec: ModelSpec, cfg: Config) -> None:
    """The transfer-only keys must keep their defaults: a value there would be silently ignored."""
    from job.config import ModelConfig, TrainConfig

    for key, value, default in (("model.weights", cfg.model.weights, ModelConfig.weights),
                                ("model.input_size", cfg.model.input_size, ModelConfig.input_size),
                                ("model.unfreeze_top", cfg.model.unfreeze_top, ModelConfig.unfreeze_top),
                                ("train.finetune_epochs", cfg.train.finetune_epochs, TrainConfig.finetune_epochs)):
        if value != default:
            transfer = ", ".join(name for name, s in MODELS.items() if s.transfer)
            raise ConfigError(f"{key}={value} only applies to transfer models ({transfer}), and {spec.name} is "
                              f"trained from scratch; remove it (default {default})")


_FAMILIES: list[str] = []  # modules of the model families, imported by load_model


def _lazy(module: str, function: str) -> Builder:
    _FAMILIES.append(f"job.models.{module}")

    def build(cfg: ModelConfig, num_classes: int, image_shape: tuple = (32, 32, 3)) -> keras.Model:
        return getattr(importlib.import_module(f"job.models.{module}"), function)(cfg, num_classes, image_shape)

    build.__name__ = build.__qualname__ = function
    return build


_SPECS = [
    ModelSpec(
        "simple_cnn",
        "Keras' classic cifar10_cnn: Conv32-Conv32-Pool-Conv64-Conv64-Pool-Dense512, dropout from model.dropout",
        _lazy("baselines", "simple_cnn"),
        # keras-team/keras examples/cifar10_cnn.py, model.summary(): "Total params: 1,250,858" (10 classes)
        published_params=1_250_858,
    ),
    ModelSpec(
        "mlp",
        "dense-only baseline: Flatten-Dense1024-Dense512-classifier with model.dropout",
        _lazy("baselines", "mlp"),
        published_params=None,  # our own baseline
    ),
    ModelSpec(
        "elu18",
        "Clevert et al. 2015 ELU network, 18 conv layers (24.28% CIFAR-100 error), no batch norm",
        _lazy("elu", "elu18"),
        published_params=None,  # the paper gives layer shapes, not a parameter count
    ),
    ModelSpec(
        "elu11",
        "Clevert et al. 2015 ELU network, 11 conv layers (the paper's activation-function comparison net)",
        _lazy("elu", "elu11"),
        published_params=None,  # the paper gives layer shapes, not a parameter count
    ),
    ModelSpec(
        "vgg16",
        "CIFAR VGG-16 with batch norm: 13 conv3x3-BN-ReLU, 5 max-pools, Dense512-BN-ReLU, classifier",
        _lazy("vgg", "vgg16"),
        # HRank (Lin et al., CVPR 2020) Table 1: VGGNet-16 on CIFAR-10, 14.98M (Li et al. 2017 Table 1: 1.5e7)
        published_params=14_980_000,
    ),
    ModelSpec(
        "resnet20",
        "He et al. 2016 CIFAR ResNet-20 (3x3 basic blocks, 16/32/64 filters, option A shortcuts)",
        _lazy("resnet", "resnet20"),
        published_params=270_000,  # He et al. 2016, Table 6: 0.27M
    ),
    ModelSpec(
        "resnet56",
        "He et al. 2016 CIFAR ResNet-56 (3x3 basic blocks, 16/32/64 filters, option A shortcuts)",
        _lazy("resnet", "resnet56"),
        published_params=850_000,  # He et al. 2016, Table 6: 0.85M
    ),
    ModelSpec(
        "resnet110",
        "He et al. 2016 CIFAR ResNet-110 (3x3 basic blocks, 16/32/64 filters, option A shortcuts)",
        _lazy("resnet", "resnet110"),
        published_params=1_700_000,  # He et al. 2016, Table 6: 1.7M
    ),
    ModelSpec(
        "resnet18",
        "ResNet-18 with a CIFAR stem (3x3 conv, stride 1, no max-pool), basic blocks 64/128/256/512",
        _lazy("resnet", "resnet18"),
        # kuangliu/pytorch-cifar ResNet18, the common CIFAR ResNet-18: 11,173,962 parameters for 10 classes
        published_params=11_173_962,
    ),
    ModelSpec(
        "airbench94",
        "airbench94's net (Jordan 2024): 2x2 stem, conv groups 64/256/256 with pool, BN without scale, GELU; the "
        "fast CIFAR-10 recipe's",
        _lazy("airbench", "airbench94"),
        published_params=None,  # the paper gives widths, not a count (1.97M built here with 10 classes)
        data_init="airbench:init_whitening",  # the stem whitens 2x2 patches of the training images
    ),
    ModelSpec(
        "vgg16_imagenet",
        "keras.applications VGG16 (ImageNet) backbone + global-pool/dropout/dense head; two-phase fine-tuning",
        _lazy("transfer", "vgg16_imagenet"),
        # keras.io/api/applications: VGG16 138,357,544 params with its top (fc1 102,764,544 + fc2 16,781,312
        # + predictions 4,097,000) -> 14,714,688 without it
        published_params=14_714_688,
        transfer=True,
        backbone_layers=19,  # input, 13 convolutions, 5 pools
    ),
    ModelSpec(
        "resnet50_imagenet",
        "keras.applications ResNet50 (ImageNet) backbone + global-pool/dropout/dense head; two-phase fine-tuning",
        _lazy("transfer", "resnet50_imagenet"),
        # keras.io/api/applications: ResNet50 25,636,712 params with its top (predictions 2,049,000)
        # -> 23,587,712 without it, of which 53,120 are BatchNorm moving statistics
        published_params=23_587_712,
        transfer=True,
        backbone_layers=175,
    ),
]

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def initialize_from_data(name: str, network: keras.Model, images) -> bool:
    """Run model `name`'s data initialisation (ModelSpec.data_init) on `network`; False if it has none."""
    spec = MODELS[name]
    if not spec.data_init:
        return False
    module, function = spec.data_init.split(":")
    getattr(importlib.import_module(f"job.models.{module}"), function)(network, images)
    return True


def build_model(cfg: ModelConfig, num_classes: int, image_shape: tuple = (32, 32, 3)) -> keras.Model:
    """Build the model named by cfg.name (call inside the distribution strategy's scope)."""
    if cfg.name not in MODELS:
        raise ConfigError(f"unknown model {cfg.name!r}; valid: {', '.join(sorted(MODELS))}")
    return MODELS[cfg.name].build(cfg, num_classes, tuple(image_shape))


def load_model(path: str) -> keras.Model:
    """keras.models.load_model after importing every family and the preprocessing layer, so their custom layers are
    registered (a fresh process has not imported them: the builders are lazy). Safe mode stays on: no lambdas are
    deserialized."""
    import keras

    for module in sorted({*_FAMILIES, "job.data.preprocess"}):
        importlib.import_module(module)
    return keras.models.load_model(path, compile=False)  # exports are saved uncompiled: nothing to warn about


def set_transfer_phase(model: keras.Model, phase: int, unfreeze_top: int) -> None:
    """Transfer models only: phase 1 = backbone frozen, phase 2 = its top `unfreeze_top` layers trainable
    (0 = all), BatchNorm always frozen. Re-trace the train step (and build its optimizer) afterwards."""
    from job.models.transfer import set_transfer_phase as _set

    _set(model, phase, unfreeze_top)
