"""A trained model ready to classify images: `predict`, `serve` and the exports' tests use it.

    classifier = Classifier.from_run("runs/cifar10_resnet20", checkpoint="best")   # or Classifier.from_file(...)
    probabilities = classifier.predict(images)          # uint8 (n, S, S, 3), e.g. job.images.decode(data, S)
    classifier.top(probabilities[0], k=5)               # [(class id, class name, probability), ...]

From a run, the model is rebuilt from the run's config and a committed checkpoint is restored into it (no dataset is
loaded: the class names are the run's classes.json), so a run can be used while it is still training. From a file,
the exported model (.keras or .h5) is loaded with the model card and class names beside it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from job.errors import UserError

log = logging.getLogger("job")

CHECKPOINTS = ("latest", "best")
CLASSES_FILE = "classes.json"  # in the run (written at the start of training) and in export/
MODEL_CARD_FILE = "model_card.json"  # in export/
METRICS_FILE = "eval/metrics.json"
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
    def __init__(self, model, info: ModelInfo):
        import tensorflow as tf

        self.model = model
        self.info = info
        size = info.image_size
        # one trace for every batch size; the model's own graph, not Keras' per-call dispatch
        self._logits = tf.function(lambda x: tf.cast(model(x, training=False), tf.float32),
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
    def from_run(cls, run_dir: str, checkpoint: str = "latest") -> Classifier:
        """The run's model at its newest committed checkpoint, or its best by validation top-1."""
        import tensorflow as tf

        from job.checkpoint import CheckpointStore
        from job.runconfig import load_run_config
        from job.rundir import RunDir

        if checkpoint not in CHECKPOINTS:
            raise UserError(f"--checkpoint {checkpoint!r} is not one of {', '.join(CHECKPOINTS)}")
        run = RunDir.open(run_dir)
        try:
            cfg = load_run_config(run.storage)
            classes = run_classes(run, cfg)
            store = CheckpointStore(run, keep=cfg.checkpoint.keep)
            chosen = store.latest() if checkpoint == "latest" else store.best()
            if chosen is None:
                why = ("has no committed checkpoint yet; train first" if checkpoint == "latest" else
                       "has no checkpoint scored on a validation split; use --checkpoint latest")
                raise UserError(f"{run.url} {why}")
            model = build_inference_model(cfg, len(classes))
            tf.train.Checkpoint(model=model).read(chosen.prefix).expect_partial()
            metrics = run.read_json(METRICS_FILE) or {}
        finally:
            run.close(timeout=10.0)
        evaluation = _headline(metrics) if metrics.get("step") == chosen.step else {}
        info = ModelInfo(model=cfg.model.name, dataset=_dataset_name(cfg), classes=classes,
                         image_size=_side(model), source=run.url,
                         weights=f"{checkpoint} checkpoint (step {chosen.step})", metrics=evaluation)
        log.info("loaded %s (%s, %d classes) from %s, %s", info.model, info.dataset, len(classes), run.url,
                 info.weights)
        return cls(model, info)

    @classmethod
    def from_file(cls, path: str) -> Classifier:
        """An exported model: export/model.keras or export/model.h5, with classes.json and model_card.json beside
        it when they are there (otherwise the classes are called class_0, class_1, ...)."""
        from job.models import load_model

        file = Path(path)
        if file.suffix not in (".keras", ".h5"):
            raise UserError(f"--model {path} is not a .keras or .h5 file; give a run's export/model.keras (or "
                            "--run-dir RUN for its checkpoints)")
        if not file.is_file():
            raise UserError(f"--model {path} does not exist; give a run's export/model.keras")
        try:
            model = load_model(str(file))
        except Exception as e:  # noqa: BLE001 - keras raises many types for a file that is not a saved model
            from job.errors import first_line

            raise UserError(f"could not load {path} as a Keras model ({first_line(e)})") from None
        card = _read_json(file.with_name(MODEL_CARD_FILE))
        classes = _read_json(file.with_name(CLASSES_FILE)).get("classes") or [
            f"class_{i}" for i in range(int(model.output_shape[-1]))]
        info = ModelInfo(model=card.get("model", model.name), dataset=card.get("dataset", "unknown"),
                         classes=list(classes), image_size=_side(model), source=str(file), weights=file.name,
                         metrics=card.get("metrics", {}))
        return cls(model, info)

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


def build_inference_model(cfg, num_classes: int):
    """The run's full model with untrained weights, to restore a checkpoint into: float32, on one device, without
    downloading ImageNet weights that the checkpoint replaces anyway."""
    import keras

    from job.models import MODELS
    from job.models.assembly import build_full_model

    keras.mixed_precision.set_global_policy("float32")  # the checkpoint's float32 variables; exact on a CPU
    if MODELS[cfg.model.name].transfer:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights="none"))
    return build_full_model(cfg, num_classes, (cfg.data.image_size, cfg.data.image_size, 3))


def run_classes(run, cfg) -> list[str]:
    """The class names of a run: its classes.json, or (runs from before it was written) the dataset's."""
    stored = run.read_json(CLASSES_FILE)
    if stored and stored.get("classes"):
        return list(stored["classes"])
    log.info("%s has no %s (an older run); reading the class names from the %s dataset", run.url, CLASSES_FILE,
             cfg.data.name)
    from job.data import load_splits

    return list(load_splits(cfg.data, cfg.train.seed).class_names)


def _dataset_name(cfg) -> str:
    return cfg.data.name + (" (superclasses)" if cfg.data.label_mode == "coarse" else "")


def _headline(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("top1", "top5", "loss", "examples", "step", "checkpoint") if k in metrics}


def _side(model) -> int:
    return int(model.input_shape[1])


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def load_classifier(run_dir: str | None, model_file: str | None, checkpoint: str = "latest") -> Classifier:
    """What `--run-dir DIR [--checkpoint C]` or `--model FILE` names (job/cli.py add_model_arguments)."""
    return Classifier.from_run(run_dir, checkpoint) if run_dir else Classifier.from_file(model_file)


def prediction_record(file: str, top: list[tuple[int, str, float]]) -> dict:
    """One image's answer, the same in `predict --json` and `POST /v1/predict`."""
    return {"file": file, "top": [{"class_id": i, "class": name, "probability": round(p, 6)} for i, name, p in top]}
