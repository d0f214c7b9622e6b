"""The promotion rule (issue 19, item 2) and the model-change log."""

from __future__ import annotations

import json

import numpy as np
import pytest

from triage.clock import utc_now
from triage.config import Settings
from triage.lifecycle import compare, promotion
from triage.lifecycle.promotion import MIN_IMAGES, MIN_PER_CLASS, PromotionRefused, judge
from triage.models import active_version, set_active
from triage.records import CLASSES


def _probs(y: np.ndarray, correct: np.ndarray, confidence: float = 0.9) -> list[list[float]]:
    """One-hot-ish probabilities: the true class where ``correct``, the next class otherwise."""
    out = np.full((len(y), 4), (1 - confidence) / 3)
    pred = np.where(correct, y, (y + 1) % 4)
    out[np.arange(len(y)), pred] = confidence
    return out.tolist()


def _comparison(n_per_class: int, acc_active: float, acc_new: float, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), n_per_class)
    ca = rng.random(len(y)) < acc_active
    cb = rng.random(len(y)) < acc_new
    return {
        "task": "classifier",
        "active": "v1",
        "candidate": "v2",
        "n": len(y),
        "labels": [CLASSES[i] for i in y],
        "reports": {
            "active": {"per_image": {"probs": _probs(y, ca), "dice": [None] * len(y)}},
            "new": {"per_image": {"probs": _probs(y, cb), "dice": [None] * len(y)}},
        },
    }


def test_three_images_are_not_grounds_even_when_the_new_version_looks_better():
    c = _comparison(1, 0.0, 1.0)
    c["labels"], c["reports"]["active"]["per_image"]["probs"] = (
        c["labels"][:3],
        c["reports"]["active"]["per_image"]["probs"][:3],
    )
    c["reports"]["new"]["per_image"]["probs"] = c["reports"]["new"]["per_image"]["probs"][:3]
    v = judge(c, rounds=200)
    assert not v.sufficient and not v.grounds
    assert any(f"at least {MIN_IMAGES}" in p for p in v.problems)
    assert any(f"fewer than {MIN_PER_CLASS}" in p for p in v.problems)


def test_a_clearly_worse_version_is_worse_beyond_its_interval():
    v = judge(_comparison(60, 0.98, 0.80), rounds=500)
    assert v.sufficient and not v.grounds
    acc = next(c for c in v.checks if c.metric == "accuracy")
    assert acc.worse and acc.diff_ci95[1] < 0
    assert acc.active_ci95[0] < acc.active < acc.active_ci95[1]
    assert "accuracy is worse beyond its interval" in v.problems


def test_an_equal_version_on_enough_images_is_grounds():
    v = judge(_comparison(60, 0.90, 0.90, seed=3), rounds=500)
    assert v.sufficient and v.grounds, v.problems
    assert {c.metric for c in v.checks} == {"accuracy", "tumor-miss rate", "ECE (calibration error)"}
    assert not any(c.worse for c in v.checks)


def test_segmenter_rule_counts_slices_with_masks():
    base = {"task": "segmenter", "active": "v1", "candidate": "v2", "labels": ["glioma"] * 40}
    dice_a = [0.8] * 40
    dice_b = [0.5] * 40
    base["reports"] = {"active": {"per_image": {"dice": dice_a}}, "new": {"per_image": {"dice": dice_b}}}
    v = judge(base, rounds=200)
    assert v.sufficient and [c.metric for c in v.checks] == ["Dice (tumor slices)"] and v.checks[0].worse
    few = dict(
        base, reports={"active": {"per_image": {"dice": dice_a[:5] + [None] * 35}}, "new": base["reports"]["new"]}
    )
    assert not judge(few, rounds=50).sufficient


def test_check_change_needs_a_name_and_a_reason_without_grounds():
    with pytest.raises(PromotionRefused, match="who"):
        promotion.check_change(None, " ", "a long enough reason")
    with pytest.raises(PromotionRefused, match="no comparison backs"):
        promotion.check_change(None, "dr a", "short")
    assert promotion.check_change(None, "dr a", "roll back: v2 misses gliomas") == "rollback"
    # A newer version activated on a written reason alone is an override, not a rollback.
    assert promotion.check_change(None, "dr a", "better across sources", back_to_earlier=False) == "override"
    worse = judge(_comparison(60, 0.98, 0.80), rounds=200)
    with pytest.raises(PromotionRefused, match="accuracy is worse"):
        promotion.check_change(worse, "dr a", "")
    assert promotion.check_change(worse, "dr a", "accepted: better on our T2 scans") == "override"
    assert promotion.check_change(judge(_comparison(60, 0.9, 0.9, seed=3), rounds=200), "dr a", "") == "promotion"


def _two_versions(tmp_path) -> Settings:
    wd = tmp_path / "weights"
    for v in ("v1", "v2"):
        d = wd / "classifier" / v
        d.mkdir(parents=True)
        (d / "metadata.json").write_text(json.dumps({"version": v}), encoding="utf-8")
        (d / "model.safetensors").write_bytes(b"")  # set_active only needs the files to exist
    set_active(wd, "classifier", "v1")
    return Settings(weights_dir=wd, data_dir=tmp_path / "data")


def test_promote_refuses_a_worse_version_and_records_an_override(tmp_path):
    settings = _two_versions(tmp_path)
    worse = _comparison(60, 0.98, 0.80)
    with pytest.raises(PromotionRefused):
        compare.promote(settings, "classifier", "v2", by="dr a", comparison=worse)
    assert active_version(settings.weights_dir, "classifier") == "v1"
    assert promotion.model_changes(settings.data_dir) == []

    change = compare.promote(settings, "classifier", "v2", by="dr a", reason="better on our T2 scans", comparison=worse)
    assert change.kind == "override" and active_version(settings.weights_dir, "classifier") == "v2"
    compare.promote(settings, "classifier", "v1", by="it admin", reason="roll back after complaints")
    log = promotion.model_changes(settings.data_dir)
    assert [(c.from_version, c.to_version, c.kind, c.by) for c in log] == [
        ("v1", "v2", "override", "dr a"),
        ("v2", "v1", "rollback", "it admin"),
    ]
    assert log[0].figures["n"] == 240 and any(ch["metric"] == "accuracy" for ch in log[0].figures["checks"])


def test_promote_refuses_a_comparison_of_other_versions(tmp_path):
    settings = _two_versions(tmp_path)
    stale = dict(_comparison(60, 0.9, 0.9, seed=3), active="v0")
    with pytest.raises(PromotionRefused, match="not of this version"):
        compare.promote(settings, "classifier", "v2", by="dr a", comparison=stale)


def test_the_log_is_append_only_and_skips_a_torn_line(tmp_path):
    c = promotion.ModelChange(utc_now("seconds"), "classifier", "v1", "v2", "dr a", "rollback", "why not")
    promotion.record_change(tmp_path, c)
    with open(tmp_path / promotion.LOG_FILE, "a", encoding="utf-8") as f:
        f.write('{"time": "2026-')  # a crash in the middle of a write
    promotion.record_change(tmp_path, c)
    assert promotion.model_changes(tmp_path) == [c, c]
