"""Every export of a real trained run (export/: .keras, .h5, SavedModel with two signatures, classes, model card)
loads in a fresh process and gives the trained model's predictions."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.support.sample_images import digit_images
from tests.support.trainer_runs import trainer_env

# A fresh process per export: nothing of the project is imported before the loader runs.
LOADERS = {
    "keras": "from job.models import load_model\n"
             "model = load_model(f'{run}/export/model.keras')\n"
             "out = tf.nn.softmax(model(images.astype('float32'), training=False)).numpy()",
    "h5": "from job.models import load_model\n"
          "model = load_model(f'{run}/export/model.h5')\n"
          "out = tf.nn.softmax(model(images.astype('float32'), training=False)).numpy()",
    # TensorFlow alone, as TensorFlow Serving reads it: the project's code is not needed to load a SavedModel
    "saved_model": "loaded = tf.saved_model.load(f'{run}/export/saved_model')\n"
                   "answer = loaded.signatures['serving_default'](images=tf.constant(images, tf.float32))\n"
                   "out = answer['probabilities'].numpy()\n"
                   "assert [n.decode() for n in answer['class_names'].numpy()] == [str(i) for i in out.argmax(1)]",
    "saved_model_uint8": "loaded = tf.saved_model.load(f'{run}/export/saved_model')\n"
                         "answer = loaded.signatures['serving_uint8'](images=tf.constant(images, tf.uint8))\n"
                         "out = answer['probabilities'].numpy()\n"
                         "assert (answer['class_ids'].numpy() == out.argmax(1)).all()",
}
SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf
run = sys.argv[1]
images = np.load(sys.argv[2])
{loader}
print(json.dumps(out.tolist()))
"""


@pytest.fixture(scope="module")
def reference(digits_run, tmp_path_factory):
    """Digits and the trained model's probabilities for them: the run's final checkpoint restored here."""
    from job.inference import Classifier

    images = np.stack([image for image, _ in digit_images(40)])
    path = tmp_path_factory.mktemp("exports") / "images.npy"
    np.save(path, images)
    return path, Classifier.from_run(str(digits_run)).predict(images)


@pytest.mark.parametrize("export", sorted(LOADERS))
def test_each_export_loads_in_a_fresh_process_and_predicts_as_the_trained_model(export, digits_run, reference):
    path, expected = reference
    script = SCRIPT.format(loader=LOADERS[export])
    result = subprocess.run([sys.executable, "-c", script, str(digits_run), str(path)], cwd=path.parent,
                            env=trainer_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    probabilities = np.array(json.loads(result.stdout.strip().splitlines()[-1]))
    assert probabilities.shape == expected.shape
    assert np.abs(probabilities - expected).max() <= 1e-5
    assert (probabilities.argmax(1) == expected.argmax(1)).all()


def test_class_names_and_model_card_describe_the_model(digits_run):
    export = digits_run / "export"
    assert json.loads((export / "classes.json").read_text()) == {"classes": [str(d) for d in range(10)]}
    assert json.loads((digits_run / "classes.json").read_text())["classes"] == [str(d) for d in range(10)]
    card = json.loads((export / "model_card.json").read_text())
    metrics = json.loads((digits_run / "eval" / "metrics.json").read_text())
    assert card["model"] == "simple_cnn" and card["dataset"] == "digits" and card["classes"] == 10
    assert card["input"]["shape"] == [None, 32, 32, 3] and card["input"]["range"] == [0, 255]
    assert "centre square crop" in card["preprocessing"] and "standardize" in card["preprocessing"]
    assert {k: card["metrics"][k] for k in ("top1", "top5", "loss", "examples")} == {
        k: metrics[k] for k in ("top1", "top5", "loss", "examples")}
    markdown = (export / "MODEL_CARD.md").read_text()
    assert markdown.startswith("# simple_cnn on digits") and f"top1 {metrics['top1']:.4f}" in markdown
