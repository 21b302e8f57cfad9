"""A new trial's values: drawn by a sampler seeded for that trial, and never a stored trial's values.

- The seed: every worker used to build its sampler with the study's seed, so K workers drew the same first points and a
  worker started again drew them again. Each trial now gets a sampler seeded from (study seed, the trial's database
  id): the id is unique across workers and starts (the database hands it out), and the same study seed still gives
  the same sequence of draws.
- Distinct: a point equal to a stored trial's (finished, running or queued) is drawn again, a bounded number of
  times, then from a random sampler, then the trial trains a repeat and the log says so. Two workers drawing at the
  same moment: each stores its candidate first (the trial's `fixed_params`, which Optuna's suggest_* then return)
  and reads the others' after; of two equal candidates the later reader sees both and draws again.
"""
from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

if TYPE_CHECKING:
    from job.tune.space import Param, Space

log = logging.getLogger("job")

FIXED_PARAMS = "fixed_params"  # Optuna's system attr: suggest_* returns these values (how enqueue_trial works)
SAMPLER_DRAWS = 20  # draws from the study's sampler before falling back to uniform ones
RANDOM_DRAWS = 200  # uniform draws before giving up: on a space of n points with m taken, P(miss) = (m/n)^200


def sampler_seed(study_seed: int, trial_id: int) -> int:
    digest = hashlib.sha256(f"{study_seed}/{trial_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def distribution(param: Param) -> BaseDistribution:
    """The distribution job/tune/worker.py's suggest_* call builds for this parameter."""
    if param.choices is not None:
        return CategoricalDistribution(list(param.choices))
    if param.is_int:
        return IntDistribution(int(param.low), int(param.high), step=int(param.step or 1), log=param.log)
    return FloatDistribution(float(param.low), float(param.high), step=param.step, log=param.log)


def point_of(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The values a trial trains: its suggested params, or the ones fixed for it before they are suggested."""
    return {**trial.system_attrs.get(FIXED_PARAMS, {}), **trial.params}


def draw_distinct(view: optuna.Study, space: Space, trial_id: int, others) -> dict[str, Any]:
    """Fix a new trial's values (stored as its fixed_params) and return them. `view`: the study with this trial's
    sampler; `others()`: the points of every other stored trial, read fresh."""
    storage = view._storage
    frozen = storage.get_trial(trial_id)
    distributions = {p.key: distribution(p) for p in space.params}
    fallback = optuna.samplers.RandomSampler(seed=sampler_seed(space.seed, trial_id) + 1)
    point: dict[str, Any] = {}
    for attempt in range(SAMPLER_DRAWS + RANDOM_DRAWS):
        sampler = view.sampler if attempt < SAMPLER_DRAWS else fallback
        point = {name: sampler.sample_independent(view, frozen, name, d) for name, d in distributions.items()}
        if point in others():
            continue
        storage.set_trial_system_attr(trial_id, FIXED_PARAMS, point)  # stored, then compared again: see above
        if point not in others():
            if attempt:
                log.info("trial %d: %d draws repeated a stored trial's values; the %s drew a new point",
                         frozen.number, attempt, "sampler" if attempt < SAMPLER_DRAWS else "uniform fallback")
            return point
    storage.set_trial_system_attr(trial_id, FIXED_PARAMS, point)
    log.warning("trial %d repeats a stored trial's values: %d draws found no new point (the space has few points "
                "left; make it larger or ask for fewer trials)", frozen.number, SAMPLER_DRAWS + RANDOM_DRAWS)
    return point
