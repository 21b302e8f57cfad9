"""One run's report, `eval/report.html`: made at the end of training from the model in memory (job/train.py)
and by `python -m job report --run-dir DIR [--checkpoint latest|best]` from a committed checkpoint.

The test-set figures are computed here from the model's predictions with job/evaluate.py's own compute_metrics, so
they are those of eval/metrics.json for the same weights, and the gallery and calibration match them.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from job import config as configlib
from job.evaluate import compute_metrics, predict_logits
from job.layout import CONFIG_FILE, HISTORY_FILE, REPORT_FILE
from job.report import analysis, plots
from job.report.gallery import gallery
from job.report.page import render
from job.report.references import reference_for
from job.report.rundata import load_run
from job.storage import LocalStorage
from job.tta import describe as describe_tta

log = logging.getLogger("job")

TEMPLATE = "report.html.j2"


def write_report(run, cfg, model, splits, step: int, weights: str = "final", logits: np.ndarray | None = None,
                 tta: str | None = None, plain_logits: np.ndarray | None = None) -> Path:
    """Render the report of `model` into the run's working copy and queue its upload: from the test set's `logits`
    under test-time augmentation `tta` (default the run's train.tta; the final evaluation's logits at the end of a
    run), or predicted here; with TTA, the figures without it too (from `plain_logits`, or predicted here).
    `weights` says which weights these are (final, latest, best) for the header. Returns the local file."""
    began = time.perf_counter()
    for name in (CONFIG_FILE, HISTORY_FILE):  # a report made by the CLI on a remote run: they are in the bucket
        run.fetch(name)
    tta = tta or cfg.train.tta
    if logits is None:
        logits = predict_logits(model, splits.x_test, cfg.train.eval_batch_size, tta)
    if tta != "off" and plain_logits is None:
        plain_logits = predict_logits(model, splits.x_test, cfg.train.eval_batch_size)
    predicted = time.perf_counter()
    html = render_report(run.url, LocalStorage(run.local), cfg, model, splits, logits, step, weights, tta,
                         plain_logits)
    path = run.local / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    run.publish(REPORT_FILE)
    log.info("report stored in %s/%s (%.1f s: predictions %.1f s, the page %.1f s)", run.url, REPORT_FILE,
             time.perf_counter() - began, predicted - began, time.perf_counter() - predicted)
    return path


def render_report(url: str, storage, cfg, model, splits, logits: np.ndarray, step: int, weights: str,
                  tta: str = "off", plain_logits: np.ndarray | None = None) -> str:
    """The page, from the test set's logits (under `tta`; `plain_logits` without it) and the run's stored history
    (read through `storage`)."""
    labels = np.asarray(splits.y_test, np.int64)
    names = list(splits.class_names)
    fine_to_coarse = splits.fine_to_coarse if cfg.data.label_mode == "fine" else None
    metrics = compute_metrics(labels, logits, names, fine_to_coarse, splits.coarse_names)
    metrics["tta"] = tta
    if tta != "off" and plain_logits is not None:
        metrics["without_tta"] = compute_metrics(labels, plain_logits, names, fine_to_coarse, splits.coarse_names)
    probabilities = analysis.softmax(logits)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    confusion = np.asarray(metrics["confusion_matrix"])
    data = load_run(url, storage)

    superclass = None
    if fine_to_coarse is not None:
        coarse = analysis.superclass_confusion(confusion, fine_to_coarse, len(splits.coarse_names))
        superclass = plots.confusion(analysis.row_normalised(coarse), list(splits.coarse_names),
                                     "superclasses (the fine predictions' superclass)")
    cal = analysis.calibration(confidence, correct)
    return render(
        TEMPLATE,
        title=f"{cfg.model.name} on {data.dataset}: {cfg.preset}",
        generated_at=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        url=url, header=header(data, metrics, step, weights),
        curves=plots.curves(data.history) if data.epochs else None,
        starts=[{"number": i + 1, "at": _when(s.get("started_at")), "host": s.get("host", "–"),
                 "step": s.get("step", 0), "end_step": s.get("end_step"), "outcome": s.get("outcome")}
                for i, s in enumerate(data.starts)],
        confusion=plots.confusion(analysis.row_normalised(confusion), names, f"{len(names)} classes"),
        superclass=superclass,
        pairs=analysis.most_confused(confusion, names),
        per_class=analysis.worst_first(metrics["per_class"]),
        histogram=plots.prediction_histogram(confusion.sum(axis=0), confusion.sum(axis=1), names),
        gallery=gallery(model, splits.x_test, labels, probabilities, names),
        calibration={"plot": plots.reliability(cal), "ece": cal["ece"],
                     "mean_confidence": float(confidence.mean()) if len(confidence) else None,
                     "accuracy": float(correct.mean()) if len(correct) else None},
        config=configlib.to_yaml(cfg), versions=software_versions(),
    )


def header(data, metrics: dict[str, Any], step: int, weights: str) -> dict[str, Any]:
    cfg = data.cfg
    reference = reference_for(cfg)
    epochs_done = max([e["epoch"] for e in data.epochs], default=0)
    return {
        "model": cfg.model.name, "dataset": data.dataset, "preset": cfg.preset, "step": step, "weights": weights,
        "total_steps": data.history.get("steps_per_epoch", 0) * data.total_epochs or None,
        "epochs": epochs_done, "total_epochs": data.total_epochs, "parameters": data.parameters,
        "wall_seconds": data.wall_seconds, "restarts": data.restarts, "images_per_second": data.images_per_second,
        "examples": metrics["examples"], "loss": metrics["loss"], "top1": metrics["top1"], "top5": metrics["top5"],
        "macro_f1": metrics["macro_f1"], "coarse_top1": metrics.get("coarse_top1"),
        "best_val_top1": data.best_val_top1, "reference": reference,
        "tta": describe_tta(metrics.get("tta", "off")) if metrics.get("tta", "off") != "off" else None,
        "without_tta": {k: metrics["without_tta"][k] for k in ("top1", "top5", "loss")}
        if "without_tta" in metrics else None,
        "reference_gap": None if reference is None else metrics["top1"] - reference.top1,
    }


def software_versions() -> list[tuple[str, str]]:
    versions = [("python", platform.python_version()), ("platform", platform.platform())]
    for package in ("cifar-job", "tensorflow", "tensorflow-cpu", "keras", "numpy", "matplotlib", "jinja2"):
        try:
            versions.append((package, importlib.metadata.version(package)))
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "–"
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def report_run(selection, tta: str | None = None) -> Path:
    """`python -m job report`: rebuild the run's model, restore the selected checkpoint (job/weights.py) and write
    the report. job/report/commands.py checks the arguments first."""
    from job.builder import build_for_evaluation
    from job.rundir import RunDir
    from job.weights import choose, restore

    parts = build_for_evaluation(RunDir.open(selection.run_dir))
    chosen = choose(parts.store, selection)
    restore(parts.checkpoint, parts.ema, chosen.prefix, selection)
    path = write_report(parts.run, parts.cfg, parts.model, parts.splits, step=chosen.step,
                        weights=selection.label, tta=tta)
    parts.run.close(parts.cfg.checkpoint.upload_timeout_seconds)
    return path
