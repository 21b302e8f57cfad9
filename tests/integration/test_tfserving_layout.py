"""export/tfserving/<model>/1/ (job/export.py; docs/serving.md): the SavedModel in TensorFlow Serving's layout, loaded
the way TF Serving (and KServe's TF Serving runtime) does it: the highest numeric version folder under the model's base
path, tf.saved_model.load of it in a fresh process with only TensorFlow, its signatures by name."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from tests.support.sample_images import digit_images
from tests.support.trainer_runs import trainer_env

# TF Serving's file-system source: under --model_base_path, the version folders are the ones named by an integer.
SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf
base, images = sys.argv[1], np.load(sys.argv[2])
versions = sorted(int(p.name) for p in __import__('pathlib').Path(base).iterdir() if p.name.isdigit())
loaded = tf.saved_model.load(f"{base}/{versions[-1]}")
signatures = {}
for name, function in loaded.signatures.items():
    (spec,) = function.structured_input_signature[1].values()
    outputs = {k: [v.dtype.name, v.shape.as_list()] for k, v in function.structured_outputs.items()}
    signatures[name] = {"input": [spec.name, spec.dtype.name, spec.shape.as_list()], "outputs": outputs}
answers = {name: loaded.signatures[name](images=tf.constant(images, dtype))["probabilities"].numpy().tolist()
           for name, dtype in (("serving_default", tf.float32), ("serving_uint8", tf.uint8))}
print(json.dumps({"versions": versions, "signatures": signatures, "answers": answers}))
"""


def test_the_tfserving_folder_loads_as_tf_serving_does_and_answers_as_the_keras_model(digits_run, tmp_path):
    from job.inference import Classifier

    base = digits_run / "export" / "tfserving" / "simple_cnn"  # <model name>/<version>/
    assert {p.name for p in (base / "1").iterdir()} >= {"saved_model.pb", "variables"}
    assert (digits_run / "export" / "saved_model" / "saved_model.pb").is_file()  # the existing export stays
    images = np.stack([image for image, _ in digit_images(40)])
    np.save(tmp_path / "images.npy", images)
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(base), str(tmp_path / "images.npy")], cwd=tmp_path,
                            env=trainer_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["versions"] == [1]
    outputs = {"probabilities": ["float32", [None, 10]], "class_ids": ["int64", [None]],
               "class_names": ["string", [None]]}
    assert answer["signatures"] == {
        "serving_default": {"input": ["images", "float32", [None, 32, 32, 3]], "outputs": outputs},
        "serving_uint8": {"input": ["images", "uint8", [None, 32, 32, 3]], "outputs": outputs}}
    expected = Classifier.from_file(str(digits_run / "export" / "model.keras")).predict(images)
    for name, probabilities in answer["answers"].items():
        assert np.abs(np.array(probabilities) - expected).max() <= 1e-5, name
