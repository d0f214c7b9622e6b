"""Cross-source evaluation (issue 23): every held-out part of every shared source in one table.

The parts are the ones :mod:`triage.lifecycle.sources` never trains on: BRISC test, Sartaj Testing,
navoneel, the LGG subset, the LGG sites CS and FG, BraTS patients 1-2 and six Feltrin subtypes,
each per sequence where the source labels it. Every image goes through the real pipeline
(decode -> crop -> classify -> segment -> reconcile), exactly as the app would show it, and
images that duplicate (SHA-1 or 64x64 thumbnail) a training image of the evaluated models are
removed first. Two shortcut probes run beside them: tumour-free BRISC test slices skull-stripped
and JPEG-degraded (the looks of BraTS and web exports), which must stay ``no_tumor``.

For each part: the worklist's tumour call (sensitivity / specificity), ROC AUC of
``1 - p_no_tumor``, the best sensitivity at specificity >= 0.85 (on that part: reported, not
used to pick anything), 4-class accuracy where labels allow, Dice and false-positive masks where
masks exist, ECE, and whether the ``uncertain`` / ``ood`` flags land on the errors (share of errors
flagged, share of correct calls flagged, risk-coverage).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from triage.clock import utc_now
from triage.datasets import Sample, build_cache, load_manifest, near_duplicate_of, read_mask
from triage.lifecycle.recipe import CACHE_SIZE
from triage.metrics import dice_iou, expected_calibration_error
from triage.preprocess import LEGACY_CROP
from triage.records import CLASSES, Flag
from triage.risk import suspected_tumor

log = logging.getLogger(__name__)

REVIEW_FLAGS = (Flag.UNCERTAIN, Flag.OOD)
SPECIFICITY_FLOOR = 0.85


@dataclass(frozen=True)
class Part:
    """One held-out evaluation set: a name, its samples and how it may be scored."""

    name: str
    samples: tuple[Sample, ...]
    four_class: bool = False


def held_out_parts(shared: Path, seed: int = 0) -> list[Part]:
    """Every held-out part of :mod:`triage.lifecycle.sources`, split per sequence where a source labels it."""
    from triage.lifecycle.sources import BRATS, FELTRIN, LGG, source_splits

    shared = Path(shared)
    parts = [
        Part("BRISC test", tuple(s for s in load_manifest(shared / "brisc2025") if s.split == "test"), True),
        Part(
            "Sartaj Testing",
            tuple(s for s in load_manifest(shared / "sartaj_brain_tumor_classification") if s.split == "test"),
            True,
        ),
        Part("navoneel", tuple(load_manifest(shared / "navoneel_brain_mri_yes_no"))),
        Part("LGG subset (FLAIR)", tuple(load_manifest(shared / "lgg_kaggle_3m_subset"))),
    ]
    splits = source_splits(shared, seed)
    for seq in ("flair", "t1pre"):
        parts.append(Part(f"LGG sites CS+FG ({seq})", tuple(r.sample for r in splits[LGG].test if r.sequence == seq)))
    for seq in ("flair", "t1c"):
        parts.append(Part(f"BraTS pat 1-2 ({seq})", tuple(r.sample for r in splits[BRATS].test if r.sequence == seq)))
    parts.append(Part("Feltrin held-out subtypes", tuple(r.sample for r in splits[FELTRIN].test)))
    return parts


def strip_and_degrade(img: np.ndarray, quality: int = 30) -> np.ndarray:
    """A tumour-free slice made to look like BraTS and a web export: the head mask eroded by 6%
    (scalp and skull removed), then JPEG at ``quality``. The label must not change."""
    from triage.preprocess import find_head_mask

    head = find_head_mask(img).astype(np.uint8)
    k = max(3, int(0.06 * min(img.shape)) | 1)
    brain = cv2.erode(head, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))).astype(bool)
    out = np.where(brain, img, 0).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE) if ok else out


def _roc(is_tumor: np.ndarray, p: np.ndarray) -> tuple[float | None, float | None]:
    """ROC AUC and the best sensitivity at specificity >= 0.85 (None when one class is missing)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    if is_tumor.all() or not is_tumor.any():
        return None, None
    fpr, tpr, _ = roc_curve(is_tumor, p)
    return float(roc_auc_score(is_tumor, p)), float(tpr[fpr <= 1 - SPECIFICITY_FLOOR].max())


