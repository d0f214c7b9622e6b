import numpy as np
import pytest

from triage.metrics import (
    average_precision_at,
    binary_tumor_report,
    box_iou,
    classification_report,
    dice_iou,
    expected_calibration_error,
    wilson_interval,
)
from triage.preprocess import mask_bbox


def test_dice_iou_known_values():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :5] = True
    b[:, 2:7] = True  # overlap 3 columns of 10
    d, j = dice_iou(a, b)
    assert d == pytest.approx(2 * 30 / (50 + 50))
    assert j == pytest.approx(30 / 70)
    assert dice_iou(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == (1.0, 1.0)
    assert dice_iou(a, np.zeros_like(a)) == (0.0, 0.0)


def test_ece_perfect_and_overconfident():
    y = np.array([0, 1, 2, 3])
    onehot = np.eye(4)
    assert expected_calibration_error(onehot, y) == pytest.approx(0.0)
    wrong = np.eye(4)[[1, 2, 3, 0]]
    assert expected_calibration_error(wrong, y) == pytest.approx(1.0)


def test_classification_report_counts_tumor_misses():
    y = np.array([1, 1, 2, 0])  # glioma, glioma, meningioma, no_tumor
    probs = np.eye(4)[[0, 1, 2, 0]]  # first glioma missed as no_tumor
    rep = classification_report(y, probs)
    assert rep["accuracy"] == pytest.approx(0.75)
    assert rep["tumor_missed"] == 1
    assert rep["tumor_miss_rate"] == pytest.approx(1 / 3)
    assert rep["per_class"]["glioma"]["recall"] == pytest.approx(0.5)
    assert rep["confusion_matrix"][1][0] == 1
    lo, hi = rep["accuracy_ci95"]
    assert lo < 0.75 < hi


def test_binary_report_and_wilson():
    rep = binary_tumor_report(np.array([1, 1, 0, 0], bool), np.array([0.9, 0.2, 0.1, 0.6]))
    assert rep["accuracy"] == 0.5 and rep["sensitivity"] == 0.5 and rep["specificity"] == 0.5
    lo, hi = wilson_interval(50, 100)
    assert 0.39 < lo < 0.41 and 0.59 < hi < 0.61


def test_boxes_and_ap():
    m = np.zeros((20, 20), bool)
    m[5:10, 2:6] = True
    assert mask_bbox(m) == (2, 5, 6, 10)
    assert mask_bbox(np.zeros((3, 3), bool)) is None
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou(None, (0, 0, 1, 1)) == 0.0
    assert average_precision_at([0.9, 0.8], [0.9, 0.8], 2) == pytest.approx(1.0)
    assert average_precision_at([0.9, 0.1], [0.9, 0.8], 2) == pytest.approx(0.5)
