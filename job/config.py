"""The one config schema: frozen dataclasses with defaults in code, YAML presets and `a.b=value` overrides on top.

A preset only states what differs from the defaults; a YAML file names the preset (or another file) it inherits with
`base:` and states only what differs from that. Every value is checked against the type the schema declares and the
range in RANGES, and an unknown key is refused with the valid keys near it listed. The names of models, datasets and
backends come from their registries (job/models, job/data/splits.py, job/distribute), and the chosen model family's
and dataset's own rules are checked too: all before TensorFlow starts.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from job.errors import ConfigError, first_line
from job.tta import MODES as TTA_MODES

PRESET_DIR = Path(__file__).parent / "configs"
BASE_KEY = "base"  # a config file's parent: a preset name or a YAML path; consumed by load_config, not in Config


@dataclass(frozen=True)
class AugmentConfig:
    crop_padding: int = 4  # pixels of padding before the random crop; 0 turns the crop off
    flip: bool = True
    rotation_degrees: float = 0.0  # random rotation in [-x, x]; 0 turns it off
    zoom: float = 0.0  # random zoom in [1-x, 1+x]; 0 turns it off
    cutout: int = 0  # side of the square cut out of each image; 0 turns it off


@dataclass(frozen=True)
class MixConfig:
    """Mixup / CutMix with timm's parameters (timm.data.Mixup, batch mode): one lambda per global batch."""
    mixup_alpha: float = 0.0  # Beta(a, a) of mixup's lambda; 0 turns mixup off
    cutmix_alpha: float = 0.0  # Beta(a, a) of CutMix's lambda; 0 turns CutMix off
    prob: float = 1.0  # share of batches mixed at all (the others keep their images and one-hot labels)
    switch_prob: float = 0.5  # with both on: share of the mixed batches that use CutMix rather than mixup

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


@dataclass(frozen=True)
class DataConfig:
    name: str = "cifar100"  # cifar10 | cifar100 | digits | folder | synthetic
    dir: str = "data"  # where the official archives are (or are downloaded to); folder: the image folder
    download: bool = True  # fetch the official archive when it is not in `dir`
    md5: str = ""  # expected MD5 of the archive; empty = the published MD5 of the official archive
    label_mode: str = "fine"  # CIFAR-100 only: fine (100 classes) | coarse (20 superclasses)
    validation_split: float = 0.0  # fraction of train held out for validation, chosen by train.seed
    normalization: str = "standardize"  # standardize (per-channel mean/std) | gcn_zca | none
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mix: MixConfig = field(default_factory=MixConfig)  # after augmentation; labels become soft (docs/recipes.md)
    synthetic_examples: int = 1024  # size of the synthetic training set; only with name=synthetic
    image_size: int = 32  # side of the square images stored and taken by the model; other than 32: name=folder only
    # name=folder only (docs/own-images.md):
    test_split: float = 0.2  # share of each class drawn as the test set when data.dir has no test/ folder
    split_seed: int = 0  # draws that test set (not train.seed: the test set stays put when the seed changes)
    cache_dir: str = ""  # where the decoded images go (local or gs://); empty: decoded/ in the run directory
    max_unreadable_fraction: float = 0.01  # share of the images that may fail to decode (skipped and listed)
    max_pixels: int = 40_000_000  # an image with more pixels is refused
    max_decoded_gb: float = 8.0  # decoded images up to this size are held in memory; above, data.stream decides
    stream: str = "auto"  # auto: stream from the shards above max_decoded_gb | always | never (refuse above it)


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
    weight_decay: float = 5e-4  # decoupled (Keras' weight_decay) for both; skips biases and norm parameters
    clip_norm: float = 0.0  # global gradient norm clip; 0 turns it off
    label_smoothing: float = 0.0
    schedule: str = "cosine"  # cosine | step | constant | triangular (linear up over warmup, linear down to 0)
    warmup_epochs: float = 0.0
    step_epochs: tuple[float, ...] = ()  # step schedule: epochs at which the LR is multiplied by step_factor
    step_factor: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128  # global: split evenly over all replicas (and accumulation steps); fixed for the run
    accumulation_steps: int = 0  # micro-batches per step and replica; 0 = as max_device_batch needs (else 1)
    max_device_batch: int = 0  # most examples one device takes at once; 0 = no limit
    steps_per_call: int = 0  # training steps per compiled call (host work paid once a call); 0 = auto: 8 on a GPU, 1
    seed: int = 0
    deterministic: bool = False  # op determinism; slower, for exact reproducibility and resume tests
    precision: str = "auto"  # auto | float32 | mixed_float16 | mixed_bfloat16 (auto: job/devices.py)
    jit_compile: bool | str = "auto"  # XLA: auto | true | false (auto: on a GPU, off on a CPU)
    finetune_epochs: int = 0  # transfer models: epochs of phase 2 (backbone top unfrozen) after `epochs` of phase 1
    finetune_lr_factor: float = 0.1  # phase-2 LR relative to phase 1
    early_stopping_patience: int = 0  # epochs without a better validation top-1 before stopping; 0 turns it off
    eval_batch_size: int = 500
    tta: str = "off"  # test-time augmentation of the run's final evaluation and report: off | flip | flip-translate
    max_steps_per_epoch: int = 0  # cap for smoke runs and benchmarks; 0 = a full pass over the data
    bn_recalibration_batches: int = 20  # BatchNorm statistics recomputed from this many training batches before
                                        # each validation and the end (job/precise_bn.py); 0 turns it off
    ema_decay: float = 0.0  # weight EMA (job/ema.py): the averaged weights are validated, evaluated and exported;
                            # 0 turns it off


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 500  # also saved at each epoch end
    keep: int = 3  # newest checkpoints kept; the best by validation top-1 is kept as well
    upload_timeout_seconds: float = 600.0  # gs:// runs: how long the end of the job waits for uploads


