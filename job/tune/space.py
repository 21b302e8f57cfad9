"""The search space file of `python -m job tune --space SPACE.yaml`:

    study: lr-wd                 # the study's name (and the default study dir: runs/tune-<study>)
    trials: 12                   # how many trials the study runs (grid: at most the grid's size, which is the default)
    sampler: tpe                 # a name of job/tune/registry.py SAMPLERS: grid | random | tpe
    pruner: median               # a name of job/tune/registry.py PRUNERS: none | median
    seed: 0                      # the study's seed (each trial's sampler seed is derived from it and the trial)
    params:                      # any config key, as a range or a list of choices
      optim.lr: {low: 0.01, high: 0.4, log: true}
      optim.weight_decay: {choices: [1.0e-4, 5.0e-4]}
      train.batch_size: {low: 64, high: 256, step: 64}    # integers where low, high (and step) are integers

The objective is always the trial run's best validation top-1 (maximised). Optional keys: `max_retries` (3: how often
a trial whose worker died is started again), `heartbeat_seconds` (30) and `grace_seconds` (120: a trial without a
heartbeat for this long is taken for dead and retried). Nothing here imports TensorFlow or Optuna.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from job.errors import ConfigError
from job.tune.registry import DEFAULT_PRUNER, DEFAULT_SAMPLER, PRUNERS, SAMPLERS

_KEYS = {"study", "trials", "sampler", "pruner", "seed", "params", "max_retries", "heartbeat_seconds",
         "grace_seconds", "objective"}
OBJECTIVE = "best validation top-1"


@dataclass(frozen=True)
class Param:
    key: str  # a config key, e.g. optim.lr
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple | None = None

    @property
    def is_int(self) -> bool:
        return self.choices is None and all(isinstance(v, int) for v in (self.low, self.high, self.step or 1))

    def grid_values(self) -> list:
        if self.choices is not None:
            return list(self.choices)
        if self.is_int and self.step:
            return list(range(int(self.low), int(self.high) + 1, int(self.step)))
        raise ConfigError(f"params.{self.key}: the grid sampler needs choices (or an integer range with a step)")


@dataclass(frozen=True)
class Space:
    study: str
    trials: int
    sampler: str
    pruner: str
    seed: int
    params: tuple[Param, ...]
    max_retries: int = 3
    heartbeat_seconds: float = 30.0
    grace_seconds: float = 120.0

    @property
    def queues_grid(self) -> bool:
        return SAMPLERS[self.sampler].queues_grid

    def grid(self) -> list[dict[str, Any]]:
        """Every point of the grid, in a fixed order (the order the trials are queued in)."""
        keys = [p.key for p in self.params]
        return [dict(zip(keys, values)) for values in itertools.product(*(p.grid_values() for p in self.params))]


def load_space(path: str) -> Space:
    """Read and check a space file; every problem is one line naming the key and the fix."""
    file = Path(path)
    try:
        tree = yaml.safe_load(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--space {path} does not exist; give a YAML file (docs/tuning.md has one)"
                          ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--space {path} cannot be read ({e}); give a UTF-8 YAML file") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise ConfigError(f"--space {path} is not valid YAML{line}; check its indentation and colons") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"--space {path} must be a mapping with study, trials, sampler and params")
    unknown = sorted(set(tree) - _KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(_KEYS))}")
    objective = tree.get("objective", OBJECTIVE)
    if objective != OBJECTIVE:
        raise ConfigError(f"{path}: objective must be {OBJECTIVE!r} (the only one the trainer reports), "
                          f"got {objective!r}")
    study = tree.get("study")
    if not isinstance(study, str) or not study or not all(c.isalnum() or c in "-_." for c in study):
        raise ConfigError(f"{path}: study must be a name of letters, digits, '-', '_' or '.', got {study!r}")
    sampler = _choice(tree, "sampler", tuple(SAMPLERS), DEFAULT_SAMPLER, path)
    pruner = _choice(tree, "pruner", tuple(PRUNERS), DEFAULT_PRUNER, path)
    raw_params = tree.get("params")
    if not isinstance(raw_params, dict) or not raw_params:
        raise ConfigError(f"{path}: params must map config keys to ranges or choices, e.g. "
                          "optim.lr: {low: 0.01, high: 0.4, log: true}")
    params = tuple(_param(str(key), spec, path) for key, spec in raw_params.items())
    space = Space(study=study, trials=0, sampler=sampler, pruner=pruner,
                  seed=_space_value(tree, "seed", 0, int, 0, path), params=params,
                  max_retries=_space_value(tree, "max_retries", 3, int, 0, path),
                  heartbeat_seconds=_space_value(tree, "heartbeat_seconds", 30.0, float, 0.1, path),
                  grace_seconds=_space_value(tree, "grace_seconds", 120.0, float, 0.1, path))
    if space.grace_seconds <= space.heartbeat_seconds:
        raise ConfigError(f"{path}: grace_seconds ({space.grace_seconds}) must be longer than heartbeat_seconds "
                          f"({space.heartbeat_seconds}), or every trial would be taken for dead")
    grid_size = len(space.grid()) if SAMPLERS[sampler].queues_grid else None
    trials = _space_value(tree, "trials", grid_size, int, 1, path)
    if trials is None:
        raise ConfigError(f"{path}: trials is missing; say how many trials the study runs, e.g. trials: 12")
    if grid_size is not None and trials > grid_size:
        raise ConfigError(f"{path}: trials={trials} is more than the grid's {grid_size} points; remove trials "
                          f"(the grid's size is the default) or add choices")
    return Space(**{**space.__dict__, "trials": trials})


def check_params_against_config(space: Space, config: str, overrides: list[str]) -> None:
    """Each parameter is a config key, and its extreme values are valid there (a typo fails now, not in trial 7)."""
    from job.config import load_config

    for param in space.params:
        values = param.choices if param.choices is not None else (param.low, param.high)
        for value in values:
            try:
                load_config(config, [*overrides, f"{param.key}={yaml.safe_dump(value).strip().removesuffix('...')}"])
            except ConfigError as e:
                raise ConfigError(f"params.{param.key} = {value!r} in the space: {e}") from None


def _choice(tree: dict, key: str, options: tuple, default: str, path) -> str:
    value = tree.get(key, default)
    if value not in options:
        raise ConfigError(f"{path}: {key} must be one of {', '.join(options)}, got {value!r}")
    return value


def _space_value(tree: dict, key: str, default, kind, minimum, path):
    value = tree.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ConfigError(f"{path}: {key} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{path}: {key} must be at least {minimum}, got {value}")
    return kind(value)


def _param(key: str, spec: Any, path) -> Param:
    where = f"{path}: params.{key}"
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be {{low: A, high: B}} (optionally log: true or step: S) or "
                          f"{{choices: [...]}}, got {spec!r}")
    unknown = sorted(set(spec) - {"low", "high", "log", "step", "choices"})
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}; use low, high, log, step or choices")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list, alone (not with low/high)")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{where}: choices has the same value twice")
        return Param(key, choices=tuple(choices))
    low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
    for name, value in (("low", low), ("high", high)) + ((("step", step),) if step is not None else ()):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: {name} must be a number, got {value!r}")
    if not low < high:
        raise ConfigError(f"{where}: low ({low}) must be below high ({high})")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log-scaled range needs low > 0, got {low}")
    if log and step is not None:
        raise ConfigError(f"{where}: step and log cannot be combined (Optuna does not sample that)")
    if step is not None and step <= 0:
        raise ConfigError(f"{where}: step must be positive, got {step}")
    return Param(key, low=low, high=high, log=log, step=step)
