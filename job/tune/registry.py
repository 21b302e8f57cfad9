"""The samplers and pruners a space file may name: one table each, like job/models' MODELS and job/distribute's
BACKENDS. The space file's checks (job/tune/space.py), `python -m job tune --help` and the study (job/tune/study.py)
read these tables; nothing else lists the names.

Importing this module does not import Optuna: a space file is checked before anything heavy starts. A sampler is
built per trial, with a seed derived from the study's seed and the trial (job/tune/study.py), so workers and restarts
draw different points.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optuna.pruners import BasePruner
    from optuna.samplers import BaseSampler

    from job.tune.space import Space


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    description: str
    make: Callable[[Space, int], BaseSampler]  # make(space, seed)
    # Every point is queued once when the study is created and only queued points are trained (nothing is drawn).
    queues_grid: bool = False


@dataclass(frozen=True)
class PrunerSpec:
    name: str
    description: str
    make: Callable[[Space], BasePruner]


def _random(space: Space, seed: int) -> BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _tpe(space: Space, seed: int) -> BaseSampler:
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, space.trials // 3)))


def _no_pruner(space: Space) -> BasePruner:
    import optuna

    return optuna.pruners.NopPruner()


def _median(space: Space) -> BasePruner:
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)


_SAMPLERS = [
    SamplerSpec("grid", "every combination of the params' choices, each trained exactly once", _random,
                queues_grid=True),  # the study needs a sampler object; it never draws
    SamplerSpec("random", "independent uniform draws (log-uniform where log: true)", _random),
    SamplerSpec("tpe", "Optuna's Bayesian TPE: random for the first trials, then near the best so far", _tpe),
]
_PRUNERS = [
    PrunerSpec("none", "every trial trains all its epochs", _no_pruner),
    PrunerSpec("median", "stop a trial whose validation top-1 is below the median of earlier trials at that epoch",
               _median),
]

SAMPLERS: dict[str, SamplerSpec] = {spec.name: spec for spec in _SAMPLERS}
PRUNERS: dict[str, PrunerSpec] = {spec.name: spec for spec in _PRUNERS}
DEFAULT_SAMPLER = "tpe"
DEFAULT_PRUNER = "none"


def describe() -> str:
    """The tables in words, for `python -m job tune --help`."""
    lines = ["samplers (space file's `sampler:`):"]
    lines += [f"  {s.name:8} {s.description}" for s in SAMPLERS.values()]
    lines += ["pruners (space file's `pruner:`):"]
    lines += [f"  {p.name:8} {p.description}" for p in PRUNERS.values()]
    return "\n".join(lines)
