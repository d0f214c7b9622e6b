"""Re-fit the temperature of an existing classifier version on its own validation split.

Used when inference changes in a way that shifts the logits (e.g. switching test-time
augmentation on): the validation images are rebuilt from the recipe recorded in the model card
(checked against its SHA-1 digest), and ``metadata.json`` is rewritten atomically with the new
temperature, the calibration metrics and a ``calibration_history`` entry.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from triage.errors import TrainingError
from triage.metrics import classification_report
from triage.models import load_model
from triage.preprocess import LEGACY_CROP
from triage.records import CLASSES


def recalibrate_classifier(weights_dir: Path, version: str, shared: Path, cache_dir: Path, tta: bool = True) -> dict:
    """Fit T on the version's validation images with/without TTA; returns the new calibration block."""
    from triage.recipe import standard_split
    from triage.train import fit_temperature, predict_logits, softmax

    model = load_model(weights_dir, "classifier", version)
    meta = model.meta
    data = meta.get("data", {})
    if data.get("recipe") != "triage.recipe.standard_split":
        raise TrainingError("only versions trained with the standard shared-data recipe can be recalibrated here")
    bundle = standard_split(Path(shared), Path(cache_dir), seed=int(data.get("seed", 0)),
                            val_fraction=float(data.get("val_fraction", 0.12)), use_sartaj=False, progress=False,
                            crop=meta.get("crop", LEGACY_CROP))
    if data.get("val_sha1_digest") and bundle.info["val_sha1_digest"] != data["val_sha1_digest"]:
        raise TrainingError("rebuilt validation split differs from the one recorded in the model card")
    y = np.array([CLASSES.index(label) for label in bundle.val.labels()])
    logits = predict_logits(model.net, bundle.val.images, int(meta["input_size"]), tta=tta)
    temperature = fit_temperature(logits, y)
    before = classification_report(y, softmax(logits))
    after = classification_report(y, softmax(logits, temperature))
    entry = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "tta": tta,
             "old_temperature": meta.get("temperature"), "temperature": temperature,
             "ece_before": before["ece"], "ece_after": after["ece"], "val_accuracy": after["accuracy"]}
    meta.update({"temperature": temperature, "tta": tta})
    meta.setdefault("calibration_history", []).append(entry)
    meta["metrics"]["validation"] = {"before_calibration": before, "after_calibration": after,
                                     "ece_before": before["ece"], "ece_after": after["ece"]}
    path = model.path / "metadata.json"
    fd, tmp = tempfile.mkstemp(dir=model.path, prefix=".metadata.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=2, default=str)
        fh.write("\n")
    os.replace(tmp, path)
    return entry
