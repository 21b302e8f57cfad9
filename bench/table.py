"""The one table `make bench` prints: a Markdown pipe table, so it pastes into docs/performance.md as it is."""
from __future__ import annotations

COLUMNS = ("figure", "measured", "baseline", "ratio (median, min–max)", "goal", "met", "peak RSS MB")


def render(rows: list[dict]) -> str:
    """rows: dicts with the COLUMNS as keys (missing ones print empty)."""
    cells = [[str(row.get(c, "")) for c in COLUMNS] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(COLUMNS)]
    lines = [_line(COLUMNS, widths), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [_line(r, widths) for r in cells]
    return "\n".join(lines)


def _line(cells, widths) -> str:
    return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"


def number(x: float | None, unit: str = "") -> str:
    """A figure with 3 significant digits (thousands separated), or n/a."""
    if x is None:
        return "n/a"
    if abs(x) >= 100:
        text = f"{x:,.0f}"
    elif abs(x) >= 10:
        text = f"{x:.1f}"
    elif abs(x) >= 1:
        text = f"{x:.2f}"
    else:
        text = f"{x:#.3g}"  # keeps the zeros of 0.100 and 1.00
    return f"{text} {unit}".strip()


def spread(summary, unit: str = "") -> str:
    """'median (min–max)' of a bench.stats.Summary; a single measurement alone."""
    if summary.n == 1 or summary.low == summary.high:
        return number(summary.median, unit)
    return f"{number(summary.median, unit)} ({number(summary.low)}–{number(summary.high)})"
