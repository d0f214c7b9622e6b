"""Compare a newly trained version with the active one, promote it, or roll back.

Both versions are run through the real pipeline (:func:`triage.evaluate.predict_cached`) on the
same held-out images and scored with :func:`triage.evaluate.score`. Each side gets its own
:class:`~triage.service.TriageService` over a temporary weights folder of symlinks in which
that side is ``ACTIVE`` (the other task keeps its active version), so the real ``ACTIVE``
pointer is never touched by a comparison. Promotion and rollback are both
:func:`triage.models.set_active` (atomic); a running app picks the change up on its next
analysis because the service reloads when the pointer changes.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

from triage.clock import utc_now
from triage.config import Settings
from triage.datasets import (
    Sample,
    build_cache,
    file_sha1,
    load_folder,
    stratified_split,
)
from triage.errors import DatasetError, ModelNotFoundError
from triage.lifecycle.promotion import ModelChange, PromotionRefused, check_change, judge, record_change
from triage.models import (
    TASKS,
    active_version,
    list_versions,
    read_card,
    set_active,
    task_dir,
)
from triage.records import CLASSES

log = logging.getLogger(__name__)

MAX_COMPARE_IMAGES = 400
RESULT_FILE = "compare.json"


def dataset_samples(folder: str | Path) -> list[Sample]:
    """Labelled 4-class samples of a dataset folder (manifest.csv or class folders)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"dataset folder not found: {folder}")
    samples = load_folder(folder)[0]
    return [s for s in samples if s.label in CLASSES]


def _split_sha1(weights_dir: Path, task: str, version: str, key: str) -> set[str]:
    f = task_dir(weights_dir, task) / version / "splits.json"
    if not f.is_file():
        return set()
    return set(json.loads(f.read_text(encoding="utf-8")).get(key, []))


def held_out_samples(weights_dir: Path, task: str, version: str, dataset: str | Path) -> list[Sample]:
    """The validation images of ``version``'s run (its ``splits.json``) found in ``dataset``."""
    val = _split_sha1(weights_dir, task, version, "val_sha1")
    if not val:
        raise DatasetError(f"{task} {version} has no record of its validation images (splits.json)")
    return [s for s in dataset_samples(dataset) if (s.sha1 or file_sha1(s.path)) in val]


@contextmanager
def weights_view(weights_dir: Path, versions: dict[str, str]) -> Iterator[Path]:
    """A temporary weights folder where ``versions[task]`` is ACTIVE for each task (symlinks)."""
    with tempfile.TemporaryDirectory(prefix="triage-compare-") as tmp:
        for task, version in versions.items():
            src = task_dir(weights_dir, task) / version
            if not (src / "metadata.json").is_file():
                raise ModelNotFoundError(f"{task} version {version!r} does not exist")
            d = Path(tmp) / task
            d.mkdir()
            (d / version).symlink_to(src.resolve(), target_is_directory=True)
            (d / "ACTIVE").write_text(version + "\n", encoding="utf-8")
        yield Path(tmp)


def _num(x: object) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def metric_rows(active: dict, candidate: dict) -> list[dict]:
    """Side-by-side rows ``{metric, active, new, better}`` (``better``: True if the new one is better)."""
    rows = []

    def add(name: str, a: object, b: object, higher_is_better: bool) -> None:
        a, b = _num(a), _num(b)
        if a is None and b is None:
            return
        better = None if a is None or b is None or a == b else ((b > a) == higher_is_better)
        rows.append({"metric": name, "active": a, "new": b, "better": better})

    ca, cb = active.get("classification", {}), candidate.get("classification", {})
    add("accuracy", ca.get("accuracy"), cb.get("accuracy"), True)
    add("tumor-miss rate", ca.get("tumor_miss_rate"), cb.get("tumor_miss_rate"), False)
    add("ECE (calibration error)", ca.get("ece"), cb.get("ece"), False)
    for c in CLASSES:
        pa, pb = ca.get("per_class", {}).get(c, {}), cb.get("per_class", {}).get(c, {})
        if pa.get("support") or pb.get("support"):
            add(f"recall {c}", pa.get("recall"), pb.get("recall"), True)
    sa, sb = active.get("segmentation", {}), candidate.get("segmentation", {})
    add("Dice (tumor slices)", sa.get("dice_mean"), sb.get("dice_mean"), True)
    add("false-positive masks", sa.get("false_positive_mask_rate"), sb.get("false_positive_mask_rate"), False)
    add("rejected by the pipeline", active.get("rejected_by_pipeline"), candidate.get("rejected_by_pipeline"), False)
    return rows


