"""Which weights a command uses: the one selection behind evaluate, report, export, predict and serve.

    --checkpoint latest      the run's newest committed checkpoint (the default of every command)
    --checkpoint best        the committed checkpoint with the best validation top-1 (runs with a validation split)
    --checkpoint PREFIX      one checkpoint by its prefix: RUN/checkpoints/ckpt-1200-1a2b3c4d (its .index beside it)
    --model FILE             an exported model file (.keras, .h5, or a LiteRT .tflite), with classes.json and
                             model_card.json beside it

`check` makes the cheap checks without TensorFlow (the CLI refuses a bad selection in one line before TensorFlow is
imported, serve before it opens its port); `choose` finds the checkpoint in a run's store, `load` rebuilds the model
and restores the weights into it for inference. Every command says the same thing about the same problem. A new
source of weights (the averaged weights, a LiteRT file) is one new case in these three functions.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from job.errors import UserError, first_line
from job.layout import CKPT_DIR, CONFIG_FILE

if TYPE_CHECKING:
    from job.checkpoint import CheckpointStore, Committed
    from job.config import Config

LATEST, BEST = "latest", "best"
NAMED = (LATEST, BEST)
DEFAULT = LATEST
MODEL_SUFFIXES = (".keras", ".h5", ".tflite")  # .tflite: job/litert.py


@dataclass(frozen=True)
class Selection:
    """A run's checkpoint (`run_dir` with `checkpoint`: latest, best or a prefix) or an exported `model_file`."""
    run_dir: str | None = None
    checkpoint: str = DEFAULT
    model_file: str | None = None
    trained: bool = False  # a run with train.ema_decay: its trained weights rather than their average (the default)

    @property
    def is_prefix(self) -> bool:
        return self.checkpoint not in NAMED

    @property
    def label(self) -> str:
        """latest, best, a checkpoint's name (ckpt-1200-1a2b3c4d) or a file's (model.keras): reports and metrics."""
        return Path(self.model_file or self.checkpoint).name

    def describe(self, step: int | None = None) -> str:
        """For people: "latest checkpoint (step 1200)", "checkpoint ckpt-1200-1a2b3c4d", "model.keras"."""
        if self.model_file:
            return self.label
        what = f"checkpoint {self.label}" if self.is_prefix else f"{self.label} checkpoint"
        return what if step is None or self.is_prefix else f"{what} (step {step})"


def no_best(url: str) -> UserError:
    return UserError(f"{url} has no best checkpoint: it has no validation split (data.validation_split=0); use "
                     f"--checkpoint latest")


def no_checkpoint(url: str) -> UserError:
    return UserError(f"{url} has no committed checkpoint yet; train first (or wait for the first checkpoint)")


def check_model_file(path: str) -> None:
    """The cheap checks of --model FILE."""
    file = Path(path)
    if not file.is_file():
        what = "is a directory" if file.is_dir() else "does not exist"
        raise UserError(f"--model {path} {what}; give a run's export/model.keras (or --run-dir RUN)")
    if file.suffix not in MODEL_SUFFIXES:
        raise UserError(f"--model {path} is not a .keras, .h5 or .tflite file; give a run's export/model.keras (or "
                        f"--run-dir RUN for its checkpoints)")
    from job.modelfile import check_intact

    check_intact(path)  # truncated or damaged, or not the file its model card describes


def check(selection: Selection) -> None:
    """What can be checked without TensorFlow: the file exists; the run exists, is a run, has a committed checkpoint,
    and has what `best` or a prefix needs. A UserError names the problem and the fix."""
    if selection.model_file:
        return check_model_file(selection.model_file)
    from job.commits import committed_steps
    from job.storage import open_storage

    run_dir = selection.run_dir
    storage = open_storage(run_dir)
    try:
        if not storage.is_remote and not storage.root.is_dir():
            what = "is not a directory" if storage.root.exists() else "does not exist"
            raise UserError(f"--run-dir {run_dir} {what}; give the run.dir of a training run (local or gs://)")
        if not storage.exists(CONFIG_FILE):
            raise UserError(f"--run-dir {run_dir} is not a run directory (it has no {CONFIG_FILE}); give the run.dir "
                            f"that `python -m job train` wrote")
        if selection.is_prefix:
            return _check_prefix(selection.checkpoint)
        if selection.checkpoint == BEST and not _has_validation(storage):
            raise no_best(run_dir)
        if selection.trained and not _averages_weights(storage):
            raise UserError(f"--trained-weights: {run_dir} keeps no averaged weights (train.ema_decay=0), so its "
                            f"weights are the trained ones already; drop --trained-weights")
        if not committed_steps(storage):
            raise no_checkpoint(run_dir)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - gs:// errors come in many types; one line says which
        raise UserError(f"cannot read --run-dir {run_dir} ({type(e).__name__}: {first_line(e)})") from None


