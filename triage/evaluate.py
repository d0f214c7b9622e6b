"""Evaluate the active models on a dataset folder and write a Markdown + JSON report.

The real inference pipeline is used (file -> decode -> crop -> classify -> segment -> reconcile),
so the numbers are what the app would show. Before scoring, every evaluation image that is an
exact or near duplicate of a training image of the active models is removed and counted.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from triage.clock import utc_now
from triage.datasets import CachedSet, build_cache, load_manifest, read_mask
from triage.metrics import (
    average_precision_at,
    binary_tumor_report,
    box_iou,
    classification_report,
    dice_iou,
)
from triage.preprocess import LEGACY_CROP, mask_bbox
from triage.records import CLASSES
from triage.risk import suspected_tumor

log = logging.getLogger(__name__)

TRAIN_SOURCES = (("brisc2025", "train"), ("sartaj_brain_tumor_classification", "train"))


def _training_reference(
    weights_dir: Path, versions: dict, shared: Path, cache_dir: Path
) -> tuple[set, np.ndarray, str]:
    """SHA-1 set and thumbnails of every image the active models were trained on."""
    from triage.lifecycle.recipe import cached

    sha: set[str] = set()
    for task, version in versions.items():
        f = Path(weights_dir) / task / version / "splits.json"
        if f.is_file():
            sha |= set(json.loads(f.read_text(encoding="utf-8"))["train_sha1"])
    if not sha:
        return sha, np.zeros((0, 4096), np.float32), "no splits.json: duplicates of training data were NOT removed"
    thumbs = []
    if (shared / "brisc2025" / "manifest.csv").is_file():
        for name, split in TRAIN_SOURCES:
            # Only thumbnails are used here and they do not depend on the crop.
            c = cached(shared, name, split, cache_dir, progress=False, crop=LEGACY_CROP)
            sel = np.array([s in sha for s in c.sha1s], bool)
            thumbs.append(c.thumbs[sel])
        note = "exact (SHA-1) and near (64x64 thumbnail cosine >= 0.99) duplicates of training images removed"
    else:
        note = "shared data not found: only exact (SHA-1) duplicates of training images removed"
    t = np.concatenate(thumbs) if thumbs else np.zeros((0, 4096), np.float32)
    return sha, t, note


def _pick_eval_samples(data: Path) -> tuple[list, str]:
    samples = load_manifest(data)
    if any(s.split == "test" for s in samples):
        return [s for s in samples if s.split == "test"], "test split"
    return samples, "all images (the dataset has no test split)"


def predict_cached(service, test: CachedSet, batch: int = 32, progress: bool = True) -> list:
    """Run the full pipeline on each sample's original file, ``batch`` files per model batch
    (:func:`triage.batch.analyze_many`): one result per sample, its first frame (or a rejected result)."""
    from triage.batch import analyze_many, read_input

    inputs = (read_input(s.path, service.settings) for s in test.samples)
    done = analyze_many(service, inputs, batch_size=batch)
    if progress:
        from tqdm import tqdm

        done = tqdm(done, total=len(test.samples), desc="evaluate", unit="img")
    return [f.results[0] for f in done]


def score(test: CachedSet, results: list, per_image: bool = False) -> dict:
    """All metrics for one evaluated set.

    ``per_image``: also return ``per_image`` = ``{"probs": [[p, ...]], "dice": [d or None]}`` in
    sample order, for paired comparisons of two versions on the same images (triage.promotion).
    """
    labels = [s.label for s in test.samples]
    ok = [r.ok for r in results]
    probs = (
        np.stack(
            [r.prediction.probs if r.prediction is not None else np.array([1.0, 0, 0, 0], np.float32) for r in results]
        )
        if results
        else np.zeros((0, 4))
    )
    out: dict = {
        "n": len(results),
        "rejected_by_pipeline": int(len(ok) - sum(ok)),
        "flagged_ood": int(sum(bool(r.prediction is not None and r.prediction.ood) for r in results)),
    }
    four_class = all(lab in CLASSES for lab in labels) and len(set(labels)) > 2
    is_tumor = np.array([lab != "no_tumor" for lab in labels])
    out["binary"] = binary_tumor_report(is_tumor, 1.0 - probs[:, 0]) if len(results) else {}
    # What the worklist does: a tumor class OR a kept mask (a no_tumor call with a mask above the
    # disagreement size is flagged and ranked as suspicious, never silently cleared).
    flagged = np.array([float(r.ok and suspected_tumor(r.prediction.label, r.flags)) for r in results])
    out["screen"] = binary_tumor_report(is_tumor, flagged) if len(results) else {}
    if four_class:
        y = np.array([CLASSES.index(lab) for lab in labels])
        out["classification"] = classification_report(y, probs)
    elif all(lab in CLASSES for lab in labels):
        y = np.array([CLASSES.index(lab) for lab in labels])
        rep = classification_report(y, probs)
        out["classification"] = {
            k: rep[k] for k in ("n", "accuracy", "accuracy_ci95", "tumor_miss_rate", "ece", "confusion_matrix")
        }
    has_masks = [s.mask_path is not None for s in test.samples]
    if any(has_masks):
        dices, ious, fps, box_ious, ap_ious, ap_scores, dice_labels = [], [], [], [], [], [], []
        n_truth = 0
        unreadable: list[str] = []
        dice_at: list[float | None] = [None] * len(results)
        for i, (s, r) in enumerate(zip(test.samples, results)):
            pred = r.segmentation.mask if (r.ok and r.segmentation is not None) else None
            if s.mask_path is not None:
                if r.scan is None:  # the image itself was rejected: nothing to compare the mask with
                    continue
                try:
                    truth = read_mask(s.mask_path, r.scan.shape)
                except Exception as exc:  # a broken truth mask is reported, not fatal
                    unreadable.append(f"{Path(s.mask_path).name}: {exc}")
                    continue
                if not truth.any():
                    fps.append(bool(pred is not None and pred.any()))
                    continue
                n_truth += 1
                p = pred if pred is not None else np.zeros_like(truth)
                d, j = dice_iou(p, truth)
                dice_at[i] = d
                dices.append(d)
                dice_labels.append(s.label)
                ious.append(j)
                bi = box_iou(mask_bbox(p), mask_bbox(truth))
                box_ious.append(bi)
                if p.any():
                    ap_ious.append(bi)
                    ap_scores.append(r.segmentation.max_prob)
            elif s.label == "no_tumor":
                fps.append(bool(pred is not None and pred.any()))
                if pred is not None and pred.any():
                    ap_ious.append(0.0)
                    ap_scores.append(r.segmentation.max_prob)
        out["segmentation"] = {
            "tumor_slices": n_truth,
            "truth_masks_unreadable": len(unreadable),
            "truth_masks_unreadable_examples": unreadable[:10],
            "dice_mean": float(np.mean(dices)) if dices else None,
            "iou_mean": float(np.mean(ious)) if ious else None,
            "dice_median": float(np.median(dices)) if dices else None,
            # Where the mean loses to the median: slices whose mask misses the tumor almost entirely.
            "dice_below_0.1_rate": float(np.mean(np.array(dices) < 0.1)) if dices else None,
            "dice_by_class": {
                lab: float(np.mean([d for d, lb in zip(dices, dice_labels) if lb == lab]))
                for lab in sorted(set(dice_labels))
            },
            "empty_slices": len(fps),
            "false_positive_mask_rate": float(np.mean(fps)) if fps else None,
            "box_iou_mean": float(np.mean(box_ious)) if box_ious else None,
            "map50": average_precision_at(ap_ious, ap_scores, n_truth, 0.5) if n_truth else None,
        }
        if per_image:
            out["per_image"] = {"dice": dice_at}
    elif any(lab == "no_tumor" for lab in labels):
        fps = [
            bool(r.ok and r.segmentation is not None and r.segmentation.area_px > 0)
            for s, r in zip(test.samples, results)
            if s.label == "no_tumor"
        ]
        out["segmentation"] = {"empty_slices": len(fps), "false_positive_mask_rate": float(np.mean(fps))}
    if per_image:
        out.setdefault("per_image", {"dice": [None] * len(results)})["probs"] = probs.round(6).tolist()
    return out


def _fmt(x: object, pct: bool = False) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x * 100:.1f}%" if pct else f"{x:.3f}"
    return str(x)


def render_markdown(rep: dict) -> str:
    """Human-readable report."""
    m = rep["metrics"]
    lines = [
        f"# Evaluation: {rep['dataset']}",
        "",
        f"- Date: {rep['created']}; models: classifier `{rep['versions']['classifier']}`, "
        f"segmenter `{rep['versions']['segmenter']}`",
        f"- Images: {rep['selection']}: {rep['n_candidates']} candidates, "
        f"**{rep['n_removed_duplicates']} removed** as duplicates of training images ({rep['dedup_note']}), "
        f"{rep['n_unreadable']} unreadable, **{m['n']} evaluated**",
        f"- Pipeline rejections (not a brain MRI / unreadable): {m['rejected_by_pipeline']}; "
        f"flagged out-of-distribution: {m['flagged_ood']}",
        f"- Speed: {rep['ms_per_image']:.1f} ms per image (decode+crop+classify+segment, batches of 32, "
        f"{rep['threads']} threads)",
        "",
    ]
    c = m.get("classification")
    if c:
        lo, hi = c["accuracy_ci95"]
        lines += [
            "## Classification",
            "",
            "| measure | value |",
            "|---|---|",
            f"| accuracy (95% CI) | {c['accuracy']:.3f} ({lo:.3f}–{hi:.3f}) |",
            f"| tumor-miss rate (tumor predicted as no_tumor) | {_fmt(c['tumor_miss_rate'], True)} |",
            f"| ECE (15 bins) | {c['ece']:.3f} |",
        ]
        if "macro_f1" in c:
            lines.append(f"| macro F1 | {c['macro_f1']:.3f} |")
        lines.append("")
        if "per_class" in c:
            lines += ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
            for k, v in c["per_class"].items():
                lines.append(f"| {k} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |")
            lines.append("")
        lines += [
            "Confusion matrix (rows = truth, columns = prediction, order " + ", ".join(CLASSES) + "):",
            "",
            "| truth \\ pred | " + " | ".join(CLASSES) + " |",
            "|---" * (len(CLASSES) + 1) + "|",
        ]
        for cls, row in zip(CLASSES, c["confusion_matrix"]):
            lines.append(f"| {cls} | " + " | ".join(str(v) for v in row) + " |")
        lines.append("")
    b, sc = m.get("binary"), m.get("screen") or {}
    if b:

        def ci(r: dict) -> str:
            return f"{r['accuracy']:.3f} ({r['accuracy_ci95'][0]:.3f}–{r['accuracy_ci95'][1]:.3f})" if r else "n/a"

        lines += [
            "## Tumor vs no tumor",
            "",
            "Classifier: P(tumor) ≥ 0.5. Worklist: a tumor class, or a no_tumor call whose segmenter mask is "
            "larger than the disagreement size (flagged `disagreement` and ranked with risk ≥ 0.5).",
            "",
            "| measure | classifier | worklist (classifier or segmenter) |",
            "|---|---|---|",
            f"| accuracy (95% CI) | {ci(b)} | {ci(sc)} |",
            f"| sensitivity | {b['sensitivity']:.3f} | {_fmt(sc.get('sensitivity'))} |",
            f"| specificity | {b['specificity']:.3f} | {_fmt(sc.get('specificity'))} |",
            "",
        ]
    s = m.get("segmentation")
    if s:
        lines += ["## Segmentation and localisation", "", "| measure | value |", "|---|---|"]
        for key, label in [
            ("tumor_slices", "tumor slices with a mask"),
            ("truth_masks_unreadable", "truth masks that could not be read (left out of Dice)"),
            ("dice_mean", "Dice (mean over tumor slices)"),
            ("dice_median", "Dice (median)"),
            ("dice_below_0.1_rate", "tumor slices with Dice < 0.1 (mask missed)"),
            ("iou_mean", "IoU (mean over tumor slices)"),
            ("empty_slices", "tumor-free slices"),
            ("false_positive_mask_rate", "false-positive masks on tumor-free slices"),
            ("box_iou_mean", "bounding-box IoU (mean; seed 000 Mask R-CNN: 0.42–0.48)"),
            ("map50", "mAP@0.5 from mask bounding boxes"),
        ]:
            if key in s:
                lines.append(
                    f"| {label} | {_fmt(s[key], key in ('false_positive_mask_rate', 'dice_below_0.1_rate'))} |"
                )
        for lab, d in (s.get("dice_by_class") or {}).items():
            lines.append(f"| Dice, {lab} slices | {d:.3f} |")
        lines.append("")
    if rep.get("cv"):
        cv = rep["cv"]
        lines += [
            "## Cross-validation",
            "",
            f"{cv['folds']}-fold, quick preset, mean ± sd over folds:",
            "",
            "| measure | mean | sd |",
            "|---|---|---|",
        ]
        for k, v in cv["summary"].items():
            lines.append(f"| {k} | {v['mean']:.3f} | {v['sd']:.3f} |")
        lines += [
            "",
            "| fold | train images | test images | accuracy | macro F1 | tumor-miss | ECE | training min |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for f in cv["per_fold"]:
            lines.append(
                f"| {f['fold']} | {f.get('n_train', 'n/a')} | {f['n_test']} | {f['accuracy']:.3f} | "
                f"{f['macro_f1']:.3f} | {_fmt(f['tumor_miss_rate'], True)} | {f['ece']:.3f} | "
                f"{f.get('train_min', 0):.1f} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def run_evaluation(
    data: Path, out: Path, folds: int = 0, limit: int | None = None, progress: bool = True, service=None
) -> dict:
    """Evaluate the active models on ``data``; write ``out`` (.md) and ``out.with_suffix('.json')``."""
    import torch

    from triage.service import TriageService

    service = service or TriageService()
    settings = service.settings
    versions = service.models().versions
    data = Path(data)
    cache_dir = settings.cache_dir
    samples, selection = _pick_eval_samples(data)
    if limit:
        rng = np.random.default_rng(0)
        idx = np.sort(rng.choice(len(samples), size=min(limit, len(samples)), replace=False))
        samples = [samples[i] for i in idx]
        selection += f", fixed random subset of {len(samples)} (seed 0)"
    test = build_cache(samples, 256, cache_dir, with_masks=False, progress=progress, crop=LEGACY_CROP)
    sha, thumbs, note = _training_reference(settings.weights_dir, versions, data.parent, cache_dir)
    from triage.lifecycle.recipe import dedup_test_against_training

    kept, removed = dedup_test_against_training(test, sha, thumbs)
    t0 = time.perf_counter()
    results = predict_cached(service, kept, progress=progress)
    ms = (time.perf_counter() - t0) * 1000 / max(1, len(results))
    metrics = score(kept, results)
    rep = {
        "dataset": data.name,
        "created": utc_now("seconds"),
        "versions": versions,
        "selection": selection,
        "n_candidates": len(samples),
        "n_unreadable": len(test.rejected),
        "n_removed_duplicates": removed,
        "dedup_note": note,
        "ms_per_image": ms,
        "threads": torch.get_num_threads(),
        "metrics": metrics,
    }
    if folds and folds > 1:
        from triage.crossval import cross_validate

        rep["cv"] = cross_validate(data, folds, cache_dir, progress=progress)
    c = metrics.get("classification") or {}
    b = metrics.get("binary") or {}
    sc = metrics.get("screen") or {}
    s = metrics.get("segmentation") or {}
    rep["summary_line"] = (
        f"{data.name}: n={metrics['n']} (removed {removed} duplicates) "
        f"acc={_fmt(c.get('accuracy'))} tumor-vs-none={_fmt(b.get('accuracy'))} "
        f"worklist-tumor-vs-none={_fmt(sc.get('accuracy'))} "
        f"miss={_fmt(c.get('tumor_miss_rate'), True)} ece={_fmt(c.get('ece'))} "
        f"dice={_fmt(s.get('dice_mean'))} fp_masks={_fmt(s.get('false_positive_mask_rate'), True)}"
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_markdown(rep), encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(rep, indent=2, default=float), encoding="utf-8")
    return rep