def risk_coverage(errors: np.ndarray, confidence: np.ndarray) -> dict:
    """Error rate of the most confident 50 / 80 / 100% of cases and the area under the curve."""
    order = np.argsort(-confidence, kind="stable")
    cum = np.cumsum(errors[order]) / np.arange(1, len(order) + 1)
    at = {f"error_at_{int(c * 100)}": float(cum[max(0, int(np.ceil(c * len(cum))) - 1)]) for c in (0.5, 0.8, 1.0)}
    return {**at, "aurc": float(cum.mean())}


def score_part(part: Part, results: list, masks: list[np.ndarray | None]) -> dict:
    """All measures of one part from its pipeline results (and truth masks, where it has them)."""
    labels = [s.label for s in part.samples]
    ok = np.array([r.ok for r in results])
    probs = np.stack(
        [r.prediction.probs if r.prediction is not None else np.array([1.0, 0, 0, 0], np.float32) for r in results]
    )
    is_tumor = np.array([lab != "no_tumor" for lab in labels])
    p_tumor = 1.0 - probs[:, 0]
    call = np.array([bool(r.ok and suspected_tumor(r.prediction.label, r.flags)) for r in results])
    flagged = np.array([any(f in r.flags for f in REVIEW_FLAGS) for r in results])
    errors = call != is_tumor
    auc, sens_at_spec = _roc(is_tumor, p_tumor)
    out: dict = {
        "n": len(results),
        "rejected": int((~ok).sum()),
        "tumor": int(is_tumor.sum()),
        "sensitivity": float(call[is_tumor].mean()) if is_tumor.any() else None,
        "specificity": float((~call[~is_tumor]).mean()) if (~is_tumor).any() else None,
        "auc": auc,
        "sensitivity_at_spec85": sens_at_spec,
        # A lesion must never be cleared with confidence (issue 23, item 2).
        "confident_no_tumor_on_tumor": float((probs[is_tumor, 0] >= 0.9).mean()) if is_tumor.any() else None,
        "errors": int(errors.sum()),
        "errors_flagged": float(flagged[errors].mean()) if errors.any() else None,
        "correct_flagged": float(flagged[~errors].mean()) if (~errors).any() else None,
        "error_rate_flagged": float(errors[flagged].mean()) if flagged.any() else None,
        "error_rate_unflagged": float(errors[~flagged].mean()) if (~flagged).any() else None,
        "risk_coverage": risk_coverage(errors.astype(float), np.abs(p_tumor - 0.5)),
    }
    binary = np.stack([probs[:, 0], p_tumor], 1)
    out["ece_binary"] = float(expected_calibration_error(binary, is_tumor.astype(int)))
    if part.four_class:
        y = np.array([CLASSES.index(lab) for lab in labels])
        pred = probs.argmax(1)
        out["accuracy"] = float((pred == y).mean())
        gl = y == CLASSES.index("glioma")
        out["glioma_recall"] = float((pred[gl] == y[gl]).mean()) if gl.any() else None
        out["tumor_miss"] = float((pred[is_tumor] == 0).mean()) if is_tumor.any() else None
        out["ece"] = float(expected_calibration_error(probs, y))
    if any(m is not None for m in masks):
        dices, fps, unreadable = [], [], 0
        for s, r, truth in zip(part.samples, results, masks):
            pred_mask = r.segmentation.mask if (r.ok and r.segmentation is not None) else None
            if truth is None:
                unreadable += s.mask_path is not None
                continue
            if truth.any():
                dices.append(dice_iou(pred_mask if pred_mask is not None else np.zeros_like(truth), truth)[0])
            else:
                fps.append(bool(pred_mask is not None and pred_mask.any()))
        out["dice"] = float(np.mean(dices)) if dices else None
        out["fp_masks"] = float(np.mean(fps)) if fps else None
        out["masks_unreadable"] = unreadable
    return out


