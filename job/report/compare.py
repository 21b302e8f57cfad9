"""`python -m job compare RUN_DIR... [--out compare.html]`: runs side by side, from their stored files only (no
TensorFlow): a table in the terminal, one row per run, and a page with their curves overlaid and their per-class F1
side by side. Runs of different datasets (or CIFAR-100 label sets) are refused: their figures do not compare."""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from job.errors import UserError, first_line
from job.records import duration
from job.report import plots
from job.report.page import render
from job.report.rundata import RunData, load_run
from job.storage import open_storage

TEMPLATE = "compare.html.j2"
COLUMNS = ("run", "model", "dataset", "parameters", "epochs", "wall time", "test loss", "top-1", "top-5", "macro F1")


def compare_runs(urls: list[str], out: str = "compare.html") -> list[dict[str, Any]]:
    """Print the table and write the page to `out` (a local path or gs://; a directory gets compare.html in it).
    Returns the table's rows."""
    if len(urls) < 2:
        raise UserError("compare needs two or more run directories, e.g. python -m job compare runs/a runs/b")
    runs = [load_run(url) for url in urls]
    datasets = {run.dataset for run in runs}
    if len(datasets) > 1:
        named = ", ".join(f"{run.name}: {run.dataset}" for run in runs)
        raise UserError(f"runs on different datasets do not compare ({named}); give runs of one dataset")
    labels = _labels(runs)
    rows = [row(label, run) for label, run in zip(labels, runs)]
    print(format_table(rows), flush=True)
    page = render_page(runs, labels, rows)
    where = write_page(page, out)
    print(f"comparison page: {where}", flush=True)
    return rows


def row(label: str, run: RunData) -> dict[str, Any]:
    metrics = run.metrics or {}
    done = max([e["epoch"] for e in run.epochs], default=0)
    return {"run": label, "url": run.url, "model": run.cfg.model.name, "dataset": run.dataset,
            "parameters": run.parameters, "epochs": f"{done}/{run.total_epochs}", "wall_seconds": run.wall_seconds,
            "loss": metrics.get("loss"), "top1": metrics.get("top1"), "top5": metrics.get("top5"),
            "macro_f1": metrics.get("macro_f1")}


def format_table(rows: list[dict[str, Any]]) -> str:
    cells = [list(COLUMNS)]
    for r in rows:
        cells.append([r["run"], r["model"], r["dataset"], _or_dash(r["parameters"], "{:,}"), r["epochs"],
                      _or_dash(r["wall_seconds"], "{}", duration),
                      _or_dash(r["loss"], "{:.4f}"), _or_dash(r["top1"], "{:.2%}"),
                      _or_dash(r["top5"], "{:.2%}"), _or_dash(r["macro_f1"], "{:.4f}")])
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = []
    for number, line in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_page(runs: list[RunData], labels: list[str], rows: list[dict[str, Any]]) -> str:
    evaluated = [(label, run) for label, run in zip(labels, runs) if run.metrics and run.metrics.get("per_class")]
    classes = [c["class"] for c in evaluated[0][1].metrics["per_class"]] if evaluated else []
    f1 = [(label, [c["f1"] for c in run.metrics["per_class"]]) for label, run in evaluated
          if [c["class"] for c in run.metrics["per_class"]] == classes]
    with_history = [(label, run.history) for label, run in zip(labels, runs) if run.epochs]
    return render(
        TEMPLATE, title=f"{len(runs)} runs on {runs[0].dataset}", rows=rows,
        generated_at=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        curves=plots.compare_curves(with_history) if with_history else None,
        f1_plot=plots.compare_f1(f1, classes) if f1 else None,
        f1_labels=[label for label, _ in f1],
        f1_rows=[{"class": name, "values": [values[i] for _, values in f1]} for i, name in enumerate(classes)]
        if f1 else [],
        missing=[label for label, run in zip(labels, runs) if not run.metrics],
    )


def write_page(page: str, out: str) -> str:
    """Write to a local path or a gs:// URL; a directory (or a URL ending in /) gets compare.html inside."""
    try:
        if out.startswith("gs://"):
            parent, _, name = (out + "compare.html" if out.endswith("/") else out).rpartition("/")
            open_storage(parent).write_bytes(name, page.encode())
            return f"{parent}/{name}"
        path = Path(out)
        if path.is_dir() or out.endswith("/"):
            path = path / "compare.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
        return str(path)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - an unwritable path, a missing bucket: one line
        raise UserError(f"cannot write the comparison to {out} ({type(e).__name__}: {first_line(e)}); "
                        "give a writable --out") from None


def _labels(runs: list[RunData]) -> list[str]:
    names = [run.name for run in runs]
    return [run.url if names.count(run.name) > 1 else run.name for run in runs]


def _or_dash(value, spec: str, convert=lambda v: v) -> str:
    return "-" if value is None else spec.format(convert(value))
