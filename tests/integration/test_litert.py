"""The LiteRT exports (job/litert.py; docs/serving.md): export/model.tflite (float) and
export/model_int8.tflite (full-integer int8) of the trained digits run, on its whole test set, against the Keras model;
`predict --model` and `serve --model` take them; a damaged .tflite is one line; export.litert=false writes none."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from tests.support.serve_server import ServeProcess, digit_images, get, png_bytes, post_files
from tests.support.trainer_runs import run_job

FLOAT, INT8 = "model.tflite", "model_int8.tflite"


@pytest.fixture(scope="module")
def test_set(digits_run):
    """The digits run's test split, as its config makes it, and the Keras model's probabilities for it."""
    from job.data import load_splits
    from job.inference import Classifier
    from job.runconfig import load_run_config
    from job.storage import open_storage

    cfg = load_run_config(open_storage(str(digits_run)))
    splits = load_splits(cfg.data, cfg.train.seed)
    keras_probabilities = Classifier.from_file(str(digits_run / "export" / "model.keras")).predict(splits.x_test)
    return splits.x_test, splits.y_test, keras_probabilities


def litert_predict(path, images):
    from job.inference import Classifier

    classifier = Classifier.from_file(str(path))
    assert type(classifier).__name__ == "LiteRTClassifier"  # the file itself runs, not a Keras model beside it
    return classifier, classifier.predict(images)


def test_the_float_model_agrees_with_the_keras_model_on_the_test_set(digits_run, test_set):
    images, labels, expected = test_set
    _, probabilities = litert_predict(digits_run / "export" / FLOAT, images)
    assert len(images) >= 300  # digits' test split: 359 images
    agree = (probabilities.argmax(1) == expected.argmax(1)).mean()
    assert agree >= 0.999, agree
    assert np.abs(probabilities - expected).max() < 1e-4  # the same float graph, other kernels


def test_the_int8_model_is_full_integer_and_within_one_point_of_keras(digits_run, test_set):
    from ai_edge_litert.interpreter import Interpreter

    images, labels, expected = test_set
    interpreter = Interpreter(model_path=str(digits_run / "export" / INT8))
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8
    assert interpreter.get_output_details()[0]["dtype"] == np.uint8
    weights = [t for t in interpreter.get_tensor_details() if t["dtype"] == np.float32]
    assert not weights, [t["name"] for t in weights][:5]  # no float tensor anywhere: it runs on int8-only hardware
    _, probabilities = litert_predict(digits_run / "export" / INT8, images)
    keras_top1 = (expected.argmax(1) == labels).mean()
    int8_top1 = (probabilities.argmax(1) == labels).mean()
    assert keras_top1 > 0.85  # a learnt task: a model at chance would pass the comparison trivially
    assert abs(int8_top1 - keras_top1) <= 0.01, (int8_top1, keras_top1)


def test_the_model_card_states_each_files_size_and_test_accuracy(digits_run, test_set):
    images, labels, _ = test_set
    export = digits_run / "export"
    card = json.loads((export / "model_card.json").read_text())
    markdown = (export / "MODEL_CARD.md").read_text()
    for name in (FLOAT, INT8):
        entry = card["litert"][name]
        assert entry["bytes"] == (export / name).stat().st_size == card["checksums"][name]["bytes"]
        _, probabilities = litert_predict(export / name, images)
        assert entry["metrics"]["top1"] == pytest.approx((probabilities.argmax(1) == labels).mean(), abs=1e-9)
        assert entry["metrics"]["examples"] == len(labels)
        assert f"`{name}`: {entry['bytes'] / 1e6:.2f} MB, test top1 {entry['metrics']['top1']:.4f}" in markdown
    assert card["litert"][INT8]["bytes"] < card["litert"][FLOAT]["bytes"] / 3  # int8 weights: a quarter of float32


@pytest.mark.parametrize("name", [FLOAT, INT8])
def test_predict_takes_a_litert_file(digits_run, tmp_path, name):
    images, labels = digit_images()
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(png_bytes(images[i]))
    result = run_job("predict", "--model", str(digits_run / "export" / name), "--json", *map(str, paths), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    _, expected = litert_predict(digits_run / "export" / name, images[:6])
    assert [a["top"][0]["class_id"] for a in answers] == list(expected.argmax(1))
    assert [a["file"] for a in answers] == list(map(str, paths))


def test_predict_explain_with_a_litert_file_is_one_line(digits_run, tmp_path):
    image = tmp_path / "0.png"
    image.write_bytes(png_bytes(digit_images()[0][0]))
    result = run_job("predict", "--model", str(digits_run / "export" / FLOAT), "--explain", str(tmp_path / "cams"),
                     str(image), timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: --explain: Grad-CAM needs the model's gradients, which a LiteRT file does not have; explain with "
        "export/model.keras or --run-dir RUN"]


@pytest.mark.timeout(600)
def test_serve_takes_a_litert_file(digits_run, tmp_path):
    images, _ = digit_images()
    server = ServeProcess.start(["--model", str(digits_run / "export" / INT8)], log_path=tmp_path / "serve.log")
    try:
        server.wait_ready()
        reply = post_files(server.url, [(f"{i}.png", png_bytes(images[i])) for i in range(4)], query="?top=3")
        assert reply.status == 200, reply.body
        _, expected = litert_predict(digits_run / "export" / INT8, images[:4])
        for prediction, row in zip(reply.json["predictions"], expected):
            assert [t["class_id"] for t in prediction["top"]] == list(np.argsort(-row, kind="stable")[:3])
            assert prediction["top"][0]["probability"] == pytest.approx(row.max(), abs=1e-6)
        explained = post_files(server.url, [("0.png", png_bytes(images[0]))], query="?explain=true")
        assert explained.status == 200, explained.body
        assert "a LiteRT file does not have" in explained.json["gradcam_error"]
        assert "gradcam" not in explained.json["predictions"][0]
        # docs/serving.md: no TensorFlow thread count for a file that runs on its interpreter's own threads
        assert get(server.url + "/v1/model").json["model_threads"] is None
    finally:
        server.stop()


@pytest.mark.parametrize("with_card", [True, False], ids=["card", "no card"])
def test_a_truncated_litert_file_is_one_line_and_exit_2(digits_run, tmp_path, with_card):
    from tests.support.trainer_runs import free_loopback_ports

    model = tmp_path / FLOAT
    data = (digits_run / "export" / FLOAT).read_bytes()
    model.write_bytes(data[:len(data) // 2])
    if with_card:
        shutil.copy(digits_run / "export" / "model_card.json", tmp_path / "model_card.json")
    image = tmp_path / "0.png"
    image.write_bytes(png_bytes(digit_images()[0][0]))
    port = str(free_loopback_ports(1)[0])
    for command in (["predict", "--model", str(model), str(image)], ["serve", "--model", str(model), "--port", port]):
        result = run_job(*command, timeout=120)
        assert result.returncode == 2, (command, result.stderr[-3000:])
        assert result.stdout == "" and len(result.stderr.splitlines()) == 1, (command, result.stderr[-3000:])
        why = "model_card.json says" if with_card else "not a valid LiteRT flatbuffer"
        assert result.stderr.startswith(f"error: --model {model} is damaged or truncated (") and why in result.stderr
    assert model.read_bytes() == data[:len(data) // 2]  # nothing rewritten


@pytest.mark.timeout(600)
@pytest.mark.parametrize("litert", [True, False])
def test_the_export_command_follows_export_litert(digits_run, tmp_path, litert):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    shutil.rmtree(run / "export")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["export"]["litert"] = litert
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = run_job("export", "--run-dir", str(run), timeout=500)
    assert result.returncode == 0, result.stderr[-3000:]
    card = json.loads((run / "export" / "model_card.json").read_text())
    assert (run / "export" / FLOAT).is_file() is litert and (run / "export" / INT8).is_file() is litert
    assert ("litert" in card) is litert and (FLOAT in card["checksums"]) is litert
    assert (run / "export" / "model.keras").is_file()  # the other exports either way
    if litert:
        assert card["litert"][FLOAT]["metrics"]["examples"] == 359
