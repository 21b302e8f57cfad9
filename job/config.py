"""The one config schema: frozen dataclasses with defaults in code, YAML presets and `a.b=value` overrides on top.

A preset only states what differs from the defaults. Every value is checked against the type the schema declares,
and an unknown key is refused with the valid keys near it listed.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from job.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class AugmentConfig:
    crop_padding: int = 4  # pixels of padding before the random crop; 0 turns the crop off
    flip: bool = True
    rotation_degrees: float = 0.0  # random rotation in [-x, x]; 0 turns it off
    zoom: float = 0.0  # random zoom in [1-x, 1+x]; 0 turns it off
    cutout: int = 0  # side of the square cut out of each image; 0 turns it off


@dataclass(frozen=True)
class DataConfig:
    name: str = "cifar100"  # cifar10 | cifar100 | digits | synthetic
    dir: str = "data"  # where the official archives are (or are downloaded to)
    download: bool = True  # fetch the official archive when it is not in `dir`
    md5: str = ""  # expected MD5 of the archive; empty = the published MD5 of the official archive
    label_mode: str = "fine"  # CIFAR-100 only: fine (100 classes) | coarse (20 superclasses)
    validation_split: float = 0.0  # fraction of train held out for validation, chosen by train.seed
    normalization: str = "standardize"  # standardize (per-channel mean/std) | gcn_zca | none
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    synthetic_examples: int = 1024  # size of the synthetic training set; only with name=synthetic


@dataclass(frozen=True)
class ModelConfig:
    name: str = "resnet18"
    dropout: float = 0.0  # for models that take one (mlp, simple_cnn, heads of transfer models)
    l2: float = 0.0  # L2 penalty on kernels, added as layer losses (the ELU recipe uses it instead of weight decay)
    weights: str = "imagenet"  # transfer models: "imagenet" (downloaded or cached), a path to a weights file, or none
    input_size: int = 0  # transfer models: side the 32x32 images are resized to; 0 = the model's default
    unfreeze_top: int = 0  # transfer models: backbone layers made trainable in the fine-tuning phase


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.2  # per 256 images (0.1 at batch 128); the effective LR is lr * global_batch / 256
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # decoupled for adamw; added to the loss as L2 for sgd
    clip_norm: float = 0.0  # global gradient norm clip; 0 turns it off
    label_smoothing: float = 0.0
    schedule: str = "cosine"  # cosine | step | constant
    warmup_epochs: float = 0.0
    step_epochs: tuple[float, ...] = ()  # step schedule: epochs at which the LR is multiplied by step_factor
    step_factor: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128  # global: split evenly over all replicas
    seed: int = 0
    deterministic: bool = False  # op determinism; slower, for exact reproducibility and resume tests
    precision: str = "float32"  # float32 | mixed_float16 | mixed_bfloat16
    jit_compile: bool = False  # XLA
    finetune_epochs: int = 0  # transfer models: epochs of phase 2 (backbone top unfrozen) after `epochs` of phase 1
    finetune_lr_factor: float = 0.1  # phase-2 LR relative to phase 1
    early_stopping_patience: int = 0  # epochs without a better validation top-1 before stopping; 0 turns it off
    eval_batch_size: int = 500
    max_steps_per_epoch: int = 0  # cap for smoke runs and benchmarks; 0 = a full pass over the data


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 500  # also saved at each epoch end
    keep: int = 3  # newest checkpoints kept; the best by validation top-1 is kept as well
    upload_timeout_seconds: float = 600.0  # gs:// runs: how long the end of the job waits for uploads


@dataclass(frozen=True)
class RunConfig:
    dir: str = "runs/{preset}"  # local path or gs://bucket/prefix; {preset} is replaced by the preset name
    work_dir: str = ""  # local working copy for remote runs; default: a folder under the system temp dir
    summary_flush_seconds: float = 60.0  # how often TensorBoard event files are flushed (and uploaded)
    progress: bool = True  # progress bar; off in CI logs
    # train metrics (progress, TensorBoard scalars, the divergence check) every this many steps and at each epoch's
    # end; 0: a quarter of an epoch, at most 100 steps. Each read waits for the steps queued before it.
    log_every_steps: int = 0


@dataclass(frozen=True)
class DistributeConfig:
    backend: str = "auto"  # auto | single | mirrored | multiworker | horovod
    collective_timeout_seconds: float = 300.0  # a dead peer makes the others fail after this long instead of hanging
    cpu_devices: int = 0  # mirrored without GPUs: split the CPU into this many replicas (tests, rehearsals)


@dataclass(frozen=True)
class Config:
    preset: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    run: RunConfig = field(default_factory=RunConfig)
    distribute: DistributeConfig = field(default_factory=DistributeConfig)

    @property
    def run_dir(self) -> str:
        return self.run.dir.replace("{preset}", self.preset)


CHOICES = {
    "data.name": ("cifar10", "cifar100", "digits", "synthetic"),
    "data.label_mode": ("fine", "coarse"),
    "data.normalization": ("standardize", "gcn_zca", "none"),
    "optim.name": ("sgd", "adamw"),
    "optim.schedule": ("cosine", "step", "constant"),
    "train.precision": ("float32", "mixed_float16", "mixed_bfloat16"),
    "distribute.backend": ("auto", "single", "mirrored", "multiworker", "horovod"),
}


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every leaf key of the schema as a dotted path, e.g. `train.batch_size`."""
    keys = []
    for f in dataclasses.fields(cls):
        t = _field_types(cls)[f.name]
        if dataclasses.is_dataclass(t):
            keys += all_keys(t, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description (the first comment line of the YAML file)."""
    presets = {}
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        first = path.read_text().splitlines()[0] if path.read_text() else ""
        presets[path.stem] = first.lstrip("# ").strip()
    return presets


def load_config(config: str | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults, then the preset or YAML file `config`, then `key=value` overrides; validated."""
    tree: dict[str, Any] = {}
    preset = "custom"
    if config:
        path = Path(config)
        if config.endswith((".yaml", ".yml")) or os.sep in config:
            if not path.is_file():
                raise ConfigError(f"config file {config} does not exist; give a preset name or a YAML path")
            preset = path.stem
        else:
            path = PRESET_DIR / f"{config}.yaml"
            if not path.is_file():
                raise ConfigError(
                    f"unknown preset {config!r}{_did_you_mean(config, list_presets())}; "
                    "`python -m job presets` lists them"
                )
            preset = config
        tree = parse_yaml(path.read_text(), str(path))
    tree.setdefault("preset", preset)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value; write e.g. train.epochs=10")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return from_dict(tree)


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML ({str(e).splitlines()[0]}); fix the syntax") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{source} must be a YAML mapping of config sections, e.g. 'train: {{epochs: 10}}'")
    return tree