def _truth_masks(part: Part, results: list) -> list[np.ndarray | None]:
    out = []
    for s, r in zip(part.samples, results):
        if s.mask_path is None or r.scan is None:
            out.append(None)
            continue
        try:
            out.append(read_mask(s.mask_path, r.scan.shape))
        except Exception as exc:
            log.warning("truth mask %s unreadable: %s", s.mask_path, exc)
            out.append(None)
    return out


def _training_reference(weights_dir: Path, versions: dict, shared: Path, cache_dir: Path) -> tuple[set, np.ndarray]:
    """SHA-1s and thumbnails of every image the evaluated models trained on (any recipe)."""
    from triage.lifecycle.recipe import cached
    from triage.lifecycle.sources import FELTRIN, cache_rows, source_splits

    sha: set[str] = set()
    for task, version in versions.items():
        f = Path(weights_dir) / task / version / "splits.json"
        if f.is_file():
            sha |= set(json.loads(f.read_text(encoding="utf-8"))["train_sha1"])
    pools = [
        cached(shared, "brisc2025", "train", cache_dir, False, LEGACY_CROP),
        cached(shared, "sartaj_brain_tumor_classification", "train", cache_dir, False, LEGACY_CROP),
    ]
    for name, sp in source_splits(shared).items():
        if name != FELTRIN or sp.train:
            pools.append(cache_rows(sp.train + sp.val, cache_dir, False, LEGACY_CROP))
    thumbs = [p.thumbs[np.array([s in sha for s in p.sha1s], bool)] for p in pools if len(p.samples)]
    return sha, np.concatenate(thumbs) if thumbs else np.zeros((0, 4096), np.float32)


def run_cross_source(shared: Path, out: Path, service=None, limit: int | None = None, progress: bool = True) -> dict:
    """Evaluate the active models on every held-out part; write ``out`` (.md) and ``.json``."""
    from triage.evaluate import predict_cached
    from triage.service import TriageService

    service = service or TriageService()
    settings = service.settings
    versions = service.models().versions
    cache_dir = settings.cache_dir
    shared = Path(shared)
    sha, thumbs = _training_reference(settings.weights_dir, versions, shared, cache_dir)
    rows, t0 = {}, time.perf_counter()
    for part in held_out_parts(shared):
        samples = list(part.samples)
        if limit and len(samples) > limit:
            idx = np.sort(np.random.default_rng(0).choice(len(samples), limit, replace=False))
            samples = [samples[i] for i in idx]
        test = build_cache(samples, CACHE_SIZE, cache_dir, with_masks=False, progress=False, crop=LEGACY_CROP)
        dup = np.array([s in sha for s in test.sha1s], bool) | near_duplicate_of(test.thumbs, thumbs)
        kept = test.subset(~dup)
        part_kept = Part(part.name, tuple(kept.samples), part.four_class)
        results = predict_cached(service, kept, progress=progress)
        rows[part.name] = {
            "removed_duplicates": int(dup.sum()),
            **score_part(part_kept, results, _truth_masks(part_kept, results)),
        }
        log.info("%s: %s", part.name, json.dumps(rows[part.name], default=float)[:300])
        _write(out, versions, t0, rows, complete=False)  # a long run leaves a readable partial report
    rows["BRISC test no_tumor, skull-stripped + JPEG 30 (shortcut probe)"] = _shortcut_probe(service, shared, sha)
    return _write(out, versions, t0, rows, complete=True)


