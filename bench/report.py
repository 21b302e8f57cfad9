"""Figures (one table row each: a measurement, its baseline from the same run, their ratio, the goal) and the table."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from bench import table
from bench.stats import Summary

YES, NO, WITHIN_SPREAD = "yes", "NO", "within spread"


def judge(figure: Summary, at_least: float = -math.inf, at_most: float = math.inf) -> str:
    """Against the goal at_least <= x <= at_most: yes if the median meets it; 'within spread' if only part of the
    min..max range does (on a shared machine that is a tie, not a verdict); NO if none of it does."""
    if at_least <= figure.median <= at_most:
        return YES
    if figure.low <= at_most and figure.high >= at_least:
        return WITHIN_SPREAD
    return NO


def single(x: float) -> Summary:
    """A figure measured once."""
    return Summary(x, x, x, 1)


@dataclass
class Figure:
    section: str
    name: str
    value: Summary
    unit: str
    baseline_name: str
    baseline: Summary
    baseline_unit: str
    ratio: Summary
    ratio_as_percent: bool = False
    goal: str = ""
    met: str = ""  # YES, NO, WITHIN_SPREAD, or "" where there is no goal
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    details: dict = field(default_factory=dict)  # raw samples and facts, for the JSON file

    def row(self) -> dict:
        if self.ratio_as_percent:
            ratio = (f"{table.number(100 * self.ratio.median)} %" if self.ratio.n == 1 else
                     f"{table.number(100 * self.ratio.median)} % ({table.number(100 * self.ratio.low)}–"
                     f"{table.number(100 * self.ratio.high)})")
        else:
            ratio = table.spread(self.ratio, "×").replace(" ×", "×")
        return {
            "figure": self.name,
            "measured": table.spread(self.value, self.unit),
            "baseline": f"{self.baseline_name}: {table.spread(self.baseline, self.baseline_unit)}",
            "ratio (median, min–max)": ratio,
            "goal": self.goal,
            "met": self.met,
            "peak RSS MB": " / ".join(f"{k} {v:,.0f}" for k, v in self.peak_rss_mb.items() if v),
        }

    def as_dict(self) -> dict:
        return asdict(self)
