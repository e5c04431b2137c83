"""Metrics against a case computed by hand, and the gate's decisions."""

import pytest

from tfmlops.evaluation import accuracy_gate, classification_metrics


def test_metrics_hand_computed():
    # classes 0,1,2; true/pred pairs: (0,0) (0,1) (1,1) (1,1) (2,1) (2,2)
    metrics = classification_metrics([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 1, 2], 3)
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 1, 1]]
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # precision: 1/1, 2/4, 1/1 ; recall: 1/2, 2/2, 1/2
    assert metrics["precision_macro"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert metrics["recall_macro"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    f1 = [2 * 1 * 0.5 / 1.5, 2 * 0.5 * 1 / 1.5, 2 * 1 * 0.5 / 1.5]
    assert metrics["f1_macro"] == pytest.approx(sum(f1) / 3)


def test_metrics_class_never_seen_counts_zero():
    metrics = classification_metrics([0, 0], [0, 0], 2)
    assert metrics["accuracy"] == 1 and metrics["precision_macro"] == 0.5 and metrics["f1_macro"] == 0.5


def test_gate_decisions():
    assert not accuracy_gate(0.85, 0.9, None, 0.01).passed
    assert "below the threshold 0.9000" in accuracy_gate(0.85, 0.9, None, 0.01).reason
    assert accuracy_gate(0.95, 0.9, None, 0.01).passed
    assert accuracy_gate(0.945, 0.9, 0.95, 0.01).passed
    rejected = accuracy_gate(0.93, 0.9, 0.95, 0.01)
    assert not rejected.passed and "worse than the champion's 0.9500" in rejected.reason
