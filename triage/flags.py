"""The review-flag rule a classifier card carries, fitted on its validation images (issue 23, item 4).

The fixed rule (top probability < 0.6, or P(tumour) in [0.2, 0.8]) fired on about half of another
source's slices, on right and wrong calls alike. A card may instead carry ``flag_rule``: the
tumour-probability band and the top-probability floor that flag the most validation errors while
flagging at most ``MAX_CORRECT_FLAGGED`` of the correct calls. An error is a wrong tumour-vs-none
call, or a wrong class on images whose class is known. Validation holds every training source's
held-out patients or subtypes, so the rule is chosen on several looks, never on a test set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from triage.records import CLASSES

MAX_CORRECT_FLAGGED = 0.15
BAND_LOW = tuple(np.round(np.arange(0.02, 0.5, 0.02), 2))
BAND_HIGH = tuple(np.round(np.arange(0.5, 0.99, 0.02), 2))
TOP_FLOORS = (0.0, 0.4, 0.5, 0.6, 0.7)


@dataclass(frozen=True)
class FlagRule:
    """``uncertain`` when P(tumour) lies in [low, high] or the top probability is below ``top_below``."""

    low: float
    high: float
    top_below: float
    errors_flagged: float = 0.0
    correct_flagged: float = 0.0
    n_errors: int = 0
    n: int = 0

    def uncertain(self, probs: np.ndarray) -> np.ndarray:
        """Bool (N,) for probabilities (N, C) in ``CLASSES`` order."""
        probs = np.atleast_2d(probs)
        tumor = 1.0 - probs[:, CLASSES.index("no_tumor")]
        return ((tumor >= self.low) & (tumor <= self.high)) | (probs.max(1) < self.top_below)

    def to_card(self) -> dict:
        return {
            **asdict(self),
            "rule": (
                f"uncertain when P(tumour) in [{self.low:.2f}, {self.high:.2f}] or top "
                f"probability < {self.top_below:.2f}; fitted on validation with at most "
                f"{MAX_CORRECT_FLAGGED:.0%} of correct calls flagged"
            ),
        }

    @classmethod
    def from_card(cls, block: dict | None) -> FlagRule | None:
        if not block:
            return None
        return cls(
            **{
                k: block[k]
                for k in ("low", "high", "top_below", "errors_flagged", "correct_flagged", "n_errors", "n")
                if k in block
            }
        )


def call_errors(probs: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Bool (N,): the tumour-vs-none call is wrong, or the class is wrong where one class is allowed."""
    no = CLASSES.index("no_tumor")
    pred = probs.argmax(1)
    tumor_truth = ~allowed[:, no]
    wrong_binary = (pred != no) != tumor_truth
    return wrong_binary | ~allowed[np.arange(len(pred)), pred]


def fit_flag_rule(probs: np.ndarray, allowed: np.ndarray, max_correct_flagged: float = MAX_CORRECT_FLAGGED) -> FlagRule:
    """The band and floor flagging the largest share of errors with at most ``max_correct_flagged``
    of correct calls flagged (ties: fewer correct calls flagged)."""
    errors = call_errors(probs, allowed)
    tumor = 1.0 - probs[:, CLASSES.index("no_tumor")]
    top = probs.max(1)
    n_err, n_ok = max(1, int(errors.sum())), max(1, int((~errors).sum()))
    best, best_key = None, (-1.0, 0.0)
    for floor in TOP_FLOORS:
        low_top = top < floor
        for lo in BAND_LOW:
            above = tumor >= lo
            for hi in BAND_HIGH:
                flagged = (above & (tumor <= hi)) | low_top
                ok_share = float(flagged[~errors].sum() / n_ok)
                if ok_share > max_correct_flagged:
                    continue
                key = (float(flagged[errors].sum() / n_err), -ok_share)
                if key > best_key:
                    best_key = key
                    best = FlagRule(float(lo), float(hi), float(floor), key[0], ok_share, int(errors.sum()), len(probs))
    return best or FlagRule(0.5, 0.5, 0.0, 0.0, 0.0, int(errors.sum()), len(probs))
