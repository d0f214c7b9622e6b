"""Re-fit the temperature of a classifier version (or re-pick a segmenter's threshold) on its validation split.

Used when inference changes in a way that shifts the logits (e.g. switching test-time
augmentation on): the validation images are rebuilt from the recipe recorded in the model card
(checked against its SHA-1 digest), and ``metadata.json`` is rewritten atomically with the new
temperature, the calibration metrics and a ``calibration_history`` entry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from triage import atomic
from triage.card import ModelCard
from triage.clock import utc_now
from triage.errors import TrainingError
from triage.lifecycle.recipe import standardized
from triage.metrics import classification_report
from triage.models import load_model


def _validation_set(card: ModelCard, shared: Path, cache_dir: Path, with_sources: bool = False):
    """Rebuild a version's validation split from the recipe in its card (checked by SHA-1 digest).

    ``with_sources``: also return the source of each image (``validation`` for the standard recipe)."""
    from triage.lifecycle.recipe import standard_split
    from triage.lifecycle.sources import RECIPE, multi_source_split

    data = card.data
    if data.get("recipe") == RECIPE:
        bundle = multi_source_split(
            Path(shared),
            Path(cache_dir),
            task=data.get("task", card.task),
            seed=int(data.get("seed", 0)),
            progress=False,
            crop=dict(card.crop),
        )
        if data.get("val_sha1_digest") and bundle.info["val_sha1_digest"] != data["val_sha1_digest"]:
            raise TrainingError("rebuilt validation split differs from the one recorded in the model card")
        val = standardized(bundle.val, card.intensity_norm)
        return (val, bundle.val_sources) if with_sources else val
    if data.get("recipe") != "triage.recipe.standard_split":
        raise TrainingError("only versions trained with the standard shared-data recipe can be recalibrated here")
    bundle = standard_split(
        Path(shared),
        Path(cache_dir),
        seed=int(data.get("seed", 0)),
        val_fraction=float(data.get("val_fraction", 0.12)),
        use_sartaj=False,
        progress=False,
        crop=dict(card.crop),
    )
    if data.get("val_sha1_digest") and bundle.info["val_sha1_digest"] != data["val_sha1_digest"]:
        raise TrainingError("rebuilt validation split differs from the one recorded in the model card")
    val = standardized(bundle.val, card.intensity_norm)
    return (val, ["validation"] * len(val.samples)) if with_sources else val


def _write_metadata(folder: Path, meta: dict) -> None:
    """Atomic rewrite of metadata.json (a crash leaves the old card, never half a file)."""
    atomic.write_json(folder / "metadata.json", meta, indent=2, default=str)


def retune_segmenter(weights_dir: Path, version: str, shared: Path, cache_dir: Path, tta: bool = True) -> dict:
    """Re-pick threshold and minimum component area on the version's validation split, with or
    without mirror test-time augmentation; records both searches and switches the card's ``tta``."""
    from triage.lifecycle.fitting import predict_masks, resize_masks, search_postprocess
    from triage.lifecycle.training_run import _segmentation_subset

    model = load_model(weights_dir, "segmenter", version)
    meta, card = model.meta, model.card  # the record is read; the dict is what gets rewritten
    val = _segmentation_subset(_validation_set(card, shared, cache_dir))
    size = card.input_size
    truth = resize_masks(val.masks, size)
    old = dict(card.validation())
    chosen, grid = search_postprocess(predict_masks(model.net, val.images, size, tta=tta), truth)
    entry = {
        "at": utc_now("seconds"),
        "tta": tta,
        "old": {k: old.get(k) for k in ("threshold", "min_area_frac", "dice", "fp_rate")},
        "new": {k: chosen[k] for k in ("threshold", "min_area_frac", "dice", "fp_rate")},
    }
    meta.update({"tta": tta, "threshold": chosen["threshold"], "min_area_frac": chosen["min_area_frac"]})
    meta.setdefault("postprocess_history", []).append(entry)
    meta["postprocess_search"] = grid
    meta.setdefault("metrics", {})["validation"] = chosen
    _write_metadata(model.path, meta)
    return entry


def recalibrate_classifier(weights_dir: Path, version: str, shared: Path, cache_dir: Path, tta: bool = True) -> dict:
    """Fit T on the version's validation images with/without TTA; returns the new calibration block."""
    from triage.lifecycle.fitting import fit_temperature_sets, predict_logits, softmax
    from triage.lifecycle.sources import label_matrix

    model = load_model(weights_dir, "classifier", version)
    meta, card = model.meta, model.card
    val = _validation_set(card, shared, cache_dir)
    allowed = label_matrix(val.labels())
    single = allowed.sum(1) == 1  # "tumor" (any tumour class) images calibrate but have no 4-class truth
    y = allowed.argmax(1)[single]
    logits = predict_logits(model.net, val.images, card.input_size, tta=tta)
    temperature = fit_temperature_sets(logits, allowed)
    before = classification_report(y, softmax(logits)[single])
    after = classification_report(y, softmax(logits, temperature)[single])
    entry = {
        "at": utc_now("seconds"),
        "tta": tta,
        "old_temperature": card.raw.get("temperature"),
        "temperature": temperature,
        "ece_before": before["ece"],
        "ece_after": after["ece"],
        "val_accuracy": after["accuracy"],
    }
    meta.update({"temperature": temperature, "tta": tta})
    meta.setdefault("calibration_history", []).append(entry)
    meta["metrics"]["validation"] = {
        "before_calibration": before,
        "after_calibration": after,
        "ece_before": before["ece"],
        "ece_after": after["ece"],
    }
    _write_metadata(model.path, meta)
    return entry


def fit_flags(weights_dir: Path, version: str, shared: Path, cache_dir: Path) -> dict:
    """Fit the card's review-flag rule (:func:`triage.flags.fit_flag_rule`) on the version's validation
    images, through the same transform, TTA and temperature as inference; rewrites ``metadata.json``."""
    from triage.flags import call_errors, fit_flag_rule
    from triage.lifecycle.fitting import predict_logits, softmax
    from triage.lifecycle.sources import label_matrix

    model = load_model(weights_dir, "classifier", version)
    meta, card = model.meta, model.card
    val, sources = _validation_set(card, shared, cache_dir, with_sources=True)
    logits = predict_logits(model.net, val.images, card.input_size, tta=card.tta)
    probs = softmax(logits, card.temperature)
    allowed = label_matrix(val.labels())
    rule = fit_flag_rule(probs, allowed)
    src = np.asarray(sources)
    per_source = {}
    for name in sorted(set(sources)):
        sel = src == name
        sub = call_errors(probs[sel], allowed[sel])
        flagged = rule.uncertain(probs[sel])
        per_source[name] = {
            "n": int(sel.sum()),
            "errors": int(sub.sum()),
            "errors_flagged": float(flagged[sub].mean()) if sub.any() else None,
            "correct_flagged": float(flagged[~sub].mean()) if (~sub).any() else None,
        }
    meta["flag_rule"] = {
        **rule.to_card(),
        "at": utc_now("seconds"),
        "per_source": per_source,
    }
    _write_metadata(model.path, meta)
    return meta["flag_rule"]