@dataclass(frozen=True)
class RunConfig:
    dir: str = "runs/{preset}"  # local path or gs://bucket/prefix; {preset} is replaced by the preset name
    work_dir: str = ""  # working copy of a remote run, never deleted; default: under $TMPDIR/job-runs (job/workcopy.py)
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
class ExportConfig:
    # export/model.tflite and model_int8.tflite at the end of a run and by `python -m job export` (job/litert.py):
    # conversion, int8 calibration and their test-set evaluation cost seconds to minutes at a run's end
    litert: bool = True
    calibration_images: int = 256  # training images that calibrate the int8 model's value ranges


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
    export: ExportConfig = field(default_factory=ExportConfig)

    @property
    def run_dir(self) -> str:
        return self.run.dir.replace("{preset}", self.preset)


# The keys with a fixed list of values. data.name, model.name and distribute.backend take theirs from the registries
# (choices()).
CHOICES = {
    "data.normalization": ("standardize", "gcn_zca", "none"),
    "data.stream": ("auto", "always", "never"),
    "optim.name": ("sgd", "adamw"),
    "optim.schedule": ("cosine", "step", "constant", "triangular"),
    "train.tta": TTA_MODES,
    "train.precision": ("auto", "float32", "mixed_float16", "mixed_bfloat16"),
}


class Range(NamedTuple):
    """The allowed values of a numeric key: from `low` to `high` (None: unbounded), `ends` saying which of them are
    allowed ("[]", "[)", "(]", "()"), plus 0 when `zero` says what 0 means there."""

    low: float | None
    high: float | None
    ends: str = "[]"
    zero: str = ""


