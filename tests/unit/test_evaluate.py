"""Evaluation numbers agree with scikit-learn's metrics on the same predictions."""
import numpy as np
import pytest
from sklearn import metrics as skm

from job.evaluate import compute_metrics, confusion_image, format_per_class, format_report


@pytest.fixture
def predictions():
    rng = np.random.default_rng(3)
    num_classes, n = 12, 600
    labels = rng.integers(0, num_classes, n)
    logits = rng.normal(size=(n, num_classes))
    logits[np.arange(n), labels] += rng.normal(1.0, 1.0, n)  # better than chance, far from perfect
    logits[:, 11] -= 10  # class 11 is never predicted: precision must be 0, not NaN
    return labels, logits, [f"class{i}" for i in range(num_classes)]


def test_metrics_match_scikit_learn(predictions):
    labels, logits, names = predictions
    m = compute_metrics(labels, logits, names)
    predicted = logits.argmax(1)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert m["top1"] == pytest.approx(skm.accuracy_score(labels, predicted))
    assert m["top5"] == pytest.approx(skm.top_k_accuracy_score(labels, logits, k=5, labels=range(12)))
    assert m["loss"] == pytest.approx(skm.log_loss(labels, probs, labels=range(12)), rel=1e-6)
    p, r, f, s = skm.precision_recall_fscore_support(labels, predicted, labels=range(12), zero_division=0)
    assert [c["precision"] for c in m["per_class"]] == pytest.approx(p)
    assert [c["recall"] for c in m["per_class"]] == pytest.approx(r)
    assert [c["f1"] for c in m["per_class"]] == pytest.approx(f)
    assert [c["support"] for c in m["per_class"]] == list(s)
    assert m["macro_precision"] == pytest.approx(skm.precision_score(labels, predicted, average="macro",
                                                                      zero_division=0))
    assert m["macro_recall"] == pytest.approx(skm.recall_score(labels, predicted, average="macro", zero_division=0))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(labels, predicted, average="macro", zero_division=0))
    assert np.array_equal(m["confusion_matrix"], skm.confusion_matrix(labels, predicted, labels=range(12)))
    assert m["per_class"][11]["precision"] == 0.0


def test_superclass_accuracy_from_fine_predictions(predictions):
    labels, logits, names = predictions
    fine_to_coarse = np.arange(12) // 3
    m = compute_metrics(labels, logits, names, fine_to_coarse, ["a", "b", "c", "d"])
    expected = skm.accuracy_score(fine_to_coarse[labels], fine_to_coarse[logits.argmax(1)])
    assert m["coarse_top1"] == pytest.approx(expected)
    assert m["coarse_top1"] >= m["top1"]


def test_reports_are_readable(predictions):
    labels, logits, names = predictions
    m = compute_metrics(labels, logits, names)
    report = format_report(m, "title")
    assert "top-1 accuracy" in report and f"{m['top1']:.4f}" in report
    table = format_per_class(m)
    assert len(table.splitlines()) == 13 and "class11" in table
    image = confusion_image(np.array(m["confusion_matrix"]))
    assert image.dtype == np.uint8 and image.shape[0] == 1 and image.shape[-1] == 3