def _check_prefix(prefix: str) -> None:
    from job.storage import open_storage

    folder, name = prefix.rstrip("/").rsplit("/", 1) if "/" in prefix else (".", prefix)
    if not open_storage(folder).exists(f"{name}.index"):
        raise UserError(f"--checkpoint {prefix} is not a checkpoint (no {prefix}.index); give latest, best or a "
                        f"prefix such as RUN/{CKPT_DIR}/ckpt-1200-1a2b3c4d")


def _has_validation(storage) -> bool:
    from job.runconfig import stored_config

    tree = stored_config(storage) or {}
    return bool((tree.get("data") or {}).get("validation_split"))


def _averages_weights(storage) -> bool:
    from job.runconfig import stored_config

    tree = stored_config(storage) or {}
    return bool((tree.get("train") or {}).get("ema_decay"))


def choose(store: CheckpointStore, selection: Selection) -> Committed:
    """The checkpoint `selection` names in the run of `store`, verified (downloaded for a gs:// run); a damaged newest
    (or best) checkpoint falls back to the one before, as training does."""
    from job.checkpoint import Committed

    if selection.is_prefix:
        prefix = _local_prefix(store, selection.checkpoint)
        _check_readable(prefix)  # it has no commit object to verify it against
        return Committed(step=_step_of(selection.checkpoint), prefix=prefix)
    chosen = store.latest() if selection.checkpoint == LATEST else store.best()
    if chosen is None:
        if store.damaged_reason():
            raise UserError(f"{store.run.url} {store.damaged_reason()}")
        if selection.checkpoint == BEST and store.latest() is not None:
            raise no_best(store.run.url)
        raise no_checkpoint(store.run.url)
    return chosen


def _check_readable(prefix: str) -> None:
    """Every tensor of the checkpoint `prefix` reads back (TensorBundle checks each one's CRC), or a one-line
    UserError: before Checkpoint.read, which would fail half-way with a traceback."""
    import re

    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except tf.errors.OpError as e:
        why = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", first_line(e.message))
        raise UserError(f"checkpoint {prefix} cannot be read ({type(e).__name__}: {why}); give another prefix, or "
                        f"'latest' for the newest one that verifies") from None


def restore(checkpoint, ema, prefix: str, selection: Selection) -> str:
    """Read the checkpoint `prefix` into the model of `checkpoint` (and into `ema`, the run's weight average, if it
    keeps one), then put the weights `selection` asks for into the model: the averaged ones unless it asks for the
    trained ones. Returns which: "averaged" or "trained"."""
    checkpoint.read(prefix).expect_partial()
    if ema is None or selection.trained:
        return "trained"
    ema.copy_into_model()
    return "averaged"


def _step_of(prefix: str) -> int:
    import re

    match = re.fullmatch(r"ckpt-(\d+)(?:-[0-9a-f]{8})?", Path(prefix).name)
    return int(match.group(1)) if match else -1


def _local_prefix(store: CheckpointStore, prefix: str) -> str:
    """A prefix TensorFlow can read here: a local one as given; a gs:// one downloaded into the run's working copy."""
    if not prefix.startswith("gs://"):
        return prefix
    from job.storage import open_storage

    folder, name = prefix.rstrip("/").rsplit("/", 1)
    storage = open_storage(folder)
    local = store.dir / name
    for relpath in storage.list(name + "."):
        storage.get_file(relpath, store.dir / relpath)
    return str(local)


@dataclass
class Loaded:
    """A model with the weights a selection named, ready for inference (float32, one device)."""
    model: Any  # keras.Model
    cfg: Config | None  # the run's config (None for an exported file)
    classes: list[str]
    weights: str  # what was loaded, for people: "latest checkpoint (step 1200)", "model.keras"
    step: int | None = None  # the checkpoint's step (None for an exported file)
    card: dict | None = None  # an exported file's model_card.json


def load(selection: Selection) -> Loaded:
    """Rebuild the run's model and restore the selected checkpoint into it, or load the exported file."""
    check(selection)
    if selection.model_file:
        return _load_file(selection.model_file)
    import tensorflow as tf

    from job.builder import inference_average
    from job.checkpoint import CheckpointStore
    from job.metrics import best_metric
    from job.runconfig import load_run_config
    from job.rundir import RunDir

    run = RunDir.open(selection.run_dir)
    try:
        cfg = load_run_config(run.storage)
        classes = run_classes(run, cfg)
        chosen = choose(CheckpointStore(run, keep=cfg.checkpoint.keep, best_metric=best_metric(cfg)), selection)
        model = build_inference_model(cfg, len(classes))
        ema = inference_average(model, cfg)
        checkpoint = tf.train.Checkpoint(model=model, **({"ema": ema.trackable} if ema else {}))
        try:
            which = restore(checkpoint, ema, chosen.prefix, selection)
        except (tf.errors.OpError, ValueError, AssertionError) as e:
            raise UserError(f"could not restore {chosen.prefix} into the run's {cfg.model.name} "
                            f"({type(e).__name__}: {first_line(e, 200)})") from None
    finally:
        run.close(timeout=10.0)
    weights = selection.describe(chosen.step) + (", averaged weights" if which == "averaged" else "")
    return Loaded(model=model, cfg=cfg, classes=classes, weights=weights, step=chosen.step)


def _load_file(path: str) -> Loaded:
    import json

    from job.layout import CLASSES_FILE, MODEL_CARD_FILE

    file = Path(path)
    if file.suffix == ".tflite":
        from job.litert import LiteRTModel

        model = LiteRTModel(path)  # a UserError of its own for a file that is not a LiteRT model
    else:
        model = _load_keras_file(path)

    def beside(name: str) -> dict:
        try:
            value = json.loads(file.with_name(name).read_text())
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    classes = beside(CLASSES_FILE).get("classes") or [f"class_{i}" for i in range(int(model.output_shape[-1]))]
    return Loaded(model=model, cfg=None, classes=list(classes), weights=file.name, card=beside(MODEL_CARD_FILE))


def _load_keras_file(path: str):
    from job.models import load_model

    try:
        return load_model(path)
    except Exception as e:  # noqa: BLE001 - keras raises many types for a file that is not a saved model
        raise UserError(f"could not load {path} as a Keras model ({first_line(e)}); give an intact "
                        f"export/model.keras (or --run-dir RUN)") from None


def build_inference_model(cfg: Config, num_classes: int):
    """The run's full model with untrained weights, to restore a checkpoint into: float32, on one device, without
    downloading ImageNet weights that the checkpoint replaces anyway. evaluate, report and export use it too."""
    import dataclasses

    import keras

    from job.models import MODELS
    from job.models.assembly import build_full_model

    keras.mixed_precision.set_global_policy("float32")  # the checkpoint's float32 variables; exact on a CPU
    if MODELS[cfg.model.name].transfer:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights="none"))
    return build_full_model(cfg, num_classes, (cfg.data.image_size, cfg.data.image_size, 3))


def run_classes(run, cfg: Config) -> list[str]:
    """The class names of a run: its classes.json, or (runs from before it was written) the dataset's."""
    import logging

    from job.layout import CLASSES_FILE

    stored = run.read_json(CLASSES_FILE)
    if stored and stored.get("classes"):
        return list(stored["classes"])
    logging.getLogger("job").info("%s has no %s (an older run); reading the class names from the %s dataset",
                                  run.url, CLASSES_FILE, cfg.data.name)
    from job.data import load_splits

    return list(load_splits(cfg.data, cfg.train.seed).class_names)
