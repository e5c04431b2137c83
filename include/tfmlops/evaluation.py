"""Metrics by task (numpy only: classification, binary, regression) and the validation gate."""

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
    return metric_gate("accuracy", candidate_accuracy, min_accuracy, champion_accuracy, tolerance)


def binary_metrics(y_true: np.ndarray, p: np.ndarray) -> dict:
    """AUC (the Mann-Whitney statistic, ties counted half), accuracy, precision and recall at 0.5,
    and the ROC curve's points (``roc``: false and true positive rates by falling threshold)."""
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    pos, neg = int(y.sum()), int(len(y) - y.sum())
    predicted = p >= 0.5
    tp = int(np.sum(predicted & (y == 1)))
    fp = int(np.sum(predicted & (y == 0)))
    fn = int(np.sum(~predicted & (y == 1)))
    if pos and neg:
        order = np.argsort(p, kind="mergesort")
        ranks = np.empty(len(p))
        sorted_p = p[order]
        # average ranks of ties
        _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
        for start, count in zip(first, counts):
            ranks[order[start:start + count]] = start + (count + 1) / 2.0
        auc = float((ranks[y == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))
    else:
        auc = float("nan")
    thresholds = np.unique(p)[::-1]
    fpr = [0.0] + [float(np.sum((p >= t) & (y == 0)) / max(neg, 1)) for t in thresholds]
    tpr = [0.0] + [float(np.sum((p >= t) & (y == 1)) / max(pos, 1)) for t in thresholds]
    return {"auc": auc, "accuracy": float(np.mean(predicted == (y == 1))),
            "precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0,
            "roc": {"fpr": fpr, "tpr": tpr}}


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """RMSE, MAE, R² (1 - SSE/SST; 0 when the labels are constant) and the residuals' mean."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    e = np.asarray(y_pred, dtype=np.float64).ravel() - y
    sst = float(np.sum((y - y.mean()) ** 2))
    return {"rmse": float(np.sqrt(np.mean(e ** 2))), "mae": float(np.mean(np.abs(e))),
            "r2": 1.0 - float(np.sum(e ** 2)) / sst if sst > 0 else 0.0, "mean_residual": float(e.mean())}


def task_metrics(task: str, y_true: np.ndarray, outputs: np.ndarray, num_classes: int) -> dict:
    """Metrics by task from the model's outputs: class probabilities [B, C] (multiclass), the
    positive class's probability [B] (binary), the value [B] (regression). Plot data (the
    confusion matrix, the ROC curve) rides along under ``confusion_matrix`` / ``roc``."""
    if task == "multiclass":
        return classification_metrics(y_true, np.argmax(outputs, axis=1), num_classes)
    if task == "binary":
        return binary_metrics(y_true, outputs)
    return regression_metrics(y_true, outputs)


PLOT_KEYS = ("confusion_matrix", "roc")


def metric_gate(metric: str, candidate: float, threshold: float | None, champion: float | None, tolerance: float,
                higher_is_better: bool = True) -> GateDecision:
    """A candidate passes when its ``metric`` reaches ``threshold`` (when set) and is not worse than
    the champion's (on the same test data) by more than ``tolerance``, in the metric's own unit."""
    if not np.isfinite(candidate):
        return GateDecision(False, f"{metric} of the candidate is {candidate}")
    better = (lambda a, b: a >= b) if higher_is_better else (lambda a, b: a <= b)
    if threshold is not None and not better(candidate, threshold):
        side = "below" if higher_is_better else "above"
        return GateDecision(False, f"{metric} {candidate:.4f} is {side} the threshold {threshold:.4f}")
    bar = f"{metric} {candidate:.4f} {'>=' if higher_is_better else '<='} {threshold:.4f}" if threshold is not None \
        else f"{metric} {candidate:.4f} (no threshold)"
    if champion is None:
        return GateDecision(True, f"{bar}; no champion yet")
    worse = champion - candidate if higher_is_better else candidate - champion
    if worse > tolerance:
        return GateDecision(False, f"{metric} {candidate:.4f} is worse than the champion's {champion:.4f} by more "
                                   f"than the tolerance {tolerance:.4f}")
    return GateDecision(True, f"{bar} and within {tolerance:.4f} of the champion's {champion:.4f}")
