"""LiteRT (TensorFlow Lite) exports of a trained model, and running them (`predict --model` / `serve --model`).

    export/model.tflite        float32: images (n, S, S, 3) in [0, 255] -> probabilities (n, classes)
    export/model_int8.tflite   full-integer post-training quantization (every op int8, calibrated on training images):
                               uint8 images (n, S, S, 3) -> uint8 probabilities (scale 1/256), for int8-only devices

Both are converted from a tf.function over the Keras model (TFLiteConverter.from_keras_model fails on Keras 3 models:
tensorflow#63867) and are loaded with the maintained runtime, `ai_edge_litert` (tf.lite is leaving TensorFlow).
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np

from job.errors import UserError, first_line
from job.inference import Classifier, ModelInfo
from job.layout import LITERT_FILE, LITERT_INT8_FILE

log = logging.getLogger("job")

FLOAT_FILE = Path(LITERT_FILE).name
INT8_FILE = Path(LITERT_INT8_FILE).name
SUFFIX = ".tflite"
_CHUNK = 256  # images per interpreter call
NO_GRADCAM = ("Grad-CAM needs the model's gradients, which a LiteRT file does not have; explain with "
              "export/model.keras or --run-dir RUN")


# ------------------------------------------------------------------------------------------------------ conversion
def convert(model, calibration: np.ndarray | None = None) -> bytes:
    """The LiteRT flatbuffer of a Keras `model` (images in [0, 255] -> probabilities): float32, or with `calibration`
    (uint8 training images) full-integer int8 with uint8 input and output."""
    import tempfile

    import keras
    import tensorflow as tf

    side = int(model.input_shape[1])
    archive = keras.export.ExportArchive()  # a SavedModel of one signature: its variables become constants
    archive.track(model)
    archive.add_endpoint("serving_default",
                         lambda images: {"probabilities": tf.nn.softmax(tf.cast(model(images, training=False),
                                                                                tf.float32))},
                         input_signature=[tf.TensorSpec([None, side, side, 3], tf.float32, name="images")])
    with tempfile.TemporaryDirectory(prefix="litert-") as folder:
        archive.write_out(folder, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        if calibration is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([image[None].astype(np.float32)] for image in calibration)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]  # or fail: no float fallback
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.uint8
        return converter.convert()


def calibration_images(x_train: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` training images drawn by `seed` (all of them if there are fewer): what int8's value ranges come from."""
    rng = np.random.default_rng([seed, 0x11E])
    chosen = rng.permutation(len(x_train))[:count]
    return x_train[np.sort(chosen)]


# ------------------------------------------------------------------------------------------------------- running
class LiteRTModel:
    """A .tflite file in ai_edge_litert's interpreter, with the input/output shapes the rest of the code reads."""

    def __init__(self, path: str):
        from ai_edge_litert.interpreter import Interpreter

        try:
            # every core this process may use, as TensorFlow does for the Keras path (LiteRT's default is one thread)
            self._interpreter = Interpreter(model_path=str(path), num_threads=len(os.sched_getaffinity(0)))
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise UserError(f"could not load {path} as a LiteRT model ({first_line(e)}); give an intact "
                            f"export/{FLOAT_FILE} or {INT8_FILE} (or --run-dir RUN)") from None
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        shape = self._input["shape"]
        if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3:
            raise UserError(f"--model {path} takes inputs of shape {list(shape)}, not images (n, S, S, 3); give a "
                            f"run's export/{FLOAT_FILE} or {INT8_FILE}")
        self.name = Path(path).stem
        self.input_shape = (None, int(shape[1]), int(shape[2]), 3)
        self.output_shape = (None, int(self._output["shape"][-1]))
        self.input_dtype = np.dtype(self._input["dtype"])
        self._batch = int(shape[0])
        self._lock = threading.Lock()  # an interpreter runs one call at a time

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """float32 (n, classes) of images (n, S, S, 3) in [0, 255], in chunks (bounded memory, as the Keras path)."""
        out = [np.zeros((0, self.output_shape[1]), np.float32)]
        for start in range(0, len(images), _CHUNK):
            out.append(self._invoke(images[start:start + _CHUNK]))
        return np.concatenate(out)

    def _invoke(self, images: np.ndarray) -> np.ndarray:
        with self._lock:
            if len(images) != self._batch:
                self._interpreter.resize_tensor_input(self._input["index"], [len(images), *self.input_shape[1:]])
                self._interpreter.allocate_tensors()
                self._batch = len(images)
            self._interpreter.set_tensor(self._input["index"], self._quantize(images))
            self._interpreter.invoke()
            out = self._interpreter.get_tensor(self._output["index"])
        scale, zero = self._output["quantization"]
        return ((out.astype(np.float32) - zero) * scale) if scale else out.astype(np.float32)

    def _quantize(self, images: np.ndarray) -> np.ndarray:
        scale, zero = self._input["quantization"]
        if not scale:  # a float model
            return np.asarray(images, self.input_dtype)
        info = np.iinfo(self.input_dtype)
        values = np.round(np.asarray(images, np.float32) / scale + zero)
        return np.clip(values, info.min, info.max).astype(self.input_dtype)


class LiteRTClassifier(Classifier):
    """Classifier's predict/top contract over a LiteRT model; explain() says Grad-CAM cannot run on it."""

    def __init__(self, model: LiteRTModel, info: ModelInfo):
        self.model = model
        self.info = info
        self._lock = threading.Lock()

    def predict(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"images must be (n, {self.image_size}, {self.image_size}, 3), got {images.shape}")
        return self.model.probabilities(images)

    def explain(self, images: np.ndarray, class_indices=None) -> np.ndarray:
        from job.gradcam import NoFeatureMapError

        raise NoFeatureMapError(NO_GRADCAM)


# ---------------------------------------------------------------------------------------------------- the export
def export_litert(export_dir: Path, model, splits, calibration_count: int, seed: int) -> dict:
    """export/model.tflite and model_int8.tflite from `model`, int8 calibrated on `splits`' training images; each
    evaluated on the test split. Returns the model card's `litert` section: {file: {bytes, metrics, input}}."""
    if splits is None:
        raise ValueError("the LiteRT exports need the run's data splits (calibration and test images)")
    calibration = calibration_images(splits.x_train, calibration_count, seed)
    card = {}
    for name, data, takes in ((FLOAT_FILE, convert(model), "float32 images in [0, 255]"),
                              (INT8_FILE, convert(model, calibration),
                               f"uint8 images; every op int8, calibrated on {len(calibration)} training images; "
                               f"probabilities as uint8 (scale 1/256)")):
        path = export_dir / name
        path.write_bytes(data)
        card[name] = {"bytes": len(data), "input": takes, "metrics": _test_metrics(path, splits)}
    return card


def _test_metrics(path: Path, splits) -> dict:
    """top-1 and top-5 on the test split (none without one): what the model card states for the file."""
    x_test, y_test = getattr(splits, "x_test", None), getattr(splits, "y_test", None)
    if x_test is None or not len(x_test):
        return {}
    probabilities = LiteRTModel(str(path)).probabilities(x_test)
    top5 = np.argsort(-probabilities, axis=1, kind="stable")[:, :5]
    return {"top1": float((top5[:, 0] == y_test).mean()), "top5": float((top5 == y_test[:, None]).any(1).mean()),
            "examples": int(len(y_test))}
