"""The model zoo: every registry model builds, trains one real step, matches its published size; transfer models
load backbone weights from files and switch training phases; models survive a .keras round trip."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from job.config import ModelConfig, load_config  # noqa: E402
from job.errors import ConfigError, UserError  # noqa: E402
from job.models import MODELS, build_model, set_transfer_phase  # noqa: E402

NUM_CLASSES = 7  # not 10 or 100, so a hardcoded class count would show
# Seconds per traced step on 2 CPU cores: their train step is tests/integration/test_models_heavy.py's, out of
# `make test-fast`.
HEAVY = {"elu18", "vgg16", "resnet110", "resnet50_imagenet"}


def model_config(name: str, **overrides) -> ModelConfig:
    # transfer models at their smallest input and without downloads, so CPU tests stay fast and offline
    defaults = {"weights": "none", "input_size": 32} if MODELS[name].transfer else {}
    return ModelConfig(name=name, **{**defaults, **overrides})


def batch(name: str, size: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if MODELS[name].transfer:  # raw pixels; the model preprocesses them itself
        x = rng.uniform(0, 255, (size, 32, 32, 3))
    else:  # what the trainer's normalization layer produces
        x = rng.standard_normal((size, 32, 32, 3))
    return x.astype("float32"), rng.integers(0, NUM_CLASSES, size).astype("int32")


def make_train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer):
    """The trainer's shape of step: GradientTape, logits cross-entropy plus the layers' L2 losses, optimizer.apply."""

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
            loss += tf.add_n(model.losses) if model.losses else 0.0
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    return step


def trainable_count(model: keras.Model) -> int:
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


# ---- every model -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in MODELS if n not in HEAVY])
def test_model_builds_and_takes_a_train_step(name):
    builds_and_takes_a_train_step(name)


def builds_and_takes_a_train_step(name: str) -> None:
    model = build_model(model_config(name), NUM_CLASSES)
    x, y = batch(name)

    logits = model(x, training=False)
    assert tuple(logits.shape) == (2, NUM_CLASSES)
    assert logits.dtype == "float32"

    before = [v.numpy().copy() for v in model.trainable_variables]
    loss = make_train_step(model, keras.optimizers.SGD(0.01))(x, y)
    assert np.isfinite(float(loss))
    changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)]
    assert any(changed), "the train step did not update any weight"


@pytest.mark.parametrize("name", [n for n, spec in MODELS.items() if spec.published_params])
def test_parameter_count_matches_the_published_figure(name):
    """Within 2%: papers round (He et al.: 1.7M for ResNet-110, whose option-A network has 1,727,962, +1.6%).
    Learnable parameters are compared, as papers count them (BatchNorm moving statistics are not learnable).
    Transfer models: the keras.applications backbone without its top, all its weights (Keras' own count)."""
    model = build_model(model_config(name), 10)
    if MODELS[name].transfer:
        count = model.get_layer("backbone").count_params()
    else:
        count = trainable_count(model)
    published = MODELS[name].published_params
    assert abs(count - published) / published < 0.02, f"{name}: {count:,} parameters, published {published:,}"


def test_every_registry_name_is_a_valid_config_value():
    for name, spec in MODELS.items():
        family = ["data.normalization=none"] if spec.transfer else []  # the transfer family's own rule
        assert load_config(None, [f"model.name={name}", *family]).model.name == name
    with pytest.raises(ConfigError, match="unknown model"):
        build_model(ModelConfig(name="resnet19"), NUM_CLASSES)


# ---- architecture details the papers fix --------------------------------------------------------------------------


def test_elu_networks_follow_the_paper():
    model = build_model(model_config("elu11"), NUM_CLASSES)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 11
    assert [c.filters for c in convs] == [192, 192, 240, 240, 260, 260, 280, 280, 300, 300, NUM_CLASSES]
    assert [c.kernel_size[0] for c in convs] == [5, 1, 3, 1, 2, 1, 2, 1, 2, 1, 1]
    assert all(layer.alpha == 1.0 for layer in model.layers if isinstance(layer, keras.layers.ELU))
    assert [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)] == [0.1]
    assert sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers) == 5


def test_cifar_resnets_use_parameter_free_shortcuts():
    model = build_model(model_config("resnet20"), NUM_CLASSES)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 19  # 6n+1 convs + the classifier = 20 weighted layers, no projection convs (option A)
    assert sorted({c.filters for c in convs}) == [16, 32, 64]


def test_config_dropout_and_l2_reach_the_layers():
    model = build_model(model_config("simple_cnn", dropout=0.5, l2=5e-4), NUM_CLASSES)
    # model.dropout=0.5 gives the Keras example's 0.25 after each conv block and 0.5 before the classifier
    assert [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)] == [0.25, 0.25, 0.5]
    kernels = [layer for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
    x, _ = batch("simple_cnn")
    model(x)
    assert len(model.losses) == len(kernels) == 6
    assert len(build_model(model_config("simple_cnn"), NUM_CLASSES).losses) == 0


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_logits_are_float32_under_mixed_precision(precision):
    keras.config.set_dtype_policy(precision)
    try:
        for name in ("resnet20", "vgg16_imagenet"):
            model = build_model(model_config(name), NUM_CLASSES)
            logits = model(batch(name)[0], training=False)
            assert logits.dtype == "float32", name
            assert np.all(np.isfinite(logits.numpy())), name
    finally:
        keras.config.set_dtype_policy("float32")


def test_model_trains_inside_a_distribution_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = build_model(model_config("resnet20", l2=1e-4), NUM_CLASSES)
        optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    step = make_train_step(model, optimizer)
    x, y = batch("resnet20", size=4)

    @tf.function
    def distributed_step(x, y):
        return strategy.reduce("SUM", strategy.run(step, args=(x, y)), axis=None)

    assert np.isfinite(float(distributed_step(x, y)))


# ---- saving -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["simple_cnn", "resnet20", "vgg16_imagenet"])
def test_keras_file_round_trip_gives_identical_outputs(name, tmp_path):
    model = build_model(model_config(name, dropout=0.3), NUM_CLASSES)
    x, y = batch(name, size=4)
    make_train_step(model, keras.optimizers.SGD(0.01))(x, y)  # move BN statistics and weights off their init
    path = tmp_path / f"{name}.keras"
    model.save(path)

    loaded = keras.models.load_model(path)  # safe mode: only registered layers, no lambdas
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), model(x, training=False).numpy())
    if MODELS[name].transfer:
        set_transfer_phase(loaded, 2, unfreeze_top=4)  # the loaded model still has its named backbone
        assert len(loaded.trainable_weights) > 2


# ---- transfer models ----------------------------------------------------------------------------------------------


def test_transfer_phases_change_what_trains():
    model = build_model(model_config("vgg16_imagenet"), NUM_CLASSES)
    backbone = model.get_layer("backbone")
    head = ["classifier/kernel", "classifier/bias"]
    assert [v.path for v in model.trainable_variables] == head  # built in phase 1

    set_transfer_phase(model, 2, unfreeze_top=4)  # block5_conv1..3 and block5_pool
    assert len(model.trainable_variables) == 3 * 2 + 2
    assert {layer.name for layer in backbone.layers if layer.trainable_weights} == {
        "block5_conv1", "block5_conv2", "block5_conv3"}

    x, y = batch("vgg16_imagenet")
    frozen = backbone.get_layer("block4_conv3").kernel.numpy().copy()
    unfrozen = backbone.get_layer("block5_conv3").kernel.numpy().copy()
    make_train_step(model, keras.optimizers.SGD(0.1))(x, y)  # a fresh step: the trainer re-traces after a phase change
    np.testing.assert_array_equal(backbone.get_layer("block4_conv3").kernel.numpy(), frozen)
    assert not np.array_equal(backbone.get_layer("block5_conv3").kernel.numpy(), unfrozen)

    set_transfer_phase(model, 1, unfreeze_top=4)
    assert [v.path for v in model.trainable_variables] == head


def test_fine_tuning_keeps_batch_norm_frozen_and_in_inference_mode():
    model = build_model(model_config("resnet50_imagenet"), NUM_CLASSES)
    backbone = model.get_layer("backbone")
    set_transfer_phase(model, 2, unfreeze_top=0)  # 0 = the whole backbone
    batch_norms = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    convs = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]
    assert all(not bn.trainable for bn in batch_norms)
    assert len(model.trainable_variables) == 2 * len(convs) + 2  # every conv's kernel and bias, plus the head

    moving_means = [bn.moving_mean.numpy().copy() for bn in batch_norms]
    x, y = batch("resnet50_imagenet")
    make_train_step(model, keras.optimizers.SGD(0.01))(x, y)
    for bn, before in zip(batch_norms, moving_means):
        np.testing.assert_array_equal(bn.moving_mean.numpy(), before)


def write_keras_notop_h5(model: keras.Model, path: Path) -> None:
    """The legacy Keras HDF5 weights layout that keras.applications' *_notop.h5 downloads use: root attribute
    `layer_names`, one group per layer with weights, its `weight_names` attribute listing datasets in order."""
    with h5py.File(path, "w") as f:
        layers_with_weights = [layer for layer in model.layers if layer.weights]
        f.attrs["layer_names"] = [layer.name.encode() for layer in layers_with_weights]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = keras.__version__.encode()
        for layer in layers_with_weights:
            group = f.create_group(layer.name)
            names = [f"{layer.name}/{w.name}:0" for w in layer.weights]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for n, w in zip(names, layer.weights):
                group.create_dataset(n, data=w.numpy())


def test_backbone_weights_load_from_a_file(tmp_path):
    source = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    write_keras_notop_h5(source, path)

    model = build_model(model_config("vgg16_imagenet", weights=str(path)), NUM_CLASSES)
    loaded = model.get_layer("backbone").weights
    assert len(loaded) == len(source.weights) == 26
    for want, got in zip(source.weights, loaded):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_weights_path_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_model(model_config("vgg16_imagenet", weights=str(tmp_path / "missing.h5")), NUM_CLASSES)
    not_weights = tmp_path / "notes.h5"
    not_weights.write_text("not an HDF5 file")
    with pytest.raises(UserError, match="could not load vgg16 backbone weights"):
        build_model(model_config("vgg16_imagenet", weights=str(not_weights)), NUM_CLASSES)
    with pytest.raises(ConfigError, match="input_size"):
        build_model(model_config("resnet50_imagenet", input_size=16), NUM_CLASSES)


def test_initial_weights_depend_on_the_seed_alone_even_while_other_threads_draw_from_random():
    """Keras takes initializer and dropout seeds from Python's global `random`, which the gs:// uploads on the run
    directory's thread also draw from (google-cloud-storage: multipart boundaries, retry jitter). The model the
    trainer builds must not depend on what other threads did meanwhile (job/runtime.py)."""
    import random
    import threading

    from job.models.assembly import build_full_model

    cfg = load_config("digits_resnet20", ["model.name=simple_cnn", "model.dropout=0.25", "train.seed=3"])

    def weights(model):
        return [np.array(v.value) for v in model.variables]

    random.seed(1)
    first = weights(build_full_model(cfg, NUM_CLASSES, (32, 32, 3)))
    done = threading.Event()
    drawer = threading.Thread(target=lambda: [random.random() for _ in iter(done.is_set, True)], daemon=True)
    random.seed(2)
    drawer.start()
    try:
        second = weights(build_full_model(cfg, NUM_CLASSES, (32, 32, 3)))
    finally:
        done.set()
        drawer.join()
    assert len(first) == len(second) > 4
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    other_seed = weights(build_full_model(load_config("digits_resnet20", ["model.name=simple_cnn", "train.seed=4"]),
                                          NUM_CLASSES, (32, 32, 3)))
    assert any(not np.array_equal(a, b) for a, b in zip(first, other_seed))
