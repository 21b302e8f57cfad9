"""End to end: the real trainer as a process, killed and restarted as a preempted pod would be."""
import json

import numpy as np
import pytest
import tensorflow as tf

from tests.support.trainer_runs import (
    committed_prefix,
    committed_steps,
    kill_hard,
    run_job,
    start_job,
    start_with_held_write,
    trainer_env,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # trainer runs: a limit for hangs only (pytest.ini)

# simple_cnn with dropout on digits: small and fast, yet it has every kind of state a resume must restore
# (weights, momentum slots, dropout RNG, LR schedule position, data order and augmentation).
TINY = ["--config", "digits_resnet20", "model.name=simple_cnn", "model.dropout=0.25", "train.epochs=2",
        "train.batch_size=32", "train.deterministic=true", "checkpoint.every_steps=5", "optim.warmup_epochs=0.5"]


def final_variables(run_dir):
    step = committed_steps(run_dir)[-1]
    prefix = committed_prefix(run_dir, step)
    names = [n for n, _ in tf.train.list_variables(prefix) if n.startswith(("model/", "optimizer/", "ema/"))]
    assert len(names) > 10
    return step, {n: tf.train.load_variable(prefix, n) for n in names}


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """TINY trained without interruption: what every interrupted and resumed run must end with."""
    straight = tmp_path_factory.mktemp("straight") / "run"
    done = run_job("train", *TINY, f"run.dir={straight}")
    assert done.returncode == 0, done.stderr[-3000:]
    return straight


def assert_resumed_like_straight(resumed, straight, killed_at: int, args=TINY) -> None:
    again = run_job("train", *args, f"run.dir={resumed}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from step {killed_at}" in again.stderr

    step_a, weights_a = final_variables(straight)
    step_b, weights_b = final_variables(resumed)
    assert step_a == step_b
    assert weights_a.keys() == weights_b.keys()
    # Deterministic ops on a CPU: the resumed run repeats the same arithmetic, so the tolerance is float32 rounding.
    for name in weights_a:
        np.testing.assert_allclose(weights_b[name], weights_a[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_kill_minus_nine_mid_epoch_then_resume_ends_with_the_same_weights(tmp_path, straight_run):
    resumed, log = tmp_path / "resumed", tmp_path / "first.log"
    # The commit of ckpt-10 (and all after it) is held: the kill lands with ckpt-5 the newest commit, mid-epoch (an
    # epoch here has 40 steps, checkpoints come every 5), and ckpt-10's files written (or being written) but not
    # committed.
    process = start_job("train", *TINY, f"run.dir={resumed}", log_path=log,
                        env=trainer_env(JOB_TEST_HOLD_TASK=r"^checkpoint ckpt-10$"))
    wait_for(lambda: "held for a test: checkpoint ckpt-10" in log.read_text(), timeout=300, process=process,
             what="the commit of ckpt-10 to be held")
    kill_hard(process)
    assert committed_steps(resumed) == [5]
    assert_resumed_like_straight(resumed, straight_run, killed_at=5)


# The same with weight EMA and BatchNorm (ResNet-20): the averages and their recomputed statistics resume exactly too.
TINY_EMA = ["--config", "digits_resnet20", "train.epochs=2", "train.batch_size=32", "train.deterministic=true",
            "checkpoint.every_steps=5", "train.max_steps_per_epoch=12", "train.ema_decay=0.9",
            "data.validation_split=0.1"]


@pytest.fixture(scope="module")
def straight_ema_run(tmp_path_factory):
    straight = tmp_path_factory.mktemp("straight_ema") / "run"
    done = run_job("train", *TINY_EMA, f"run.dir={straight}")
    assert done.returncode == 0, done.stderr[-3000:]
    return straight


def test_kill_minus_nine_with_weight_ema_then_resume_ends_with_the_same_raw_and_averaged_weights(
        tmp_path, straight_ema_run):
    resumed, log = tmp_path / "resumed", tmp_path / "first.log"
    process = start_job("train", *TINY_EMA, f"run.dir={resumed}", log_path=log,
                        env=trainer_env(JOB_TEST_HOLD_TASK=r"^checkpoint ckpt-10$"))
    wait_for(lambda: "held for a test: checkpoint ckpt-10" in log.read_text(), timeout=300, process=process,
             what="the commit of ckpt-10 to be held")
    kill_hard(process)
    assert committed_steps(resumed) == [5]
    assert_resumed_like_straight(resumed, straight_ema_run, killed_at=5, args=TINY_EMA)
    _, weights = final_variables(resumed)
    assert len([n for n in weights if n.startswith("ema/")]) > 50, "the averages are in the checkpoint"


def test_a_run_with_weight_ema_exports_predicts_and_serves_the_averaged_weights(tmp_path, straight_ema_run):
    """docs/configuration.md "Recipes": with train.ema_decay, `best`, `latest` and the exports use the averaged
    weights unless
    --trained-weights says otherwise."""
    from job.inference import Classifier
    from job.models import load_model
    from job.weights import Selection
    from tests.support.sample_images import digit_images, encode
    from tests.support.serve_server import ServeProcess, multipart, request

    images = np.stack([image for image, _ in digit_images(16)])
    exported = load_model(str(straight_ema_run / "export" / "model.keras"))
    export_probabilities = tf.nn.softmax(exported(images.astype("float32"), training=False)).numpy()
    averaged = Classifier.load(Selection(run_dir=str(straight_ema_run))).predict(images)
    trained = Classifier.load(Selection(run_dir=str(straight_ema_run), trained=True)).predict(images)
    np.testing.assert_allclose(averaged, export_probabilities, atol=1e-5)
    assert np.abs(trained - averaged).max() > 1e-3, "the trained weights answer differently"
    metrics = json.loads((straight_ema_run / "eval" / "metrics.json").read_text())
    assert metrics["weights"] == "averaged" and set(metrics["trained"]) == {"loss", "top1", "top5"}

    files = []
    for i, image in enumerate(images[:4]):
        files.append(tmp_path / f"digit{i}.png")
        files[-1].write_bytes(encode(image, "PNG"))
    answers = {}
    for flag in ([], ["--trained-weights"]):
        result = run_job("predict", "--run-dir", str(straight_ema_run), *flag, "--json", *map(str, files))
        assert result.returncode == 0, result.stderr[-3000:]
        answers[bool(flag)] = [json.loads(line)["top"][0]["probability"] for line in result.stdout.splitlines()]
    np.testing.assert_allclose(answers[False], averaged[:4].max(axis=1), atol=1e-5)
    np.testing.assert_allclose(answers[True], trained[:4].max(axis=1), atol=1e-5)

    server = ServeProcess.start(["--run-dir", str(straight_ema_run)], tmp_path / "serve.log")
    try:
        server.wait_ready()
        body, content_type = multipart([(f.name, f.read_bytes()) for f in files])
        reply = request("POST", server.url + "/v1/predict", body, {"Content-Type": content_type})
        assert reply.status == 200, reply.body[:500]
        served = [p["top"][0]["probability"] for p in reply.json["predictions"]]
        np.testing.assert_allclose(served, answers[False], atol=1e-5)
    finally:
        server.stop()


def test_kill_minus_nine_during_a_background_checkpoint_write_then_resume_ends_with_the_same_weights(
        tmp_path, straight_run):
    resumed, log = tmp_path / "resumed", tmp_path / "first.log"
    # The background write of ckpt-10 is held half-done (tests/support/hooked_train.py --hold-write): its data is in
    # <prefix>_temp/, its index not written. Training goes on meanwhile, up to the save of ckpt-15, which waits for it.
    process = start_with_held_write(10, [*TINY, f"run.dir={resumed}"], tmp_path / "events", log)
    assert list((resumed / "checkpoints").glob("ckpt-10-*_temp/*")), "the write's data files were not there"
    assert not list((resumed / "checkpoints").glob("ckpt-10-*.index"))
    kill_hard(process)
    assert committed_steps(resumed) == [5]

    assert_resumed_like_straight(resumed, straight_run, killed_at=5)
    # The half-written files named by no commit went with the commits after the resume.
    left = sorted(p.name for p in (resumed / "checkpoints").iterdir())
    assert not [name for name in left if name.endswith("_temp")], left


def test_digits_preset_trains_to_97_percent_and_prints_the_evaluation(tmp_path):
    """The offline demo on real data nobody here made (scikit-learn's digits)."""
    result = run_job("train", "--config", "digits_resnet20", f"run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "top-1 accuracy" in result.stdout
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["top1"] >= 0.97, metrics["top1"]
    assert metrics["examples"] == 359  # the fixed, stratified 20% test split of 1,797 digits
    assert (tmp_path / "eval" / "report.txt").read_text().count("\n") > 12
    assert (tmp_path / "export" / "model.keras").is_file()
    assert (tmp_path / "config.yaml").is_file()
    assert list((tmp_path / "logs" / "train").glob("events.out.tfevents.*"))

    # Evaluating again from the CLI reproduces the stored numbers from the committed checkpoint.
    again = run_job("evaluate", "--run-dir", str(tmp_path))
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["top1"] == pytest.approx(metrics["top1"])
