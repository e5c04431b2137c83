"""Classification metrics (numpy only) and the validation gate."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    """Accuracy and macro precision/recall/F1 over all ``num_classes`` (a class with no true and
    no predicted rows counts 0, as scikit-learn's ``zero_division=0`` does), plus the matrix."""
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    true_pos = np.diag(matrix).astype(float)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_pos / predicted, 0.0)
        recall = np.where(actual > 0, true_pos / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {
        "accuracy": float(true_pos.sum() / matrix.sum()),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "confusion_matrix": matrix.tolist(),
    }


@dataclass
class GateDecision:
    passed: bool
    reason: str

    def to_dict(self) -> dict:
        return {"passed": self.passed, "reason": self.reason}


def accuracy_gate(candidate_accuracy: float, min_accuracy: float, champion_accuracy: float | None,
         tolerance: float) -> GateDecision:
    """A candidate passes when it reaches ``min_accuracy`` and is not worse than the champion
    (evaluated on the same test data) by more than ``tolerance``."""
    if candidate_accuracy < min_accuracy:
        return GateDecision(False, f"accuracy {candidate_accuracy:.4f} is below the threshold {min_accuracy:.4f}")
    if champion_accuracy is None:
        return GateDecision(True, f"accuracy {candidate_accuracy:.4f} >= {min_accuracy:.4f}; no champion yet")
    if candidate_accuracy < champion_accuracy - tolerance:
        return GateDecision(False, f"accuracy {candidate_accuracy:.4f} is worse than the champion's "
                                   f"{champion_accuracy:.4f} by more than the tolerance {tolerance:.4f}")
    return GateDecision(True, f"accuracy {candidate_accuracy:.4f} >= {min_accuracy:.4f} and within {tolerance:.4f} "
                              f"of the champion's {champion_accuracy:.4f}")
