"""Training options in real runs: a diverging run stops with a clear error, train metrics are logged when asked, the
multi-replica loss convention and gradient accumulation give the same model as one replica with the whole batch, and
several steps per call train exactly as one (each option on the trainer's own parts: tests/unit/test_train_step.py)."""
import json

import numpy as np
import pytest
import tensorflow as tf

from tests.support.trainer_runs import committed_prefix, run_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # trainer runs: a limit for hangs only (pytest.ini)

BASE = ["--config", "digits_resnet20", "model.name=simple_cnn", "train.epochs=1", "train.batch_size=32",
        "train.max_steps_per_epoch=6", "train.eval_batch_size=400"]


@pytest.mark.parametrize("options", [
    ["optim.name=adamw", "optim.label_smoothing=0.1", "optim.clip_norm=1.0", "optim.schedule=constant"],
    ["optim.schedule=step", "optim.step_epochs=[0.5]", "optim.warmup_epochs=0.2", "data.augment.rotation_degrees=10",
     "data.augment.zoom=0.1", "data.augment.cutout=8"],
    ["train.precision=mixed_bfloat16", "train.jit_compile=true"],
    ["train.precision=mixed_float16"],
    ["model.name=elu11", "data.normalization=gcn_zca", "model.l2=5e-4", "optim.weight_decay=0", "optim.lr=0.0256",
     "optim.nesterov=false"],
    ["train.epochs=4", "train.early_stopping_patience=1", "optim.lr=1e-9", "data.validation_split=0.2"],
], ids=["adamw-smoothing-clip", "step-warmup-augment", "bf16-xla", "fp16-loss-scale", "elu11-zca-l2",
        "early-stopping"])