def _write(out: Path, versions: dict, t0: float, rows: dict, complete: bool) -> dict:
    rep = {
        "created": utc_now("seconds"),
        "versions": versions,
        "seconds": round(time.perf_counter() - t0, 1),
        "complete": complete,
        "parts": rows,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rep, indent=2, default=float), encoding="utf-8")
    out.write_text(render_markdown(rep), encoding="utf-8")
    return rep


def _shortcut_probe(service, shared: Path, sha: set) -> dict:
    """Tumour calls on tumour-free BRISC test slices after :func:`strip_and_degrade`."""
    from dataclasses import replace

    from triage.batch import analyze_many, read_input

    samples = [s for s in load_manifest(shared / "brisc2025") if s.split == "test" and s.label == "no_tumor"]

    def degrade(scan):
        return replace(scan, pixels=strip_and_degrade(scan.pixels), scan_id=scan.scan_id + "-probe")

    inputs = (read_input(s.path, service.settings) for s in samples)
    results = [f.results[0] for f in analyze_many(service, inputs, batch_size=32, prepare=degrade)]
    part = Part("probe", tuple(samples))
    return score_part(part, results, [None] * len(samples))


def _f(x: object, pct: bool = False) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def render_markdown(rep: dict) -> str:
    """One table across sources, then the flags table."""
    v = rep["versions"]
    lines = [
        f"# Cross-source evaluation: classifier `{v['classifier']}`, segmenter `{v['segmenter']}`",
        "",
        *([] if rep.get("complete", True) else ["**Partial report: only the parts below are done.**", ""]),
        f"{rep['created']}; {rep['seconds']:.0f} s. Parts never trained on (`triage.lifecycle.sources`); duplicates of "
        "training images removed first. Worklist call = a tumour class or a no_tumor call contradicted by the "
        "segmenter. Sensitivity at specificity >= 0.85 is read off each part's own ROC (not an operating point).",
        "",
        "| part | n | removed dups | worklist sens. | worklist spec. | AUC | sens. @ spec>=0.85 | 4-class acc. "
        "| glioma recall | tumour-miss | confident no_tumor on tumours | Dice | FP masks | ECE (4-class / binary) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rep["parts"].items():
        lines.append(
            f"| {name} | {r['n']} | {r.get('removed_duplicates', 0)} | {_f(r['sensitivity'])} | {_f(r['specificity'])} | "
            f"{_f(r['auc'])} | {_f(r['sensitivity_at_spec85'])} | {_f(r.get('accuracy'))} | {_f(r.get('glioma_recall'))} | "
            f"{_f(r.get('tumor_miss'), True)} | {_f(r['confident_no_tumor_on_tumor'], True)} | {_f(r.get('dice'))} | "
            f"{_f(r.get('fp_masks'), True)} | {_f(r.get('ece'))} / {_f(r['ece_binary'])} |"
        )
    lines += [
        "",
        "## Do the flags mark the errors?",
        "",
        "Error = the worklist call is wrong (tumour vs no tumour). Flagged = `uncertain` or `ood`. "
        "Risk-coverage: error rate of the most confident share of cases (confidence = |P(tumour) - 0.5|).",
        "",
        "| part | errors | errors flagged | correct calls flagged | error rate flagged / unflagged "
        "| error @ 50% / 80% / 100% coverage | AURC |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rep["parts"].items():
        rc = r["risk_coverage"]
        lines.append(
            f"| {name} | {r['errors']} | {_f(r['errors_flagged'], True)} | {_f(r['correct_flagged'], True)} | "
            f"{_f(r['error_rate_flagged'], True)} / {_f(r['error_rate_unflagged'], True)} | "
            f"{_f(rc['error_at_50'], True)} / {_f(rc['error_at_80'], True)} / {_f(rc['error_at_100'], True)} | "
            f"{rc['aurc']:.3f} |"
        )
    return "\n".join(lines) + "\n"
