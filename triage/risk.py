"""The malignancy-risk policy that orders the worklist (the only place it is defined).

Score
    ``risk = sum_c p_c * w_c`` over the calibrated class probabilities ``p`` (order
    ``CLASSES``), clipped to [0, 1]. The weights ``w`` are a prior for how urgently each class
    needs a radiologist, configurable via ``Settings.risk_weights`` (env
    ``TRIAGE_RISK_WEIGHTS`` as JSON). Defaults (``triage.config.DEFAULT_RISK_WEIGHTS``):

    ==========  ======  ===============================================================
    class       weight  reasoning
    ==========  ======  ===============================================================
    glioma      1.0     diffusely infiltrating; most are WHO grade 2-4, the highest
                        malignant potential of the four classes
    meningioma  0.35    ~80% are WHO grade 1 (benign), but ~20% are atypical/anaplastic
                        (grade 2-3) and large ones cause mass effect
    pituitary   0.2     adenomas are almost always benign, but macroadenomas can
                        compress the optic chiasm
    no_tumor    0.0     nothing to escalate
    ==========  ======  ===============================================================

Flags
    ``uncertain``: top probability < ``Settings.uncertain_below``, or the tumour probability
    ``1 - p_no_tumor`` lies in the ambiguous band [0.2, 0.8]. ``ood``: the scan is out of the
    training distribution. ``disagreement``: classifier and segmenter disagree.

Floor
    A flagged case is ranked at least at ``Settings.review_risk_floor``, so uncertain or
    out-of-distribution cases never sink to the bottom of the worklist.

This is a triage ordering aid, not a diagnosis.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping

import numpy as np

from triage.config import DEFAULT_RISK_WEIGHTS, Settings
from triage.flags import FlagRule
from triage.records import CLASSES, Flag, TumorClass

log = logging.getLogger(__name__)

FLAGS: tuple[str, ...] = (Flag.UNCERTAIN, Flag.OOD, Flag.DISAGREEMENT)
# Tumour probability (1 - p_no_tumor) inside this closed band counts as "uncertain".
TUMOR_UNCERTAIN_BAND: tuple[float, float] = (0.2, 0.8)
# Tolerance for probabilities summing to 1 and for tiny negative rounding errors.
PROB_SUM_TOL = 1e-3
_NEG_TOL = 1e-6

RATIONALE: dict[str, str] = {
    "glioma": "Diffusely infiltrating; most are WHO grade 2-4, highest malignant potential.",
    "meningioma": "~80% WHO grade 1 (benign), but ~20% atypical/anaplastic; mass effect.",
    "pituitary": "Adenomas are almost always benign, but can compress the optic chiasm.",
    "no_tumor": "Nothing to escalate.",
}


def validate_probs(probs: np.ndarray | Iterable[float]) -> np.ndarray:
    """Check class probabilities and return them as float64 (4,) in ``CLASSES`` order.

    They must be finite, non-negative and sum to 1 within ``PROB_SUM_TOL``; raises ValueError.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (len(CLASSES),):
        raise ValueError(f"probs must have shape ({len(CLASSES)},) in order {CLASSES}, got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"probs must be finite, got {p.tolist()}")
    if np.any(p < -_NEG_TOL):
        raise ValueError(f"probs must be non-negative, got {p.tolist()}")
    if abs(float(p.sum()) - 1.0) > PROB_SUM_TOL:
        raise ValueError(f"probs must sum to 1 (got {float(p.sum()):.6f})")
    return np.clip(p, 0.0, 1.0)


def validate_weights(weights: Mapping[str, float] | None) -> np.ndarray:
    """Risk weights dict (keys exactly ``CLASSES``, values in [0, 1]) -> float64 (4,) array.

    ``None`` means :data:`triage.config.DEFAULT_RISK_WEIGHTS`. Raises ValueError (TypeError
    when ``weights`` is not a mapping).
    """
    weights = DEFAULT_RISK_WEIGHTS if weights is None else weights
    if not isinstance(weights, Mapping):
        raise TypeError(f"risk weights must be a dict keyed by class, got {type(weights).__name__}")
    if set(weights) != set(CLASSES):
        raise ValueError(f"risk weights must have exactly the keys {sorted(CLASSES)}, got {sorted(map(str, weights))}")
    out = np.empty(len(CLASSES), np.float64)
    for i, cls in enumerate(CLASSES):
        try:
            w = float(weights[cls])
        except (TypeError, ValueError):
            raise ValueError(f"risk weight for {cls!r} must be a number, got {weights[cls]!r}") from None
        if not (math.isfinite(w) and 0.0 <= w <= 1.0):
            raise ValueError(f"risk weight for {cls!r} must be in [0, 1], got {w}")
        out[i] = w
    return out


def risk_score(probs: np.ndarray, weights: Mapping[str, float] | None = None) -> float:
    """Expected malignancy prior: ``sum_c p_c * w_c`` clipped to [0, 1].

    probs: (4,) probabilities in ``CLASSES`` order. weights: class -> [0, 1], default
    :data:`triage.config.DEFAULT_RISK_WEIGHTS`.
    """
    p = validate_probs(probs)
    w = validate_weights(weights)
    return float(np.clip(np.dot(p, w), 0.0, 1.0))


def triage_flags(
    probs: np.ndarray, ood: bool, disagreement: bool, uncertain_below: float, rule: FlagRule | None = None
) -> tuple[str, ...]:
    """Review flags for a case, in the order of :data:`FLAGS`.

    ``uncertain``: by the classifier card's fitted ``rule`` (:mod:`triage.flags`) when it has one;
    otherwise when the top probability is below ``uncertain_below`` or the tumour probability
    ``1 - p_no_tumor`` is inside :data:`TUMOR_UNCERTAIN_BAND`. ``ood`` and ``disagreement`` pass
    through from the caller.
    """
    p = validate_probs(probs)
    tumor = 1.0 - float(p[CLASSES.index("no_tumor")])
    lo, hi = TUMOR_UNCERTAIN_BAND
    flags: list[str] = []
    if rule is not None:
        uncertain = bool(rule.uncertain(p)[0])
    else:
        uncertain = float(p.max()) < float(uncertain_below) or lo <= tumor <= hi
    if uncertain:
        flags.append(Flag.UNCERTAIN)
    if ood:
        flags.append(Flag.OOD)
    if disagreement:
        flags.append(Flag.DISAGREEMENT)
    return tuple(flags)


def final_risk(probs: np.ndarray, flags: Iterable[str], settings: Settings) -> float:
    """The worklist risk: :func:`risk_score` with ``settings.risk_weights``, raised to
    ``settings.review_risk_floor`` when any flag is set. Returns a float in [0, 1].
    """
    risk = risk_score(probs, settings.risk_weights)
    flags = tuple(flags)
    if flags:
        floor = float(settings.review_risk_floor)
        if not (math.isfinite(floor) and 0.0 <= floor <= 1.0):
            raise ValueError(f"review_risk_floor must be in [0, 1], got {floor}")
        risk = max(risk, floor)
    return risk


def suspected_tumor(label: str, flags: Iterable[str]) -> bool:
    """The worklist's tumor call: a tumor class, or a no_tumor call that the segmenter contradicts
    with a mask above the disagreement size (flag ``disagreement``). Such a case is never cleared
    silently, so this, not the label alone, is what "tumor detected" means in the CSV and the
    evaluation reports (measured on navoneel v2: sensitivity 0.609 by label, 0.855 this way).
    """
    return label != TumorClass.NO_TUMOR or Flag.DISAGREEMENT in tuple(flags)


def describe_policy(settings: Settings) -> str:
    """Markdown description of the active policy (weights table and rules) for the Model page."""
    w = validate_weights(settings.risk_weights)
    lo, hi = TUMOR_UNCERTAIN_BAND
    rows = [f"| {cls} | {w[i]:.2f} | {RATIONALE.get(cls, '')} |" for i, cls in enumerate(CLASSES)]
    custom = "" if dict(settings.risk_weights) == DEFAULT_RISK_WEIGHTS else " (customised)"
    return "\n".join(
        [
            f"**Risk weights{custom}**",
            "",
            "| Class | Weight | Reasoning |",
            "|---|---:|---|",
            *rows,
            "",
            "**Rules**",
            "",
            "- Risk = sum over classes of calibrated probability x weight, clipped to [0, 1].",
            (
                f"- *uncertain*: top probability < {settings.uncertain_below:.2f}, or tumour probability "
                f"(1 - p(no_tumor)) between {lo:.2f} and {hi:.2f}."
            ),
            ("- *ood*: the scan looks unlike the training data; *disagreement*: classifier and segmenter disagree."),
            (
                f"- Any flagged case is ranked at risk >= {settings.review_risk_floor:.2f}, so it never "
                "sinks to the bottom of the worklist."
            ),
            "- A triage ordering aid, not a diagnosis.",
        ]
    )
