"""The report's figures, each returned as a PNG data URI to embed in the page.

matplotlib's object-oriented API on the Agg canvas (no pyplot: no global state, no GUI backend, safe in any thread)
with its bundled DejaVu Sans, so nothing is downloaded and the pictures look the same on every machine.
"""
from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.image import imsave

STYLE = {"font.family": "DejaVu Sans", "font.size": 9, "axes.grid": True, "grid.alpha": 0.3,
         "axes.spines.top": False, "axes.spines.right": False, "savefig.dpi": 100}
TRAIN, VALIDATION, RESUME = "#1f77b4", "#d62728", "#7f7f7f"


def png_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_uri(image: np.ndarray, scale: int = 1) -> str:
    """A (H, W, 3) or (H, W, 1) uint8 image as a PNG data URI, enlarged `scale` times (nearest neighbour)."""
    image = np.asarray(image, np.uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if scale > 1:
        image = image.repeat(scale, axis=0).repeat(scale, axis=1)
    buffer = io.BytesIO()
    imsave(buffer, image, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _figure(**kwargs) -> Figure:
    return Figure(layout="constrained", **kwargs)


def _resume_marks(ax, starts: list[dict[str, Any]], steps_per_epoch: int) -> None:
    for number, start in enumerate(starts[1:], start=2):
        x = start.get("step", 0) / max(steps_per_epoch, 1)
        ax.axvline(x, color=RESUME, linestyle="--", linewidth=1)
        ax.annotate(f"start {number}", (x, 1.0), xycoords=("data", "axes fraction"), rotation=90, fontsize=7,
                    color=RESUME, ha="right", va="top")


def curves(history: dict[str, Any]) -> str:
    """Train and validation loss and top-1, the learning rate and throughput per epoch; a dashed line where each
    later process start resumed."""
    epochs = history.get("epochs", [])
    starts, spe = history.get("starts", []), history.get("steps_per_epoch", 1)
    x = [e["epoch"] for e in epochs]
    panels = [("loss", [("train_loss", "train", TRAIN), ("val_loss", "validation", VALIDATION)]),
              ("top-1 accuracy", [("train_top1", "train", TRAIN), ("val_top1", "validation", VALIDATION)]),
              ("learning rate", [("lr", "lr", TRAIN)]),
              ("images/s", [("images_per_second", "train images/s", TRAIN)])]
    with rc_context(STYLE):
        fig = _figure(figsize=(10, 6.4))
        for ax, (title, series) in zip(fig.subplots(2, 2).flat, panels):
            for key, label, colour in series:
                points = [(xi, e.get(key)) for xi, e in zip(x, epochs) if e.get(key) is not None]
                if points:
                    ax.plot(*zip(*points), marker="o", markersize=3, color=colour, label=label)
            _resume_marks(ax, starts, spe)
            ax.set_title(title)
            ax.set_xlabel("epoch")
            if ax.get_legend_handles_labels()[0] and len(series) > 1:
                ax.legend(loc="best", fontsize=8)
        return png_uri(fig)


def confusion(normalised: np.ndarray, names: list[str], title: str) -> str:
    """A row-normalised confusion matrix with every class labelled on both axes (values written in the cells when
    there are at most 20 classes)."""
    n = len(names)
    side = 8.0 if 10 < n <= 20 else min(16.0, max(5.0, 0.16 * n + 2.5))  # 20 superclasses: long labels
    fontsize = 8 if n <= 20 else max(4.0, 9.0 - n / 20)
    with rc_context({**STYLE, "axes.grid": False}):
        fig = _figure(figsize=(side + 1.2, side))
        ax = fig.subplots()
        image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks(range(n), names, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(n), names, fontsize=fontsize)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(title)
        if n <= 20:
            for (i, j), value in np.ndenumerate(normalised):
                if value >= 0.005:
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6.5,
                            color="white" if value > 0.5 else "black")
        fig.colorbar(image, ax=ax, shrink=0.6, label="share of the true class")
        return png_uri(fig)


def prediction_histogram(predicted_counts: np.ndarray, true_counts: np.ndarray, names: list[str]) -> str:
    """How often each class was predicted, against how many test images each class has."""
    n = len(names)
    with rc_context(STYLE):
        fig = _figure(figsize=(min(20.0, max(7.0, 0.17 * n + 3)), 3.8))
        ax = fig.subplots()
        positions = np.arange(n)
        ax.bar(positions, true_counts, width=0.9, color="#dddddd", edgecolor="#999999", label="true count")
        ax.bar(positions, predicted_counts, width=0.45, color=TRAIN, label="predicted count")
        ax.set_xticks(positions, names, rotation=90, fontsize=8 if n <= 20 else 5.5)
        ax.set_xlim(-0.7, n - 0.3)
        ax.set_ylabel("test images")
        ax.legend(loc="upper right", fontsize=8)
        return png_uri(fig)


def reliability(cal: dict[str, Any]) -> str:
    """Accuracy against confidence per bin (a calibrated model follows the diagonal), and how many predictions each
    bin holds."""
    edges, width = cal["edges"], np.diff(cal["edges"])
    filled = cal["count"] > 0
    with rc_context(STYLE):
        fig = _figure(figsize=(8.5, 3.6))
        left, right = fig.subplots(1, 2)
        left.plot([0, 1], [0, 1], color=RESUME, linestyle="--", linewidth=1, label="perfect calibration")
        left.bar(edges[:-1][filled], cal["accuracy"][filled], width=width[filled], align="edge", color=TRAIN,
                 edgecolor="white", label="accuracy")
        accuracy, confidence = cal["accuracy"][filled], cal["confidence"][filled]
        left.bar(edges[:-1][filled], np.abs(confidence - accuracy), width=width[filled],
                 bottom=np.minimum(confidence, accuracy), align="edge", color=VALIDATION, alpha=0.35,
                 label="gap to the mean confidence")
        left.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-1 probability)", ylabel="accuracy",
                 title=f"reliability (ECE {100 * cal['ece']:.2f}%)")
        left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=7)
        right.bar(edges[:-1], cal["count"], width=width, align="edge", color=TRAIN, edgecolor="white")
        right.set(xlim=(0, 1), xlabel="confidence (top-1 probability)", ylabel="test images",
                  title="predictions per confidence bin")
        return png_uri(fig)