def from_dict(tree: dict[str, Any]) -> Config:
    cfg = _build(Config, tree, "")
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def validate(cfg: Config) -> None:
    for key, choices in CHOICES.items():
        value = _get_dotted(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}")
    from job.models import MODELS  # the registry owns the list of model names

    if cfg.model.name not in MODELS:
        raise ConfigError(
            f"unknown model {cfg.model.name!r}{_did_you_mean(cfg.model.name, MODELS)}; "
            f"valid: {', '.join(sorted(MODELS))}"
        )
    positive = ["train.epochs", "train.batch_size", "train.eval_batch_size", "checkpoint.every_steps", "checkpoint.keep"]
    for key in positive:
        if _get_dotted(cfg, key) <= 0:
            raise ConfigError(f"{key} must be positive, got {_get_dotted(cfg, key)}")
    if not 0.0 <= cfg.data.validation_split < 1.0:
        raise ConfigError(f"data.validation_split must be in [0, 1), got {cfg.data.validation_split}")
    if cfg.run.log_every_steps < 0:
        raise ConfigError(f"run.log_every_steps must be 0 (a quarter of an epoch, at most 100) or positive, "
                          f"got {cfg.run.log_every_steps}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr must be positive, got {cfg.optim.lr}")


def _did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, tree: Any, prefix: str) -> Any:
    if not isinstance(tree, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {tree!r}")
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in tree.items():
        dotted = prefix + str(key)
        if key not in types_:
            valid = [prefix + k for k in types_]
            raise ConfigError(
                f"unknown config key {dotted!r}{_did_you_mean(dotted, all_keys())}; "
                f"valid keys here: {', '.join(valid)}"
            )
        t = types_[key]
        if dataclasses.is_dataclass(t):
            kwargs[key] = _build(t, value, dotted + ".")
        else:
            kwargs[key] = _coerce(value, t, dotted)
    return cls(**kwargs)


def _coerce(value: Any, t: Any, key: str) -> Any:
    origin = typing.get_origin(t)
    if origin is tuple:
        item_type = typing.get_args(t)[0]
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_coerce(v, item_type, key) for v in items)
    if origin in (typing.Union, types.UnionType):
        return value  # not used by the schema; kept permissive on purpose
    if t is bool:
        if isinstance(value, bool):
            return value
    elif t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif t is str:
        if isinstance(value, str):
            return value
        if value is None:
            return "none"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key} must be {t.__name__ if isinstance(t, type) else t}, got {value!r}")


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {part} is a value, not a section")
    node[parts[-1]] = value


def _get_dotted(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg
