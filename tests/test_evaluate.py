"""evaluate.score on hand-made results: the classifier view and the worklist (either model) view."""

from types import SimpleNamespace

import numpy as np

from triage.evaluate import render_markdown, score
from triage.records import CaseResult, Prediction, Scan, Segmentation


def _result(label: str, mask_px: int) -> CaseResult:
    probs = np.array([0.9, 0.05, 0.03, 0.02] if label == "no_tumor" else [0.05, 0.9, 0.03, 0.02], np.float32)
    mask = np.zeros((32, 32), bool)
    mask[: mask_px // 32, :] = True  # mask_px = 0 leaves it empty
    seg = Segmentation(mask=mask, area_px=int(mask.sum()), area_mm2=None, bbox=None, max_prob=0.9)
    pred = Prediction(probs=probs, label=label, confidence=0.9, entropy=0.1, ood_score=1.0, ood=False)
    scan = Scan(scan_id="0", name="x", pixels=np.zeros((32, 32), np.uint8))
    # As the service does: a no_tumor call with a kept mask is flagged.
    flags = ("disagreement",) if (label == "no_tumor" and mask_px) else ()
    return CaseResult(name="x", status="ok", scan=scan, prediction=pred, segmentation=seg, flags=flags)


def test_worklist_view_counts_a_kept_mask_as_positive():
    truth = ["tumor", "tumor", "no_tumor", "no_tumor"]
    results = [
        _result("glioma", 64),  # found by the classifier
        _result("no_tumor", 64),  # classifier missed it, segmenter kept a mask (disagreement)
        _result("no_tumor", 0),  # true negative
        _result("no_tumor", 64),
    ]  # false alarm from the segmenter
    test = SimpleNamespace(samples=[SimpleNamespace(label=t, mask_path=None) for t in truth])
    m = score(test, results)
    assert m["binary"]["sensitivity"] == 0.5 and m["binary"]["specificity"] == 1.0
    assert m["screen"]["sensitivity"] == 1.0 and m["screen"]["specificity"] == 0.5
    assert m["segmentation"]["false_positive_mask_rate"] == 0.5


def test_rejected_files_are_not_positive_and_markdown_renders():
    test = SimpleNamespace(
        samples=[SimpleNamespace(label="tumor", mask_path=None), SimpleNamespace(label="no_tumor", mask_path=None)]
    )
    results = [CaseResult(name="bad", status="rejected", error="not an image"), _result("no_tumor", 0)]
    m = score(test, results)
    assert m["rejected_by_pipeline"] == 1 and m["screen"]["sensitivity"] == 0.0
    rep = {
        "dataset": "d",
        "created": "now",
        "versions": {"classifier": "v", "segmenter": "v"},
        "selection": "all",
        "n_candidates": 2,
        "n_removed_duplicates": 0,
        "dedup_note": "",
        "n_unreadable": 0,
        "ms_per_image": 1.0,
        "threads": 1,
        "metrics": m,
    }
    text = render_markdown(rep)
    assert "worklist (classifier or segmenter)" in text


def test_dice_summary_per_class_and_missed_masks(tmp_path):
    from PIL import Image

    truth = np.zeros((32, 32), np.uint8)
    truth[:2, :] = 255  # the same 64-pixel band _result(..., 64) predicts
    Image.fromarray(truth).save(tmp_path / "m.png")
    samples = [
        SimpleNamespace(label="glioma", mask_path=tmp_path / "m.png"),
        SimpleNamespace(label="pituitary", mask_path=tmp_path / "m.png"),
    ]
    results = [_result("glioma", 64), _result("pituitary", 0)]
    seg = score(SimpleNamespace(samples=samples), results)["segmentation"]
    assert seg["dice_mean"] == 0.5 and seg["dice_below_0.1_rate"] == 0.5
    assert seg["dice_by_class"] == {"glioma": 1.0, "pituitary": 0.0}


def test_unreadable_truth_masks_are_counted_not_dropped(tmp_path):
    broken = tmp_path / "broken_mask.png"
    broken.write_bytes(b"not a png")
    wrong_size = tmp_path / "small_mask.png"
    import cv2

    cv2.imwrite(str(wrong_size), np.zeros((8, 8), np.uint8))
    test = SimpleNamespace(
        samples=[
            SimpleNamespace(label="glioma", mask_path=broken),
            SimpleNamespace(label="glioma", mask_path=wrong_size),
            SimpleNamespace(label="no_tumor", mask_path=None),
        ]
    )
    m = score(test, [_result("glioma", 64), _result("glioma", 64), _result("no_tumor", 0)])
    seg = m["segmentation"]
    assert seg["truth_masks_unreadable"] == 2 and seg["tumor_slices"] == 0
    assert any("broken_mask.png" in e for e in seg["truth_masks_unreadable_examples"])


def test_predict_cached_gives_one_result_per_sample_through_analyze_many(tmp_path):
    """The evaluation reads its files through triage.batch.analyze_many: one result per sample (its
    first frame), a rejected one for a file that is gone, batches of ``batch`` files."""
    import cv2

    from tests.conftest import draw_synthetic_slice
    from triage.config import get_settings
    from triage.evaluate import predict_cached

    class Service:
        def __init__(self):
            self.settings, self.calls = get_settings(), []

        def analyze_scans(self, scans, explain=False):
            self.calls.append(len(scans))
            return [CaseResult(name=s.name, status="ok", scan_id=s.scan_id, scan=s) for s in scans]

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"s{i}.png")
        cv2.imwrite(str(paths[-1]), draw_synthetic_slice((64, 64), seed=i)[0])
    paths.insert(1, tmp_path / "gone.png")
    test = SimpleNamespace(samples=[SimpleNamespace(path=p) for p in paths])
    service = Service()
    results = predict_cached(service, test, batch=2, progress=False)
    assert [(r.name, r.status) for r in results] == [
        ("s0.png", "ok"),
        ("gone.png", "rejected"),
        ("s1.png", "ok"),
        ("s2.png", "ok"),
    ]
    assert results[1].error.startswith("cannot read file") and service.calls == [1, 2]
