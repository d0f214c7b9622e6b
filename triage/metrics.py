"""Classification and segmentation metrics as pure functions over numpy arrays.

Classification metrics use scikit-learn; mask metrics are computed from tp/fp/fn counts.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)

from triage.records import CLASSES


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion."""
    if total == 0:
        return (0.0, 0.0)
    p = correct / total
    denom = 1 + z**2 / total
    centre = (p + z**2 / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z**2 / (4 * total**2)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> float:
    """ECE with equal-width confidence bins (top-label). probs (N, C), y_true (N,) ints."""
    if len(probs) == 0:
        return 0.0
    conf = probs.max(1)
    correct = (probs.argmax(1) == y_true).astype(np.float64)
    edges = np.linspace(0, 1, n_bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def classification_report(y_true: np.ndarray, probs: np.ndarray, classes: tuple[str, ...] = CLASSES) -> dict:
    """Accuracy (+95% CI), per-class P/R/F1, confusion matrix, tumor-miss rate and ECE."""
    y_true = np.asarray(y_true)
    y_pred = probs.argmax(1)
    labels = list(range(len(classes)))
    acc = float(accuracy_score(y_true, y_pred)) if len(y_true) else 0.0
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    no_tumor = classes.index("no_tumor")
    tumor = y_true != no_tumor
    missed = int(((y_pred == no_tumor) & tumor).sum())
    false_alarm = int(((y_pred != no_tumor) & ~tumor).sum())
    lo, hi = wilson_interval(int((y_pred == y_true).sum()), len(y_true))
    return {
        "n": len(y_true),
        "accuracy": acc,
        "accuracy_ci95": [lo, hi],
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(classes)
        },
        "macro_f1": float(np.mean(f)),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "tumor_miss_rate": missed / max(1, int(tumor.sum())),
        "tumor_missed": missed,
        "no_tumor_false_alarm_rate": false_alarm / max(1, int((~tumor).sum())),
        "ece": expected_calibration_error(probs, y_true),
    }


def binary_tumor_report(is_tumor: np.ndarray, p_tumor: np.ndarray, threshold: float = 0.5) -> dict:
    """Tumor vs no-tumor accuracy, sensitivity and specificity."""
    pred = p_tumor >= threshold
    is_tumor = np.asarray(is_tumor, bool)
    correct = int((pred == is_tumor).sum())
    lo, hi = wilson_interval(correct, len(is_tumor))
    return {
        "n": len(is_tumor),
        "accuracy": correct / max(1, len(is_tumor)),
        "accuracy_ci95": [lo, hi],
        "sensitivity": float((pred & is_tumor).sum() / max(1, is_tumor.sum())),
        "specificity": float((~pred & ~is_tumor).sum() / max(1, (~is_tumor).sum())),
    }


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two boolean masks; both empty counts as a perfect 1.0."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
    if tp + fp + fn == 0:
        return 1.0, 1.0
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


def box_iou(a: tuple[int, int, int, int] | None, b: tuple[int, int, int, int] | None) -> float:
    if a is None or b is None:
        return 0.0
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def average_precision_at(ious: list[float], scores: list[float], n_truth: int, threshold: float = 0.5) -> float:
    """AP at an IoU threshold for one predicted box per image (VOC-style all-point interpolation).

    ious/scores: one entry per predicted box (IoU with that image's truth box, 0 if none).
    n_truth: number of images that have a truth box.
    """
    if n_truth == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, dtype=np.float64))
    tp = (np.asarray(ious)[order] >= threshold).astype(np.float64)
    fp = 1 - tp
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    recall = ctp / n_truth
    precision = ctp / np.maximum(ctp + cfp, 1e-9)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))
