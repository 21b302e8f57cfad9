"""A study's results: the leaderboard table, `best.yaml` (a config that trains the winner) and `report.html`
(optimisation history, parameter importances, parallel coordinates: static images, readable offline)."""
from __future__ import annotations

import base64
import datetime
import html
import io
import logging

import yaml
from optuna.trial import TrialState

from job.records import duration
from job.storage import open_storage
from job.tune.study import ERROR_ATTR, RUN_ATTR, SURPLUS_ATTR, Study, is_failed, is_retry, origin_number, retries

log = logging.getLogger("job")

BEST_FILE = "best.yaml"
REPORT_FILE = "report.html"
LEADERBOARD_FILE = "leaderboard.txt"


def rows(study: Study) -> list[dict]:
    """One row per trial that ran or runs, best first: a dead trial appears through its retry."""
    out = []
    for trial in study.trials():
        if trial.user_attrs.get(SURPLUS_ATTR):
            continue
        gave_up = trial.state == TrialState.FAIL and ERROR_ATTR not in trial.user_attrs
        if gave_up and not is_failed(trial, study.space.max_retries):
            continue  # its worker died; the retry is the row (or it is about to be queued)
        state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.RUNNING: "running",
                 TrialState.WAITING: "queued", TrialState.FAIL: "failed"}[trial.state]
        if is_retry(trial):
            state += f" (retry {retries(trial)})"
        best = trial.value if trial.state == TrialState.COMPLETE else _best_reported(trial)
        seconds = trial.user_attrs.get("seconds")
        if seconds is None and trial.datetime_start:
            end = trial.datetime_complete or datetime.datetime.now()
            seconds = (end - trial.datetime_start).total_seconds()
        out.append({"trial": origin_number(trial), "params": trial.params, "best_val_top1": best, "state": state,
                    "epochs": trial.user_attrs.get("epochs", len(trial.intermediate_values)),
                    "seconds": seconds, "run_dir": trial.user_attrs.get(RUN_ATTR, ""),
                    "error": trial.user_attrs.get(ERROR_ATTR, "") or (
                        f"its worker died {retries(trial) + 1} times; not retried again (max_retries "
                        f"{study.space.max_retries})" if gave_up else "")})
    return sorted(out, key=lambda r: (r["best_val_top1"] is None, -(r["best_val_top1"] or 0.0), r["trial"]))


def leaderboard(study: Study) -> str:
    table = rows(study)
    keys = [p.key for p in study.space.params]
    header = ["trial", *keys, "best val top-1", "state", "epochs", "time"]
    body = [[str(r["trial"]), *(_fmt(r["params"].get(k)) for k in keys),
             "-" if r["best_val_top1"] is None else f"{r['best_val_top1']:.4f}", r["state"], str(r["epochs"]),
             duration(r["seconds"])] for r in table]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *body]]
    lines.append(f"\nstudy {study.space.study}: {study.progress()} "
                 f"({study.space.sampler} sampler, {study.space.pruner} pruner)")
    errors = [f"trial {r['trial']}: {r['error']}" for r in table if r["error"]]
    return "\n".join(lines + errors) + "\n"


def best_config(study: Study, config: str, overrides: list[str]) -> str | None:
    """The YAML of a config that trains the best trial: the base plus the overrides and the winning values."""
    try:
        best = study.study.best_trial
    except ValueError:  # no complete trial yet
        return None
    from pathlib import Path

    # a YAML base is named by its absolute path: best.yaml lives elsewhere, and `base:` is relative to the file
    tree: dict = {"base": str(Path(config).resolve()) if config.endswith((".yaml", ".yml")) else config}
    for item in overrides:
        key, _, raw = item.partition("=")
        _set(tree, key.strip(), yaml.safe_load(raw))
    for key, value in best.params.items():
        _set(tree, key, value)
    header = (f"# The best trial of study {study.space.study}: trial {origin_number(best)}, best validation top-1 "
              f"{best.value:.4f}.\n# Train it: python -m job train --config {BEST_FILE} run.dir=runs/<name>\n")
    return header + yaml.safe_dump(tree, sort_keys=False)


def write_results(study: Study, study_dir: str, config: str, overrides: list[str]) -> str:
    """leaderboard.txt, best.yaml and report.html in the study dir; returns the leaderboard."""
    storage = open_storage(study_dir)
    table = leaderboard(study)
    storage.write_bytes(LEADERBOARD_FILE, table.encode())
    best = best_config(study, config, overrides)
    if best:
        storage.write_bytes(BEST_FILE, best.encode())
    storage.write_bytes(REPORT_FILE, report_page(study, table).encode())
    return table


def report_page(study: Study, table: str) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("job.tune", "templates"), autoescape=select_autoescape())
    return env.get_template("report.html").render(
        space=study.space, table=table, plots=_plots(study),
        generated=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))


def _plots(study: Study) -> list[dict]:
    """Optuna's own matplotlib plots, as PNG data URLs; a plot that needs more trials says so instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    complete = [t for t in study.trials() if t.state == TrialState.COMPLETE]
    wanted = [("Optimisation history", "validation top-1 of each trial and the best so far",
               lambda: plots.plot_optimization_history(study.study), 1),
              ("Parameter importances", "how much of the objective's variance each parameter explains (fANOVA)",
               lambda: plots.plot_param_importances(study.study), 2),
              ("Parallel coordinates", "each trial's values, coloured by its validation top-1",
               lambda: plots.plot_parallel_coordinate(study.study), 2),
              ("Intermediate values", "validation top-1 per epoch of every trial (pruned ones end early)",
               lambda: plots.plot_intermediate_values(study.study), 1)]
    out = []
    for title, caption, draw, needed in wanted:
        if len(complete) < needed:
            out.append({"title": title, "caption": f"needs {needed} complete trials", "src": ""})
            continue
        try:
            axes = draw()
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
            plt.close(figure)
            src = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
            out.append({"title": title, "caption": caption, "src": src})
        except Exception as e:  # noqa: BLE001 - a plot Optuna cannot draw for this study must not lose the rest
            out.append({"title": title, "caption": html.escape(f"not drawn: {e}"), "src": ""})
    return out


def _best_reported(trial) -> float | None:
    values = list(trial.intermediate_values.values())
    return max(values) if values else None


def _set(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
