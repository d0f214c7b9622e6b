"""Cross-source evaluation: the held-out parts, the per-part scores and the report."""

from types import SimpleNamespace

import numpy as np
import pytest

from triage.cross_source import Part, held_out_parts, render_markdown, risk_coverage, score_part, strip_and_degrade
from triage.records import CaseResult, Prediction, Scan, Segmentation


def _result(p_tumor: float, flags=(), mask_px: int = 0) -> CaseResult:
    probs = np.array([1 - p_tumor, p_tumor, 0.0, 0.0], np.float32)
    label = "glioma" if p_tumor >= 0.5 else "no_tumor"
    mask = np.zeros((16, 16), bool)
    mask[: mask_px // 16] = True
    seg = Segmentation(mask=mask, area_px=int(mask.sum()), area_mm2=None, bbox=None, max_prob=0.9)
    pred = Prediction(probs=probs, label=label, confidence=float(probs.max()), entropy=0.1, ood_score=1.0, ood=False)
    scan = Scan(scan_id="x", name="x", pixels=np.zeros((16, 16), np.uint8))
    return CaseResult(name="x", status="ok", scan=scan, prediction=pred, segmentation=seg, flags=tuple(flags))


def test_score_part_counts_calls_flags_and_masks() -> None:
    samples = tuple(SimpleNamespace(label=lab, mask_path="m") for lab in ("glioma", "glioma", "no_tumor", "no_tumor"))
    results = [_result(0.95, mask_px=64), _result(0.02), _result(0.6, ("uncertain",), mask_px=32), _result(0.01)]
    truth = [np.ones((16, 16), bool), np.ones((16, 16), bool), np.zeros((16, 16), bool), np.zeros((16, 16), bool)]
    r = score_part(Part("p", samples), results, truth)
    assert r["sensitivity"] == 0.5 and r["specificity"] == 0.5
    assert r["confident_no_tumor_on_tumor"] == 0.5  # the missed glioma has P(no_tumor) 0.98
    assert r["errors"] == 2 and r["errors_flagged"] == 0.5 and r["correct_flagged"] == 0.0
    assert r["auc"] == pytest.approx(0.75)
    assert r["dice"] == pytest.approx(np.mean([2 * 64 / (64 + 256), 0.0]))
    assert r["fp_masks"] == 0.5 and r["masks_unreadable"] == 0
    text = render_markdown(
        {
            "created": "now",
            "seconds": 1.0,
            "versions": {"classifier": "a", "segmenter": "b"},
            "complete": False,
            "parts": {"p": r},
        }
    )
    assert "Partial report" in text and "| p | 4 |" in text


def test_risk_coverage() -> None:
    errors = np.array([0, 0, 1, 1], float)
    rc = risk_coverage(errors, np.array([0.9, 0.8, 0.1, 0.2]))
    assert rc["error_at_50"] == 0.0 and rc["error_at_100"] == 0.5
    assert rc["aurc"] == pytest.approx(np.mean([0, 0, 1 / 3, 0.5]))


def test_strip_and_degrade_blacks_out_the_scalp(synthetic_slice) -> None:
    img, _ = synthetic_slice(skull=10)
    out = strip_and_degrade(img)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (out[img > 200] < 100).mean() > 0.5  # the bright ring is gone
    assert abs(float(out[118:138, 118:138].mean()) - float(img[118:138, 118:138].mean())) < 10


def test_held_out_parts_are_the_recipe_test_groups(shared_data) -> None:
    parts = {p.name: p for p in held_out_parts(shared_data)}
    assert len(parts["BRISC test"].samples) == 1000
    lgg = parts["LGG sites CS+FG (flair)"].samples
    assert lgg and all(s.patient_id.split("_")[1] in ("CS", "FG") for s in lgg)
    assert {s.label for s in parts["Feltrin held-out subtypes"].samples} <= {"glioma", "tumor"}