def test_option_trains_and_evaluates(tmp_path, options):
    result = run_job("train", *BASE, *options, f"run.dir={tmp_path}", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert np.isfinite(metrics["loss"])
    if "train.early_stopping_patience=1" in options:
        assert "early stopping" in result.stderr
        assert metrics["step"] < 4 * 6


# ------------------------------------------------------------- each option takes effect (the trainer's own parts)


def test_a_diverging_run_stops_with_a_clear_error(tmp_path):
    result = run_job("train", *BASE, "optim.lr=1e6", "optim.weight_decay=0", f"run.dir={tmp_path}", timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error: training diverged: the loss is nan" in result.stderr


def test_train_metrics_are_logged_every_log_every_steps_and_at_each_epochs_end(tmp_path):
    from bench.events import read_scalars

    result = run_job("train", *BASE, "train.epochs=2", "run.log_every_steps=4", f"run.dir={tmp_path}", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    loss = read_scalars(tmp_path / "logs" / "train")["loss"]
    assert [step for step, _ in loss] == [4, 6, 10, 12]  # 6 steps an epoch; the count restarts after each log


def final_weights(run_dir):
    prefix = committed_prefix(run_dir)
    return {n: tf.train.load_variable(prefix, n) for n, _ in tf.train.list_variables(prefix)
            if "_trainable_variables" in n}


def test_two_replicas_of_batch_b_equal_one_replica_of_batch_2b(tmp_path):
    """The loss is divided by the global batch and replica gradients are summed: splitting a batch over replicas
    must not change the update (no batch norm, no dropout, no augmentation, so nothing else differs)."""
    same = [*BASE, "model.dropout=0", "data.augment.crop_padding=0", "data.augment.flip=false",
            "train.deterministic=true", "optim.clip_norm=0.5"]
    one = run_job("train", *same, "distribute.backend=single", f"run.dir={tmp_path / 'one'}")
    two = run_job("train", *same, "distribute.backend=mirrored", "distribute.cpu_devices=2",
                  f"run.dir={tmp_path / 'two'}")
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 replica(s) on 1 worker(s) x 1 accumulation step(s) x 16 per device (mirrored backend)" in two.stderr
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    assert a.keys() == b.keys() and len(a) >= 8
    for name in a:
        # Summation order differs between one batch and two halves: float32 rounding only.
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_two_accumulation_steps_of_batch_b_equal_one_step_of_batch_2b(tmp_path):
    """Gradient accumulation (job/batching.py): each micro-batch's loss is divided by the global batch and the
    gradients summed before the one optimizer step, so the update is the whole batch's (no batch norm, no dropout)."""
    same = [*BASE, "model.dropout=0", "train.deterministic=true", "optim.clip_norm=0.5",
            "distribute.backend=single"]
    whole = run_job("train", *same, f"run.dir={tmp_path / 'whole'}")
    halves = run_job("train", *same, "train.accumulation_steps=2", f"run.dir={tmp_path / 'halves'}")
    auto = run_job("train", *same, "train.max_device_batch=8", f"run.dir={tmp_path / 'auto'}")
    for result in (whole, halves, auto):
        assert result.returncode == 0, result.stderr[-3000:]
    assert "global batch 32 = 1 replica(s) on 1 worker(s) x 2 accumulation step(s) x 16 per device" in halves.stderr
    assert "x 4 accumulation step(s) x 8 per device" in auto.stderr  # chosen from the per-device limit
    a = final_weights(tmp_path / "whole")
    for run in ("halves", "auto"):
        b = final_weights(tmp_path / run)
        assert a.keys() == b.keys() and len(a) >= 8
        # The whole model's weights, relative to their norm: smaller batches make oneDNN sum in another order, and
        # one step's gradients agree to 1e-6; a tensor near zero (the first bias) would make an element-wise ratio
        # meaningless.
        names = sorted(a)
        whole = np.concatenate([a[n].ravel() for n in names])
        split = np.concatenate([b[n].ravel() for n in names])
        difference = np.linalg.norm(split - whole) / np.linalg.norm(whole)
        assert difference < 1e-5, f"{run}: the weights differ by {difference:.2e} of their norm"
    metrics = [json.loads((tmp_path / r / "eval" / "metrics.json").read_text()) for r in ("whole", "halves")]
    assert metrics[0]["top1"] == metrics[1]["top1"]


@pytest.mark.parametrize("options, message", [
    (["train.accumulation_steps=3"], "train.accumulation_steps=3 does not divide the 32 examples"),
    (["train.max_device_batch=5"], "x 8 accumulation step(s) x 4 per device"),
])
def test_accumulation_settings_that_do_not_split_the_batch(tmp_path, options, message):
    result = run_job("train", *BASE, *options, f"run.dir={tmp_path}", "train.epochs=1", "train.max_steps_per_epoch=1")
    assert message in result.stderr, result.stderr[-2000:]


def test_several_steps_per_call_train_exactly_as_one(tmp_path):
    """train.steps_per_call=4: the same weights, the same checkpoints at the same steps, the same metrics at the same
    logged steps as one step per call (calls stop at every log, checkpoint and epoch boundary)."""
    from bench.events import read_scalars

    same = [*BASE, "train.epochs=2", "train.max_steps_per_epoch=10", "train.deterministic=true",
            "checkpoint.every_steps=6", "checkpoint.keep=10", "run.log_every_steps=4", "distribute.backend=single"]
    runs = {k: tmp_path / f"spc{k}" for k in (1, 4)}
    for k, run in runs.items():
        result = run_job("train", *same, f"train.steps_per_call={k}", f"run.dir={run}")
        assert result.returncode == 0, result.stderr[-3000:]
    a, b = final_weights(runs[1]), final_weights(runs[4])
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-6, atol=0, err_msg=name)
    commits = {k: sorted(p.name for p in (run / "checkpoints").glob("*.commit.json")) for k, run in runs.items()}
    assert commits[1] == commits[4] == [f"ckpt-{s}.commit.json" for s in (10, 12, 18, 20, 6)]
    logged = {k: read_scalars(run / "logs" / "train")["loss"] for k, run in runs.items()}
    assert [s for s, _ in logged[4]] == [s for s, _ in logged[1]] == [4, 8, 10, 14, 18, 20]
    np.testing.assert_allclose([v for _, v in logged[4]], [v for _, v in logged[1]], rtol=1e-6)
