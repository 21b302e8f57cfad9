"""Median and spread of repeated measurements, and ratios of interleaved pairs."""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Summary:
    median: float
    low: float  # the smallest sample: with a handful of repeats, min..max is the honest spread
    high: float
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(samples: list[float]) -> Summary:
    if not samples:
        raise ValueError("no samples to summarize")
    return Summary(median=statistics.median(samples), low=min(samples), high=max(samples), n=len(samples))


def paired_ratios(values: list[float], baselines: list[float]) -> list[float]:
    """value_i / baseline_i of trials run back to back, so slow drifts of a shared machine cancel in each pair."""
    if len(values) != len(baselines):
        raise ValueError(f"{len(values)} values but {len(baselines)} baselines")
    return [v / b for v, b in zip(values, baselines)]


def ratio_of_unpaired(values: Summary, baselines: Summary) -> Summary:
    """Median ratio of figures measured in different trials, with the widest spread their ranges allow."""
    return Summary(median=values.median / baselines.median, low=values.low / baselines.high,
                   high=values.high / baselines.low, n=min(values.n, baselines.n))