# Every int and float key of the schema (tests check that none is missing); a tuple key's items each.
RANGES = {
    "data.validation_split": Range(0, 1, "[)"),
    "data.synthetic_examples": Range(0, None, "()"),
    "data.image_size": Range(8, 512),  # 32 for the built-in datasets: the dataset's check
    "data.test_split": Range(0, 1, "()"),
    "data.split_seed": Range(0, 2**32 - 1),
    "data.max_unreadable_fraction": Range(0, 1, "[)"),
    "data.max_pixels": Range(0, None, "()"),
    "data.max_decoded_gb": Range(0, None, "()"),
    "data.augment.crop_padding": Range(0, None, "[)"),
    "data.augment.rotation_degrees": Range(0, 180),
    "data.augment.zoom": Range(0, 1, "[)"),
    "data.augment.cutout": Range(0, None, "[)"),  # below the image side: the dataset's check
    "data.mix.mixup_alpha": Range(0, None, "[)"),
    "data.mix.cutmix_alpha": Range(0, None, "[)"),
    "data.mix.prob": Range(0, 1),
    "data.mix.switch_prob": Range(0, 1),
    "model.dropout": Range(0, 1, "[)"),
    "model.l2": Range(0, None, "[)"),
    "model.input_size": Range(32, None, "[)", zero="the model's default, 224"),  # keras.applications' smallest
    "model.unfreeze_top": Range(0, None, "[)"),  # within the backbone: the model family's check
    "optim.lr": Range(0, None, "()"),
    "optim.momentum": Range(0, 1, "[)"),
    "optim.weight_decay": Range(0, None, "[)"),
    "optim.clip_norm": Range(0, None, "[)"),
    "optim.label_smoothing": Range(0, 1, "[)"),
    "optim.warmup_epochs": Range(0, None, "[)"),
    "optim.step_epochs": Range(0, None, "()"),  # and increasing: validate()
    "optim.step_factor": Range(0, 1, "(]"),
    "train.epochs": Range(0, None, "()"),
    "train.batch_size": Range(0, None, "()"),
    "train.seed": Range(0, 2**32 - 1),  # numpy's seed range (keras.utils.set_random_seed seeds numpy with it)
    "train.finetune_epochs": Range(0, None, "[)"),
    "train.finetune_lr_factor": Range(0, None, "()"),
    "train.early_stopping_patience": Range(0, None, "[)"),
    "train.eval_batch_size": Range(0, None, "()"),
    "train.max_steps_per_epoch": Range(0, None, "[)"),
    "train.accumulation_steps": Range(0, None, "[)"),
    "train.max_device_batch": Range(0, None, "[)"),
    "train.steps_per_call": Range(0, None, "[)"),
    "train.bn_recalibration_batches": Range(0, None, "[)"),
    "train.ema_decay": Range(0, 1, "[)"),
    "checkpoint.every_steps": Range(0, None, "()"),
    "checkpoint.keep": Range(0, None, "()"),
    "checkpoint.upload_timeout_seconds": Range(0, None, "()"),
    "run.summary_flush_seconds": Range(0, None, "()"),
    "run.log_every_steps": Range(0, None, "()", zero="a quarter of an epoch, at most 100"),
    "distribute.collective_timeout_seconds": Range(0, None, "()"),
    "distribute.cpu_devices": Range(0, None, "[)"),
    "export.calibration_images": Range(0, None, "()"),
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
    """Defaults, then the preset or YAML file `config` (with the chain of files it names as `base:`), then
    `key=value` overrides; validated. The run's name (`preset`) is the preset's, or the file's stem unless the file
    says `preset: NAME`."""
    tree: dict[str, Any] = {}
    preset, inherited = "custom", set()
    if config:
        path, preset = _locate(config, None)
        tree, inherited = _read_tree(path, ())
    tree.setdefault("preset", preset)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value; write e.g. train.epochs=10")
        key = key.strip()
        if key == BASE_KEY:
            raise ConfigError(f"{BASE_KEY} is a config file key; give the preset to start from as --config "
                              f"{raw.strip() or 'NAME'}")
        if key == "preset" and _bundled(raw.strip()) and raw.strip() not in inherited:
            raise ConfigError(f"preset={raw.strip()} only names the run, it does not load that preset; use "
                              f"--config {raw.strip()} to train it")
        _set_dotted(tree, key, yaml.safe_load(raw) if raw.strip() else "")
    return from_dict(tree)


def _locate(ref: str, base_of: Path | None) -> tuple[Path, str]:
    """(path, run name) of a preset name or a YAML path; a path in a `base:` is relative to the file naming it."""
    where = f" (the {BASE_KEY} of {base_of})" if base_of else ""
    if ref.endswith((".yaml", ".yml")) or os.sep in ref or "/" in ref:
        path = base_of.parent / ref if base_of else Path(ref)
        if path.is_dir():
            raise ConfigError(f"config file {path}{where} is a directory; give a YAML file or a preset name")
        if not path.exists():
            raise ConfigError(f"config file {path}{where} does not exist; give a preset name or a YAML path")
        return path, path.stem
    if not _bundled(ref):
        raise ConfigError(f"unknown preset {ref!r}{where}{_did_you_mean(ref, list_presets())}; "
                          "`python -m job presets` lists them")
    return PRESET_DIR / f"{ref}.yaml", ref


def _bundled(name: str) -> bool:
    return bool(name) and os.sep not in name and "/" not in name and (PRESET_DIR / f"{name}.yaml").is_file()


def _read_tree(path: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], set[str]]:
    """The YAML file at `path` merged over the files its `base:` chain names, and the bundled presets in it."""
    key = path.resolve()
    if key in chain:
        cycle = " -> ".join(str(p) for p in (*chain[chain.index(key):], key))
        raise ConfigError(f"config files inherit from each other in a cycle ({cycle}); remove one of those "
                          f"{BASE_KEY}: keys")
    tree = parse_yaml(_read_text(path), str(path))
    presets = {path.stem} if path.parent.resolve() == PRESET_DIR.resolve() else set()
    inherited: dict[str, Any] = {}
    if BASE_KEY in tree:
        base = tree.pop(BASE_KEY)
        if not isinstance(base, str) or not base.strip():
            raise ConfigError(f"{path}: {BASE_KEY} must be a preset name or a YAML path, got {base!r}")
        base_path, _ = _locate(base.strip(), path)
        inherited, base_presets = _read_tree(base_path, (*chain, key))
        inherited.pop("preset", None)  # a file names its own runs, not those of the files inheriting it
        presets |= base_presets
    name = tree.get("preset")
    # `preset: X` alone used to name the run X and train the defaults: refused unless the file states every key
    # (a run's stored config.yaml does).
    if isinstance(name, str) and _bundled(name) and name not in presets and not _states_every_key(tree):
        raise ConfigError(f"{path}: `preset: {name}` only names the run, it does not load that preset; write "
                          f"`{BASE_KEY}: {name}` to inherit it and state only what differs")
    return _merge(inherited, tree), presets


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start} is {e.object[e.start]:#04x}); "
                          "save it as UTF-8 YAML") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read ({e.strerror or type(e).__name__}); make it a readable "
                          "YAML file") from None


