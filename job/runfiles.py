"""What a run directory holds besides checkpoints: the effective config, and the exported model."""
from __future__ import annotations

import logging

import keras

from job import config as configlib
from job import models as modellib
from job.config import Config
from job.data import Preprocess
from job.errors import ConfigError
from job.rundir import RunDir
from job.runtime import seeded_weight_initialization

log = logging.getLogger("job")

CONFIG_FILE = "config.yaml"
EXPORT_FILE = "export/model.keras"

# Changing any of these would make the checkpoint mean something else: refused on resume.
# (`train.batch_size` is here because the step counter, and so the data position, is counted in global batches.)
IDENTITY_KEYS = ("model.", "data.name", "data.label_mode", "data.normalization", "data.validation_split",
                 "train.batch_size")


def prepare_run_config(run: RunDir, cfg: Config, write: bool) -> Config:
    """Check `cfg` against the config a previous start stored in the run; with `write`, store the effective one."""
    if run.fetch(CONFIG_FILE):
        stored_tree = configlib.parse_yaml((run.local / CONFIG_FILE).read_text(), f"{run.url}/{CONFIG_FILE}")
        stored = _flatten(stored_tree)
        current = _flatten(configlib.to_dict(cfg))
        changed = [k for k in current
                   if k.startswith(IDENTITY_KEYS) and k in stored and stored[k] != current[k]]
        if changed:
            k = changed[0]
            raise ConfigError(
                f"{run.url} was started with {k}={stored[k]!r}, now {k}={current[k]!r}; resuming would mix two "
                f"different runs: use another run.dir, or set {k}={stored[k]!r}"
            )
    if write:
        (run.local / CONFIG_FILE).write_text(configlib.to_yaml(cfg))
        run.publish(CONFIG_FILE)
    return cfg


def load_run_config(run: RunDir) -> Config:
    if not run.fetch(CONFIG_FILE):
        raise ConfigError(f"{run.url} has no {CONFIG_FILE}: it is not a run directory made by `python -m job train`")
    tree = configlib.parse_yaml((run.local / CONFIG_FILE).read_text(), f"{run.url}/{CONFIG_FILE}")
    return configlib.from_dict(tree)


def build_full_model(cfg: Config, num_classes: int, image_shape: tuple[int, ...]) -> keras.Model:
    """Raw pixels in [0, 255] -> preprocessing (its statistics are weights, so checkpoints and exports carry them)
    -> the registry's classifier -> float32 logits. Its initial weights depend on train.seed alone."""
    with seeded_weight_initialization(cfg.train.seed):
        inputs = keras.Input(shape=tuple(image_shape), name="image", dtype="float32")
        x = Preprocess(cfg.data.normalization, image_shape=tuple(image_shape), name="preprocess")(inputs)
        classifier = modellib.build_model(cfg.model, num_classes, tuple(image_shape))
        classifier.name = "classifier"
        outputs = classifier(x)
        return keras.Model(inputs, outputs, name=f"{cfg.model.name}_{cfg.data.name}")


def export_model(run: RunDir, model: keras.Model) -> None:
    path = run.local / EXPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    run.publish(EXPORT_FILE)
    log.info("exported the model with its preprocessing to %s/%s", run.url, EXPORT_FILE)


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[prefix + k] = v
    return flat
