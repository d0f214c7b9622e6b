"""When a comparison is grounds for promoting a model version, and the log of every change.

The rule (issue 19), stated once here and shown on the Training page:

* **Enough images to tell the models apart.** A classifier comparison needs at least
  :data:`MIN_IMAGES` held-out images and :data:`MIN_PER_CLASS` of every class; a segmenter
  comparison needs :data:`MIN_TUMOR_SLICES` slices with a tumour mask. Below that the table is
  shown for information only.
* **Not worse beyond chance.** Both versions are scored on the same images, so the difference
  of each metric (new minus active) gets a paired bootstrap 95% interval
  (:data:`BOOTSTRAP_ROUNDS` resamples of the images, seed 0). A version whose accuracy, tumour-
  miss rate or ECE (segmenter: Dice) is worse with the whole interval on the bad side is worse
  beyond its interval.

A change that is not backed by such a comparison (too few images, a worse metric, or a rollback
with no comparison at all) is refused unless an admin writes a reason, which is recorded. Every
promotion and rollback goes into an append-only log in the data folder
(:func:`record_change`), which the Model page shows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from triage.errors import TriageError
from triage.metrics import expected_calibration_error, wilson_interval
from triage.records import CLASSES

MIN_IMAGES = 100
MIN_PER_CLASS = 15
MIN_TUMOR_SLICES = 30
BOOTSTRAP_ROUNDS = 2000
MIN_REASON_CHARS = 10
LOG_FILE = "model_changes.jsonl"

RULE_TEXT = (
    f"A comparison is grounds for promotion when it holds at least {MIN_IMAGES} held-out images with "
    f"{MIN_PER_CLASS} or more of every class (segmenter: {MIN_TUMOR_SLICES} slices with a tumour mask) and "
    "no metric of the new version is worse with its whole paired-bootstrap 95% interval of the difference "
    "(new minus active, same images) on the worse side. Otherwise an admin can still promote with a written "
    "reason, which is recorded."
)


class PromotionRefused(TriageError):
    """A model change was asked for without the grounds or the written reason the rule needs."""


@dataclass(frozen=True)
class PairedCheck:
    """One metric of both versions on the same images, with the paired interval of the difference."""

    metric: str
    active: float
    new: float
    diff_ci95: tuple[float, float]
    higher_is_better: bool
    # Each version's own interval where one exists (Wilson for proportions), else None.
    active_ci95: tuple[float, float] | None = None
    new_ci95: tuple[float, float] | None = None

    @property
    def worse(self) -> bool:
        """The new version is worse and the whole interval of the difference says so."""
        lo, hi = self.diff_ci95
        return hi < 0 if self.higher_is_better else lo > 0


@dataclass(frozen=True)
class PromotionVerdict:
    """What a comparison allows: ``grounds`` means promote with a confirmation; otherwise a reason."""

    task: str
    active: str
    candidate: str
    n: int
    sufficient: bool
    checks: list[PairedCheck]
    problems: list[str] = field(default_factory=list)

    @property
    def grounds(self) -> bool:
        return self.sufficient and not self.problems

    def figures(self) -> dict:
        """The figures shown to the person deciding, as recorded in the log."""
        return {
            "n": self.n,
            "sufficient": self.sufficient,
            "problems": list(self.problems),
            "checks": [asdict(c) for c in self.checks],
        }


def _bootstrap_diff(
    stat: Callable[[np.ndarray], tuple[float, float]], n: int, rounds: int, seed: int
) -> tuple[float, float]:
    """95% interval of ``new - active`` where ``stat(indices)`` returns ``(active, new)``."""
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(rounds):
        a, b = stat(rng.integers(0, n, n))
        if np.isfinite(a) and np.isfinite(b):
            diffs.append(b - a)
    if not diffs:
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return (float(lo), float(hi))


def _classifier_checks(y: np.ndarray, pa: np.ndarray, pb: np.ndarray, rounds: int) -> list[PairedCheck]:
    ca, cb = pa.argmax(1) == y, pb.argmax(1) == y
    tumor = y != 0
    ma, mb = (pa.argmax(1) == 0) & tumor, (pb.argmax(1) == 0) & tumor
    n = len(y)
    checks = [
        PairedCheck(
            "accuracy",
            float(ca.mean()),
            float(cb.mean()),
            _bootstrap_diff(lambda i: (ca[i].mean(), cb[i].mean()), n, rounds, 0),
            True,
            wilson_interval(int(ca.sum()), n),
            wilson_interval(int(cb.sum()), n),
        )
    ]
    if tumor.any():
        nt = int(tumor.sum())

        def miss(i: np.ndarray) -> tuple[float, float]:
            t = tumor[i].sum()
            return (ma[i].sum() / t, mb[i].sum() / t) if t else (np.nan, np.nan)

        checks.append(
            PairedCheck(
                "tumor-miss rate",
                float(ma.sum() / nt),
                float(mb.sum() / nt),
                _bootstrap_diff(miss, n, rounds, 1),
                False,
                wilson_interval(int(ma.sum()), nt),
                wilson_interval(int(mb.sum()), nt),
            )
        )
    checks.append(
        PairedCheck(
            "ECE (calibration error)",
            expected_calibration_error(pa, y),
            expected_calibration_error(pb, y),
            _bootstrap_diff(
                lambda i: (expected_calibration_error(pa[i], y[i]), expected_calibration_error(pb[i], y[i])),
                n,
                rounds,
                2,
            ),
            False,
        )
    )
    return checks


def judge(comparison: dict, rounds: int = BOOTSTRAP_ROUNDS) -> PromotionVerdict:
    """Apply the rule to a :func:`triage.lifecycle.compare.compare_versions` result (with ``per_image``)."""
    task = comparison["task"]
    labels = comparison.get("labels") or []
    sides = comparison.get("reports", {})
    per = {side: (sides.get(side) or {}).get("per_image") for side in ("active", "new")}
    base = dict(task=task, active=comparison["active"], candidate=comparison["candidate"], n=len(labels))
    if not labels or per["active"] is None or per["new"] is None:
        return PromotionVerdict(
            **base, sufficient=False, checks=[], problems=["the comparison holds no per-image results"]
        )
    problems: list[str] = []
    if task == "classifier":
        y = np.array([CLASSES.index(lab) for lab in labels])
        counts = {c: int((y == i).sum()) for i, c in enumerate(CLASSES)}
        short = [f"{c} {k}" for c, k in counts.items() if k < MIN_PER_CLASS]
        sufficient = len(y) >= MIN_IMAGES and not short
        if len(y) < MIN_IMAGES:
            problems.append(f"only {len(y)} held-out images (at least {MIN_IMAGES} needed)")
        if short:
            problems.append(f"fewer than {MIN_PER_CLASS} images of: {', '.join(short)}")
        pa = np.asarray(per["active"]["probs"], np.float64)
        pb = np.asarray(per["new"]["probs"], np.float64)
        checks = _classifier_checks(y, pa, pb, rounds)
    else:
        da, db = per["active"]["dice"], per["new"]["dice"]
        both = [(a, b) for a, b in zip(da, db) if a is not None and b is not None]
        sufficient = len(both) >= MIN_TUMOR_SLICES
        if not sufficient:
            problems.append(f"only {len(both)} slices with a tumour mask (at least {MIN_TUMOR_SLICES} needed)")
        checks = []
        if both:
            a, b = np.array(both).T
            checks.append(
                PairedCheck(
                    "Dice (tumor slices)",
                    float(a.mean()),
                    float(b.mean()),
                    _bootstrap_diff(lambda i: (a[i].mean(), b[i].mean()), len(a), rounds, 0),
                    True,
                )
            )
    problems += [f"{c.metric} is worse beyond its interval" for c in checks if c.worse]
    return PromotionVerdict(**base, sufficient=sufficient, checks=checks, problems=problems)


@dataclass(frozen=True)
class ModelChange:
    """One line of the append-only model-change log."""

    time: str
    task: str
    from_version: str | None
    to_version: str
    by: str
    kind: str  # "promotion" (backed by a comparison), "override" (promoted without grounds) or "rollback"
    reason: str = ""
    figures: dict = field(default_factory=dict)


def check_change(verdict: PromotionVerdict | None, by: str, reason: str, back_to_earlier: bool = True) -> str:
    """The kind of change the rule allows, or :class:`PromotionRefused` saying what is missing.

    Without a comparison the change is a "rollback" when it goes back to an earlier version
    (``back_to_earlier``), else an "override" (a newer version activated on a written reason)."""
    if not by.strip():
        raise PromotionRefused("say who is making the change (sign in or enter your name)")
    if verdict is not None and verdict.grounds:
        return "promotion"
    if len(reason.strip()) < MIN_REASON_CHARS:
        why = "no comparison backs this change" if verdict is None else "; ".join(verdict.problems)
        raise PromotionRefused(
            f"refused: {why}. An admin can still make the change with a written reason "
            f"(at least {MIN_REASON_CHARS} characters), which is recorded."
        )
    return "rollback" if verdict is None and back_to_earlier else "override"


def record_change(data_dir: str | Path, change: ModelChange) -> None:
    """Append ``change`` to the log (one JSON line, flushed to disk before returning)."""
    path = Path(data_dir) / LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(asdict(change), default=float, ensure_ascii=False) + "\n"
    with open(path, "a+", encoding="utf-8") as f:
        # A crash can leave a torn last line; start a fresh one so this record is not glued to it.
        if f.tell() > 0:
            f.seek(f.tell() - 1)
            if f.read(1) != "\n":
                line = "\n" + line
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def model_changes(data_dir: str | Path) -> list[ModelChange]:
    """Every recorded change, oldest first (a torn last line from a crash is skipped)."""
    path = Path(data_dir) / LOG_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(ModelChange(**json.loads(line)))
        except (ValueError, TypeError):
            continue
    return out
