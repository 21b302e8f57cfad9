"""The registries of datasets (job/data/splits.py), backends (job/distribute) and models (job/models): the config's
choice lists come from them, reading them costs no TensorFlow import, and the numbers they state are the real ones."""

import pytest

from job import config as configlib
from job.data import DATASETS, load_splits
from job.distribute import AUTO, BACKENDS
from job.models import MODELS


def test_config_choices_come_from_the_registries():
    choices = configlib.choices()
    assert choices["data.name"] == tuple(DATASETS)
    assert choices["distribute.backend"] == (AUTO, *BACKENDS)
    assert choices["data.label_mode"] == ("fine", "coarse")
    assert not {"data.name", "data.label_mode", "distribute.backend"} & set(configlib.CHOICES), \
        "config.py restates a registry's list"
    for name in DATASETS:
        assert configlib.load_config("cifar10_resnet20", [f"data.name={name}"]).data.name == name
    for name in BACKENDS:
        assert configlib.load_config(None, [f"distribute.backend={name}"]).distribute.backend == name


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_offline_datasets_load_through_the_registry_with_the_stated_class_count(name):
    spec = DATASETS[name]
    assert spec.offline and spec.description
    cfg = configlib.load_config("digits_resnet20", [f"data.name={name}", "data.validation_split=0.1"])
    splits = load_splits(cfg.data, seed=0)
    assert splits.num_classes == spec.num_classes["fine"] == len(splits.class_names)
    assert splits.x_train.shape[1:] == splits.x_test.shape[1:] == (32, 32, 3)
    assert set(splits.y_train) | set(splits.y_test) <= set(range(splits.num_classes))
    assert len(splits.x_val) > 0


def test_downloaded_datasets_are_marked_so():
    assert {name for name, spec in DATASETS.items() if not spec.offline} == {"cifar10", "cifar100"}
    assert DATASETS["cifar100"].num_classes == {"fine": 100, "coarse": 20}


def test_make_backend_builds_the_registry_entry():
    from job.distribute import make_backend

    backend = make_backend(configlib.load_config("digits_resnet20", ["distribute.backend=single"]))
    assert backend.name == "single" and backend.num_replicas == 1


@pytest.mark.parametrize("name", [name for name, spec in MODELS.items() if spec.transfer])
def test_backbone_layer_counts_are_those_of_keras_applications(name):
    # model.unfreeze_top counts backbone.layers (job/models/transfer.py set_transfer_phase), the input layer included.
    from job.models.transfer import BACKBONES

    backbone = BACKBONES[name.removesuffix("_imagenet")].constructor(include_top=False, weights=None,
                                                                     input_shape=(32, 32, 3))
    assert len(backbone.layers) == MODELS[name].backbone_layers


def test_from_scratch_models_state_no_backbone():
    assert all(spec.backbone_layers == 0 for spec in MODELS.values() if not spec.transfer)