def compare_versions(
    settings: Settings,
    task: str,
    candidate: str,
    samples: list[Sample],
    active: str | None = None,
    max_images: int = MAX_COMPARE_IMAGES,
    report: Callable[[int, int], None] | None = None,
) -> dict:
    """Score the active and ``candidate`` versions of ``task`` on the same ``samples``.

    Images that either version was trained on (their ``splits.json``) are removed first; at
    most ``max_images`` are used (a stratified subset, seed 0). Returns a JSON-able dict with
    both reports (:func:`triage.evaluate.score`), side-by-side ``rows`` and notes.
    """
    from triage.evaluate import predict_cached, score
    from triage.service import TriageService

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    wd = Path(settings.weights_dir)
    active = active or active_version(wd, task)
    other = "segmenter" if task == "classifier" else "classifier"
    other_version = active_version(wd, other)
    if not samples:
        raise DatasetError("no labelled images to compare on")
    test = build_cache(samples, 64, settings.cache_dir, with_masks=False)
    trained_on = _split_sha1(wd, task, active, "train_sha1") | _split_sha1(wd, task, candidate, "train_sha1")
    seen = np.array([s in trained_on for s in test.sha1s], bool)
    test = test.subset(~seen)
    notes = [f"{int(seen.sum())} images removed because a compared version was trained on them"] if seen.any() else []
    if test.rejected:
        notes.append(f"{len(test.rejected)} images could not be read")
    if len(test.samples) > max_images:
        test = test.subset(stratified_split(test.labels(), max_images / len(test.samples), 0))
        notes.append(f"a stratified subset of {len(test.samples)} images was used")
    if not test.samples:
        raise DatasetError("no held-out images left to compare on")
    reports = {}
    sides = (("active", active), ("new", candidate))
    for i, (side, version) in enumerate(sides):
        with weights_view(wd, {task: version, other: other_version}) as view:
            service = TriageService(replace(settings, weights_dir=view))
            results = predict_cached(service, test, progress=False)
            reports[side] = score(test, results, per_image=True)
        if report is not None:
            report(i + 1, len(sides))
    return {
        "task": task,
        "active": active,
        "candidate": candidate,
        "other": {other: other_version},
        "n": len(test.samples),
        "counts": test.counts(),
        "labels": test.labels(),
        "notes": notes,
        "reports": reports,
        "rows": metric_rows(reports["active"], reports["new"]),
    }


def compare_run(
    settings: Settings,
    task: str,
    candidate: str,
    dataset: str | Path,
    run_dir: str | Path | None = None,
    report: Callable[[int, int], None] | None = None,
) -> dict:
    """Compare on the run's validation images (falling back to the whole ``dataset``); the result
    is also saved as ``run_dir/compare.json``."""
    try:
        samples = held_out_samples(settings.weights_dir, task, candidate, dataset)
        source = "validation images of the new version's training run"
    except DatasetError:
        samples, source = dataset_samples(dataset), f"dataset {dataset}"
    result = compare_versions(settings, task, candidate, samples, report=report)
    result["source"] = source
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / RESULT_FILE).write_text(json.dumps(result, indent=2, default=float), encoding="utf-8")
    return result


def saved_comparison(run_dir: str | Path, active: str, candidate: str) -> dict | None:
    """The comparison stored in ``run_dir`` if it was made against the current ``active`` version."""
    f = Path(run_dir) / RESULT_FILE
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if data.get("active") == active and data.get("candidate") == candidate else None


def promote(
    settings: Settings,
    task: str,
    version: str,
    *,
    by: str,
    reason: str = "",
    comparison: dict | None = None,
) -> ModelChange:
    """Make ``version`` active (atomic) if the promotion rule allows it, and log the change.

    ``comparison``: a :func:`compare_versions` result of ``version`` against the active one;
    without one (a rollback, or a version never compared) a written ``reason`` is required, as it
    is when the comparison is not grounds (:mod:`triage.lifecycle.promotion`). Raises
    :class:`~triage.lifecycle.promotion.PromotionRefused` with what is missing.
    """
    wd = Path(settings.weights_dir)
    try:
        current = active_version(wd, task)
    except ModelNotFoundError:
        current = None
    verdict = None
    if comparison is not None:
        if comparison.get("candidate") != version or comparison.get("active") != current:
            raise PromotionRefused("the comparison shown is not of this version against the active one; reload")
        verdict = judge(comparison)
    kind = check_change(verdict, by, reason, back_to_earlier=not _created_after(wd, task, version, current))
    set_active(wd, task, version)
    change = ModelChange(
        time=utc_now("seconds"),
        task=task,
        from_version=current,
        to_version=version,
        by=by.strip(),
        kind=kind,
        reason=reason.strip(),
        figures=verdict.figures() if verdict is not None else {},
    )
    record_change(settings.data_dir, change)
    log.info("%s version %s is now active (%s by %s, was %s)", task, version, kind, change.by, current)
    return change


def _created_after(weights_dir: Path, task: str, version: str, current: str | None) -> bool:
    """Whether ``version`` was trained after the active ``current`` one (both cards' ``created`` known)."""
    if current is None:
        return False
    try:
        made = [read_card(weights_dir, task, v).created for v in (version, current)]
    except (ModelNotFoundError, OSError, ValueError):
        return False
    return bool(made[0] and made[1]) and made[0] > made[1]


def versions_table(settings: Settings, task: str) -> list[dict]:
    """One row per version of ``task``, newest first: active mark, creation, training and metrics."""
    wd = Path(settings.weights_dir)
    try:
        active = active_version(wd, task)
    except ModelNotFoundError:
        active = None
    rows = []
    for v in reversed(list_versions(wd, task)):
        try:
            card = read_card(wd, task, v)
        except (OSError, ValueError):
            card = None
        val = card.validation() if card else {}
        cfg = card.train_config if card else {}
        rows.append(
            {
                "version": v,
                "active": v == active,
                "trained": bool(card and card.trained),
                "created": (card.created if card else "")[:16].replace("T", " "),
                "preset": cfg.get("preset", ""),
                "fine-tuned from": cfg.get("init_from") or "",
                "val accuracy": _num((val.get("after_calibration") or {}).get("accuracy")),
                "val Dice": _num(val.get("dice")),
                "data": str(card.data.get("source", "") if card else ""),
            }
        )
    return rows
