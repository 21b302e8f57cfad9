"""job/report/analysis.py, the report's numbers, against figures worked out by hand: calibration and its ECE, the
most confused pairs, row-normalised and superclass confusion matrices (the report pages:
tests/integration/test_report.py)."""
import numpy as np
import pytest

from tests.support.cifar_archives import CIFAR100_FINE_TO_COARSE


def test_calibration_and_confusions_by_hand():
    from job.report import analysis

    # two bins' worth: 0.95-confident and right 3 times of 4; 0.55-confident and right 1 time of 2
    cal = analysis.calibration(np.array([0.95, 0.95, 0.95, 0.95, 0.55, 0.55]), np.array([1, 1, 1, 0, 1, 0]), bins=10)
    assert cal["count"].sum() == 6 and cal["count"][9] == 4 and cal["count"][5] == 2
    assert cal["ece"] == pytest.approx((4 * abs(0.75 - 0.95) + 2 * abs(0.5 - 0.55)) / 6)

    confusion = np.array([[5, 3, 0], [0, 7, 1], [2, 0, 4]])
    pairs = analysis.most_confused(confusion, ["a", "b", "c"], k=5)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("a", "b", 3), ("c", "a", 2), ("b", "c", 1)]
    assert pairs[0]["share"] == pytest.approx(3 / 8)
    np.testing.assert_allclose(analysis.row_normalised(confusion).sum(axis=1), 1.0)
    coarse = analysis.superclass_confusion(confusion, np.array([0, 0, 1]), 2)
    assert coarse.tolist() == [[15, 1], [2, 4]]
    assert analysis.superclass_confusion(np.eye(100, dtype=int), CIFAR100_FINE_TO_COARSE, 20).trace() == 100
