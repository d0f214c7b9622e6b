"""The risk policy: ordering, weights, flags, review floor and validation."""

from __future__ import annotations

import numpy as np
import pytest

from triage.config import DEFAULT_RISK_WEIGHTS, Settings
from triage.records import CLASSES
from triage.risk import (
    describe_policy,
    final_risk,
    risk_score,
    suspected_tumor,
    triage_flags,
)


def one_hot(cls: str) -> np.ndarray:
    p = np.zeros(len(CLASSES))
    p[CLASSES.index(cls)] = 1.0
    return p


def probs(**kw: float) -> np.ndarray:
    return np.array([kw.get(c, 0.0) for c in CLASSES])


def test_one_hot_ordering_and_defaults() -> None:
    scores = {c: risk_score(one_hot(c)) for c in CLASSES}
    assert scores["glioma"] > scores["meningioma"] > scores["pituitary"] > scores["no_tumor"]
    assert scores == pytest.approx(DEFAULT_RISK_WEIGHTS)


def test_score_is_probability_weighted() -> None:
    p = probs(glioma=0.5, no_tumor=0.5)
    assert risk_score(p) == pytest.approx(0.5)
    assert risk_score(probs(meningioma=0.5, pituitary=0.5)) == pytest.approx(0.275)


def test_weights_override() -> None:
    w = {"no_tumor": 0.0, "glioma": 0.1, "meningioma": 0.9, "pituitary": 0.2}
    assert risk_score(one_hot("meningioma"), w) > risk_score(one_hot("glioma"), w)
    s = Settings(risk_weights=w)
    assert final_risk(one_hot("meningioma"), (), s) == pytest.approx(0.9)


@pytest.mark.parametrize(
    "bad",
    [
        {"no_tumor": 0.0, "glioma": 1.0, "meningioma": 0.35},
        {**DEFAULT_RISK_WEIGHTS, "astrocytoma": 0.5},
        {**DEFAULT_RISK_WEIGHTS, "glioma": 1.5},
        {**DEFAULT_RISK_WEIGHTS, "glioma": float("nan")},
        {**DEFAULT_RISK_WEIGHTS, "glioma": "high"},
    ],
)
def test_invalid_weights_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        risk_score(one_hot("glioma"), bad)


@pytest.mark.parametrize(
    "bad",
    [
        [0.5, 0.5, 0.5, 0.5],
        [1.2, -0.2, 0.0, 0.0],
        [float("nan"), 0.5, 0.5, 0.0],
        [0.5, 0.5, 0.0],
        [[0.25] * 4],
    ],
)
def test_invalid_probs_rejected(bad: list) -> None:
    with pytest.raises(ValueError):
        risk_score(np.array(bad))
    with pytest.raises(ValueError):
        triage_flags(np.array(bad), False, False, 0.6)


def test_flags() -> None:
    assert triage_flags(one_hot("glioma"), False, False, 0.6) == ()
    assert triage_flags(probs(glioma=0.55, meningioma=0.45), False, False, 0.6) == ("uncertain",)
    # confident top class but tumour probability in the ambiguous band
    assert triage_flags(probs(no_tumor=0.7, glioma=0.3), False, False, 0.6) == ("uncertain",)
    assert triage_flags(probs(no_tumor=0.9, glioma=0.1), False, False, 0.6) == ()
    assert triage_flags(one_hot("no_tumor"), True, True, 0.6) == ("ood", "disagreement")


def test_flagged_cases_floored() -> None:
    s = Settings(review_risk_floor=0.5)
    clean = one_hot("no_tumor")
    assert final_risk(clean, (), s) == 0.0
    assert final_risk(clean, ("ood",), s) == 0.5
    assert final_risk(one_hot("glioma"), ("uncertain",), s) == 1.0  # never lowered
    p = probs(no_tumor=0.7, glioma=0.3)
    flags = triage_flags(p, False, False, s.uncertain_below)
    assert final_risk(p, flags, s) == 0.5 > risk_score(p)


def test_describe_policy_mentions_weights_and_rules() -> None:
    text = describe_policy(Settings())
    for cls in CLASSES:
        assert f"| {cls} |" in text
    assert "0.35" in text and "0.60" in text and "0.50" in text
    assert "customised" not in text
    w = {**DEFAULT_RISK_WEIGHTS, "pituitary": 0.3}
    assert "customised" in describe_policy(Settings(risk_weights=w))


def test_non_mapping_weights_rejected() -> None:
    with pytest.raises(TypeError):
        risk_score(one_hot("glioma"), [1.0, 0.0, 0.0, 0.0])  # type: ignore[arg-type]


def test_suspected_tumor_counts_a_contradicted_no_tumor_call() -> None:
    assert suspected_tumor("glioma", ())
    assert suspected_tumor("no_tumor", ("uncertain", "disagreement"))
    assert not suspected_tumor("no_tumor", ("uncertain", "ood"))
