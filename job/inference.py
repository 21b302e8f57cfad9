"""A trained model ready to classify images: `predict`, `serve` and the exports' tests use it.

    classifier = Classifier.from_run("runs/cifar10_resnet20", checkpoint="best")   # or Classifier.from_file(...)
    probabilities = classifier.predict(images)          # uint8 (n, S, S, 3), e.g. job.images.decode(data, S)
    classifier.top(probabilities[0], k=5)               # [(class id, class name, probability), ...]

From a run, the model is rebuilt from the run's config and a committed checkpoint is restored into it (no dataset is
loaded: the class names are the run's classes.json), so a run can be used while it is still training. From a file,
the exported model (.keras, .h5 or LiteRT .tflite) is loaded with the model card and class names beside it.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass, field

import numpy as np

from job.errors import UserError
from job.layout import METRICS_FILE
from job.weights import DEFAULT, Selection

log = logging.getLogger("job")

_PREDICT_BATCH = 256


@dataclass
class ModelInfo:
    """What a user of the model is told about it (`GET /v1/model`, the page's header, the model card)."""
    model: str
    dataset: str
    classes: list[str]
    image_size: int
    source: str  # the run dir or file it came from
    weights: str  # "latest checkpoint (step 1200)", "export/model.keras", ...
    metrics: dict = field(default_factory=dict)  # the final evaluation's loss/top1/top5/examples/step, when known

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Classifier:
    def __init__(self, model, info: ModelInfo, tta: str = "off"):
        import tensorflow as tf

        from job.tta import tta_logits

        self.model = model
        self.info = info
        self.tta = tta  # test-time augmentation around the model (job/tta.py); the model itself stays TTA-free
        size = info.image_size
        # one trace for every batch size; the model's own graph, not Keras' per-call dispatch
        self._logits = tf.function(
            lambda x: tta_logits(lambda v: tf.cast(model(v, training=False), tf.float32), x, tta),
            input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
        self._lock = threading.Lock()

    @property
    def class_names(self) -> list[str]:
        return self.info.classes

    @property
    def image_size(self) -> int:
        return self.info.image_size

    # ---------------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, selection: Selection, tta: str = "off") -> Classifier:
        """The model and weights `selection` names (job/weights.py), predicting under test-time augmentation
        `tta`."""
        from job.weights import load

        loaded = load(selection)
        side = int(loaded.model.input_shape[1])
        if loaded.cfg is not None:
            cfg = loaded.cfg
            metrics = _read_run_metrics(selection.run_dir)
            evaluation = _headline(metrics) if metrics.get("step") == loaded.step else {}
            info = ModelInfo(model=cfg.model.name, dataset=dataset_name(cfg), classes=loaded.classes,
                             image_size=side, source=selection.run_dir, weights=loaded.weights, metrics=evaluation)
        else:
            card = loaded.card or {}
            # a LiteRT file's own test metrics (the model card's litert section), else the Keras model's
            metrics = (card.get("litert") or {}).get(loaded.weights, {}).get("metrics") or card.get("metrics", {})
            info = ModelInfo(model=card.get("model", loaded.model.name), dataset=card.get("dataset", "unknown"),
                             classes=loaded.classes, image_size=side, source=selection.model_file,
                             weights=loaded.weights, metrics=metrics)
        log.info("loaded %s (%s, %d classes) from %s, %s", info.model, info.dataset, len(info.classes), info.source,
                 info.weights)
        from job.litert import LiteRTClassifier, LiteRTModel

        if isinstance(loaded.model, LiteRTModel):
            if tta != "off":
                raise UserError(f"--tta {tta} needs the Keras model: a LiteRT file is run as it was exported; give "
                                f"--tta off, or the run's export/model.keras")
            return LiteRTClassifier(loaded.model, info)
        if tta != "off":
            from job.tta import describe

            info.weights += f", {describe(tta)}"
            log.info("predicting with %s", describe(tta))
        return cls(loaded.model, info, tta)

    @classmethod
    def from_run(cls, run_dir: str, checkpoint: str = DEFAULT, tta: str = "off") -> Classifier:
        return cls.load(Selection(run_dir=run_dir, checkpoint=checkpoint), tta)

    @classmethod
    def from_file(cls, path: str, tta: str = "off") -> Classifier:
        return cls.load(Selection(model_file=path), tta)

    # ------------------------------------------------------------------------------------------------- inference
    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities, float32 (n, classes), of uint8 or float images (n, S, S, 3) in [0, 255]."""
        import tensorflow as tf

        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"images must be (n, {self.image_size}, {self.image_size}, 3), got {images.shape}")
        out = [np.zeros((0, len(self.class_names)), np.float32)]
        with self._lock:  # one batch at a time uses every core; interleaving would only add memory
            for start in range(0, len(images), _PREDICT_BATCH):
                batch = tf.constant(images[start:start + _PREDICT_BATCH], tf.float32)
                out.append(tf.nn.softmax(self._logits(batch)).numpy())
        return np.concatenate(out)

    def top(self, probabilities: np.ndarray, k: int = 5) -> list[tuple[int, str, float]]:
        """The k likeliest classes of one image's probabilities, likeliest first."""
        order = np.argsort(-probabilities, kind="stable")[:k]
        return [(int(i), self.class_names[i], float(probabilities[i])) for i in order]

    def explain(self, images: np.ndarray, class_indices=None) -> np.ndarray:
        """Grad-CAM heat maps (n, S, S) in [0, 1] for each image's predicted class (or `class_indices`)."""
        from job.gradcam import gradcam

        with self._lock:
            return gradcam(self.model, images, class_indices)


def dataset_name(cfg) -> str:
    return cfg.data.name + (" (superclasses)" if cfg.data.label_mode == "coarse" else "")


def _headline(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("top1", "top5", "loss", "examples", "step", "checkpoint") if k in metrics}


def load_classifier(run_dir: str | None, model_file: str | None, checkpoint: str = DEFAULT) -> Classifier:
    """What `--run-dir DIR [--checkpoint C]` or `--model FILE` names (job/cli.py add_weights_arguments)."""
    return Classifier.load(Selection(run_dir=run_dir, checkpoint=checkpoint, model_file=model_file))


def _read_run_metrics(run_dir: str) -> dict:
    """The run's final evaluation, if it has one (shown when it is of the weights loaded)."""
    from job.storage import open_storage

    try:
        return open_storage(run_dir).read_json(METRICS_FILE) or {}
    except Exception:  # noqa: BLE001 - a damaged or unreadable file only means no metrics to show
        return {}


def prediction_record(file: str, top: list[tuple[int, str, float]]) -> dict:
    """One image's answer, the same in `predict --json` and `POST /v1/predict`."""
    return {"file": file, "top": [{"class_id": i, "class": name, "probability": round(p, 6)} for i, name, p in top]}