def compare_curves(runs: list[tuple[str, dict[str, Any]]]) -> str:
    """Each run's loss and top-1 per epoch (train and validation) overlaid, one colour per run."""
    panels = [("train loss", "train_loss"), ("validation loss", "val_loss"),
              ("train top-1", "train_top1"), ("validation top-1", "val_top1")]
    with rc_context(STYLE):
        fig = _figure(figsize=(10, 6.4))
        for ax, (title, key) in zip(fig.subplots(2, 2).flat, panels):
            for number, (label, history) in enumerate(runs):
                points = [(e["epoch"], e[key]) for e in history.get("epochs", []) if e.get(key) is not None]
                if points:
                    ax.plot(*zip(*points), marker="o", markersize=3, color=f"C{number % 10}", label=label)
            ax.set_title(title)
            ax.set_xlabel("epoch")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best", fontsize=8)
        return png_uri(fig)


def compare_f1(runs: list[tuple[str, list[float]]], names: list[str]) -> str:
    """Each run's per-class F1, side by side: grouped bars up to 20 classes, markers beyond."""
    n, count = len(names), len(runs)
    positions = np.arange(n)
    with rc_context(STYLE):
        fig = _figure(figsize=(min(20.0, max(7.0, 0.17 * n + 3)), 3.8))
        ax = fig.subplots()
        for number, (label, f1) in enumerate(runs):
            if n <= 20:
                width = 0.8 / count
                ax.bar(positions - 0.4 + width * (number + 0.5), f1, width=width, color=f"C{number % 10}",
                       label=label)
            else:
                ax.plot(positions, f1, linestyle="none", marker="o", markersize=3, color=f"C{number % 10}",
                        label=label)
        ax.set_xticks(positions, names, rotation=90, fontsize=8 if n <= 20 else 5.5)
        ax.set(ylim=(0, 1.02), ylabel="F1", xlim=(-0.7, n - 0.3))
        ax.legend(loc="lower right", fontsize=8)
        return png_uri(fig)
