"""The fitted review-flag rule: flags the errors, spares most correct calls, and drives triage_flags."""

import numpy as np

from triage.flags import MAX_CORRECT_FLAGGED, FlagRule, call_errors, fit_flag_rule
from triage.lifecycle.sources import label_matrix
from triage.risk import triage_flags


def _probs(p_tumor: np.ndarray) -> np.ndarray:
    """4-class probabilities with the tumour mass all on glioma."""
    return np.stack([1 - p_tumor, p_tumor, np.zeros_like(p_tumor), np.zeros_like(p_tumor)], 1)


def test_rule_flags_the_errors_and_respects_the_correct_call_budget() -> None:
    rng = np.random.default_rng(0)
    # Confident calls are right; calls near 0.5 are wrong half the time.
    confident = np.concatenate([rng.uniform(0.0, 0.1, 400), rng.uniform(0.9, 1.0, 400)])
    unsure = rng.uniform(0.3, 0.7, 100)
    p_tumor = np.concatenate([confident, unsure])
    truth = np.concatenate([np.zeros(400, bool), np.ones(400, bool), rng.random(100) < 0.5])
    allowed = label_matrix(["glioma" if t else "no_tumor" for t in truth])
    probs = _probs(p_tumor)
    errors = call_errors(probs, allowed)
    assert errors[:800].sum() == 0 and errors[800:].sum() > 20
    rule = fit_flag_rule(probs, allowed)
    flagged = rule.uncertain(probs)
    assert flagged[errors].mean() >= 0.95
    assert flagged[~errors].mean() <= MAX_CORRECT_FLAGGED
    assert rule.errors_flagged == flagged[errors].mean()


def test_class_errors_count_where_the_class_is_known() -> None:
    probs = np.array([[0.0, 0.2, 0.8, 0.0], [0.0, 0.2, 0.8, 0.0]])
    assert call_errors(probs, label_matrix(["glioma", "tumor"])).tolist() == [True, False]


def test_card_rule_replaces_the_fixed_band() -> None:
    rule = FlagRule.from_card(FlagRule(0.4, 0.6, 0.0).to_card())
    sure_enough = np.array([0.3, 0.7, 0.0, 0.0])  # P(tumour) 0.7: in the fixed [0.2, 0.8] band
    assert "uncertain" in triage_flags(sure_enough, False, False, 0.6)
    assert "uncertain" not in triage_flags(sure_enough, False, False, 0.6, rule)
    assert "uncertain" in triage_flags(np.array([0.5, 0.5, 0, 0]), False, False, 0.6, rule)
    assert FlagRule.from_card(None) is None