def _merge(under: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `under`, section by section; a value (a list too) replaces the one under it."""
    merged = dict(under)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _states_every_key(tree: dict[str, Any]) -> bool:
    return set(all_keys()) <= set(_flatten(tree))


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML ({first_line(e)}); fix the syntax") from None
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


def choices() -> dict[str, tuple[str, ...]]:
    """Every key with a list of allowed values; the registries own the names of datasets and backends."""
    from job.data import DATASETS
    from job.distribute import AUTO, BACKENDS

    label_modes = tuple(dict.fromkeys(mode for spec in DATASETS.values() for mode in spec.num_classes))
    return {"data.name": tuple(DATASETS), "data.label_mode": label_modes,
            "distribute.backend": (AUTO, *BACKENDS), **CHOICES}


def validate(cfg: Config) -> None:
    from job.data import DATASETS
    from job.models import MODELS  # the registry owns the list of model names

    for key, allowed in choices().items():
        value = _get_dotted(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}{_did_you_mean(value, allowed)}")
    if cfg.model.name not in MODELS:
        raise ConfigError(
            f"unknown model {cfg.model.name!r}{_did_you_mean(cfg.model.name, MODELS)}; "
            f"valid: {', '.join(sorted(MODELS))}"
        )
    for key, allowed_range in RANGES.items():
        value = _get_dotted(cfg, key)
        for i, item in enumerate(value) if isinstance(value, tuple) else [(None, value)]:
            _check_range(key if i is None else f"{key}[{i}]", item, allowed_range)
    if cfg.train.jit_compile not in (True, False, "auto"):
        raise ConfigError(f"train.jit_compile={cfg.train.jit_compile!r} is not one of auto, true, false")
    steps = cfg.optim.step_epochs
    if any(a >= b for a, b in zip(steps, steps[1:])):
        raise ConfigError(f"optim.step_epochs must be increasing, got {list(steps)}")
    if cfg.optim.schedule == "step" and not steps:
        raise ConfigError("optim.schedule=step needs optim.step_epochs, the epochs at which the LR drops, "
                          "e.g. [80, 120]")
    MODELS[cfg.model.name].check(cfg)
    DATASETS[cfg.data.name].check(cfg)


def _check_range(key: str, value: float, r: Range) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value}")
    above = r.low is None or (value >= r.low if r.ends[0] == "[" else value > r.low)
    below = r.high is None or (value <= r.high if r.ends[1] == "]" else value < r.high)
    if (above and below) or (r.zero and value == 0):
        return
    if r.high is not None:
        allowed = f"in {r.ends[0]}{r.low}, {r.high}{r.ends[1]}"
    elif r.low == 0 and r.ends[0] == "(":
        allowed = "positive"
    else:
        allowed = f"{'>=' if r.ends[0] == '[' else '>'} {r.low}"
    if r.zero:
        allowed = f"0 ({r.zero}) or {allowed}"
    raise ConfigError(f"{key} must be {allowed}, got {value}")


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
        if value is False and "off" in CHOICES.get(key, ()):  # YAML 1.1 reads an unquoted `off` as false
            return "off"
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


# Changing any of these would make a run's checkpoints mean something else: refused on resume.
# (`train.batch_size` is here because the step counter, and so the data position, is counted in global batches.)
RUN_IDENTITY_KEYS = ("model.", "data.name", "data.label_mode", "data.normalization", "data.validation_split",
                     "data.image_size", "data.test_split", "data.split_seed", "train.batch_size")


def resume_conflict(stored: dict[str, Any], cfg: Config) -> str | None:
    """Why `cfg` may not continue a run started with the config tree `stored`, or None if it may."""
    before, now = _flatten(stored), _flatten(to_dict(cfg))
    for key in now:
        if key.startswith(RUN_IDENTITY_KEYS) and key in before and before[key] != now[key]:
            return (f"was started with {key}={before[key]!r}, now {key}={now[key]!r}; resuming would mix two "
                    f"different runs: use another run.dir, or set {key}={before[key]!r}")
    return None


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat
