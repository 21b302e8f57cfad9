"""The training step's options, checked on the trainer's own parts built in-process (job/builder.py): decoupled
weight decay, mixed precision, the fp16 loss scale, XLA (the options in real runs:
tests/integration/test_train_options.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from job import data as datalib
from job.builder import build_run
from job.config import load_config
from job.metrics import SUM_KEYS
from job.step import make_train_step

# ------------------------------------------------------------- each option takes effect (the trainer's own parts)

@pytest.fixture
def build(tmp_path):
    """`build(*overrides)`: a run's parts as `python -m job train` builds them (job/builder.py), on synthetic data;
    the process-wide precision policy that build sets is put back afterwards."""
    def build_parts(*overrides: str):
        cfg = load_config("digits_resnet20", ["data.name=synthetic", "data.synthetic_examples=64",
                                              "data.validation_split=0", "train.batch_size=16",
                                              "distribute.backend=single", f"run.dir={tmp_path / 'run'}", *overrides])
        parts = build_run(cfg, writers=False)
        parts.restore_or_initialize()
        return parts

    yield build_parts
    keras.mixed_precision.set_global_policy("float32")


def train_step_and_batches(parts):
    """The compiled training step as job/loop.py makes it, and the run's training batches (endless)."""
    sums = {k: tf.Variable(0.0, dtype=tf.float64, trainable=False) for k in SUM_KEYS}
    dataset = datalib.train_dataset(parts.splits.x_train, parts.splits.y_train, parts.cfg.data,
                                    parts.backend.shard(parts.cfg.train.batch_size), seed=0, epoch=0)
    return make_train_step(parts, sums), iter(dataset.repeat())


NO_STOP_VOTES = tf.zeros([2])


@pytest.mark.parametrize("overrides", [
    ["optim.name=adamw"], ["optim.name=sgd"], ["optim.name=adamw", "train.precision=mixed_float16"],
], ids=["adamw", "sgd", "adamw-under-the-fp16-loss-scale"])
def test_weight_decay_shrinks_kernels_by_lr_times_decay_and_spares_biases_and_norm_parameters(build, overrides):
    """Decoupled decay (job/optim.py, README's optim.weight_decay): each step w <- w - lr * wd * w on kernels; biases
    and batch-norm gammas and betas are not decayed. A zero gradient leaves the decay alone: Adam's and momentum's
    own update of it is zero."""
    parts = build(*overrides, "optim.weight_decay=0.5", "optim.lr=1.6", "optim.schedule=constant",
                  "optim.warmup_epochs=0")  # lr = 1.6 * 16 / 256 = 0.1: kernels shrink by 5 %
    optimizer = parts.optimizer
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    assert type(inner).__name__ == {"adamw": "AdamW", "sgd": "SGD"}[overrides[0].split("=")[1]]
    variables = parts.model.trainable_variables
    rng = np.random.default_rng(0)
    for variable in variables:  # nonzero everywhere, so a bias or beta left at 0 cannot hide a decay
        variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
    before = {v.path: v.numpy() for v in variables}
    optimizer.apply([tf.zeros_like(v) for v in variables], variables)

    kinds = {}
    for variable in variables:
        kind = variable.path.rsplit("/", 1)[-1]
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "kernel":
            expected = before[variable.path] - before[variable.path] * np.float32(0.5) * np.float32(0.1)
            np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6, err_msg=variable.path)
        else:
            np.testing.assert_array_equal(variable.numpy(), before[variable.path], err_msg=variable.path)
    assert kinds["kernel"] >= 20 and kinds["gamma"] >= 19 and kinds["beta"] >= 19 and kinds["bias"] >= 1, kinds


@pytest.mark.parametrize("precision, compute", [
    ("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16"), ("float32", "float32"),
])
def test_mixed_precision_computes_in_half_precision_on_float32_variables(build, precision, compute):
    parts = build(f"train.precision={precision}")
    network = parts.model.get_layer("network")
    convs = [layer for layer in network.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) >= 19 and all(layer.compute_dtype == compute for layer in convs)
    images = parts.splits.x_train[:2].astype("float32")
    first_conv = keras.Model(network.input, convs[0].output)
    assert first_conv(images).dtype == compute  # what the layer really computes in
    assert {v.dtype for v in parts.model.variables if v.trainable} == {"float32"}  # master weights
    assert parts.model(images).dtype == "float32"  # logits, for a stable loss (job/models/common.py)


def test_the_fp16_loss_scale_doubles_after_growth_steps_and_halves_and_skips_on_overflow(build):
    """train.precision=mixed_float16 wraps the optimizer in Keras' LossScaleOptimizer, and the training step scales the
    loss by it: a scale too large overflows the float16 gradients, and that step is skipped and the scale halved;
    after `dynamic_growth_steps` finite steps in a row the scale doubles."""
    parts = build("model.name=simple_cnn", "train.precision=mixed_float16")  # no batch norm: every step is finite
    optimizer = parts.optimizer
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert float(optimizer.dynamic_scale.numpy()) == 2.0**15 and optimizer.dynamic_growth_steps == 2000
    optimizer.dynamic_growth_steps = 3  # Keras reads it when the step is traced: 3 instead of 2000 steps to wait
    step, batches = train_step_and_batches(parts)
    variables = parts.model.trainable_variables

    def run_step():
        before = [v.numpy() for v in variables]
        step(next(batches), NO_STOP_VOTES)
        changed = sum(not np.array_equal(b, v.numpy()) for b, v in zip(before, variables))
        return float(optimizer.dynamic_scale.numpy()), int(optimizer.inner_optimizer.iterations.numpy()), changed

    everything = len(variables)
    assert run_step() == (2.0**15, 1, everything)
    assert run_step() == (2.0**15, 2, everything)
    assert run_step() == (2.0**16, 3, everything)  # the third finite step in a row doubles it
    optimizer.dynamic_scale.assign(2.0**30)  # the loss's gradient times 2^30 is far over float16's 65504
    assert run_step() == (2.0**29, 3, 0)  # skipped: no variable moved, the inner optimizer took no step
    assert int(optimizer.step_counter.numpy()) == 0  # and the count of finite steps starts again


@pytest.mark.parametrize("jit", [True, False])
def test_jit_compile_makes_the_training_step_an_xla_function(build, jit):
    """train.jit_compile=true: the step function is marked for XLA (TensorFlow compiles a function carrying
    _XlaMustCompile as one XLA cluster, or fails); false leaves it to the graph executor."""
    parts = build("model.name=simple_cnn", f"train.jit_compile={str(jit).lower()}")
    step, batches = train_step_and_batches(parts)
    batch = next(batches)
    attributes = step.get_concrete_function(batch, NO_STOP_VOTES).function_def.attr
    assert ("_XlaMustCompile" in attributes and attributes["_XlaMustCompile"].b) is jit
    if jit:
        assert step.experimental_get_compiler_ir(batch, NO_STOP_VOTES)(stage="hlo").startswith("HloModule")
