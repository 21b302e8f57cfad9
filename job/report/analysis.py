"""Numbers the report derives from the test set's predictions and the stored metrics (numpy only)."""
from __future__ import annotations

from typing import Any

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted.astype(np.float64))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def row_normalised(confusion: np.ndarray) -> np.ndarray:
    """Each true class's row as fractions of its support (rows of absent classes stay 0)."""
    confusion = np.asarray(confusion, np.float64)
    rows = confusion.sum(axis=1, keepdims=True)
    return np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)


def superclass_confusion(confusion: np.ndarray, fine_to_coarse: np.ndarray, num_coarse: int) -> np.ndarray:
    """The fine confusion matrix summed into superclass blocks: (true superclass, superclass of the prediction)."""
    onehot = np.zeros((len(fine_to_coarse), num_coarse), np.int64)
    onehot[np.arange(len(fine_to_coarse)), fine_to_coarse] = 1
    return onehot.T @ np.asarray(confusion, np.int64) @ onehot


def most_confused(confusion: np.ndarray, names: list[str], k: int = 15) -> list[dict[str, Any]]:
    """The `k` largest off-diagonal cells: a true class taken for another, with the count and the share of the true
    class's test images."""
    confusion = np.asarray(confusion, np.int64)
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(off, axis=None)[::-1][:k]
    support = confusion.sum(axis=1)
    pairs = []
    for true, predicted in zip(*np.unravel_index(flat, off.shape)):
        count = int(off[true, predicted])
        if count == 0:
            break
        pairs.append({"true": names[true], "predicted": names[predicted], "count": count,
                      "share": count / support[true] if support[true] else 0.0})
    return pairs


def worst_first(per_class: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-class rows by F1, then recall, ascending: the classes the model is worst at first."""
    return sorted(per_class, key=lambda c: (c["f1"], c["recall"], c["class"]))


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> dict[str, Any]:
    """Reliability of the top-1 confidence in `bins` equal-width bins, and the expected calibration error (the
    support-weighted mean gap between accuracy and confidence; Guo et al. 2017)."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    accuracy = np.divide(np.bincount(index, correct, bins), count, out=np.zeros(bins), where=count > 0)
    mean_confidence = np.divide(np.bincount(index, confidence, bins), count, out=np.zeros(bins), where=count > 0)
    ece = float(np.sum(count * np.abs(accuracy - mean_confidence)) / max(len(confidence), 1))
    return {"edges": edges, "count": count, "accuracy": accuracy, "confidence": mean_confidence, "ece": ece}


def gallery_picks(probabilities: np.ndarray, labels: np.ndarray, k: int = 8) -> dict[str, np.ndarray]:
    """Indices of the `k` most confident correct predictions and the `k` most confident mistakes."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    order = np.argsort(-confidence, kind="stable")
    right = predicted[order] == labels[order]
    return {"correct": order[right][:k], "mistakes": order[~right][:k]}


def top_k(probabilities: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(classes, probabilities) of each row's `k` most probable classes, most probable first."""
    k = min(k, probabilities.shape[1])
    classes = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return classes, np.take_along_axis(probabilities, classes, axis=1)
