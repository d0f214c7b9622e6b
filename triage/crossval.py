"""k-fold cross-validation of the classifier on one dataset (seed 001 did 5-fold CV).

Each fold trains a fresh classifier with the quick preset on the other folds (with its own
inner validation split for early stopping and temperature) and is scored on the held-out fold.
Near-duplicates are removed inside the dataset first so no fold sees a copy of its test images.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from triage.datasets import build_cache, dedup_groups, load_manifest, stratified_split
from triage.metrics import classification_report
from triage.records import CLASSES

log = logging.getLogger(__name__)


def fold_ids(labels: list[str], k: int, seed: int = 0) -> np.ndarray:
    """Stratified fold index (0..k-1) per sample."""
    rng = np.random.default_rng(seed)
    ids = np.zeros(len(labels), int)
    arr = np.asarray(labels)
    for lab in sorted(set(labels)):
        idx = np.nonzero(arr == lab)[0]
        rng.shuffle(idx)
        ids[idx] = np.arange(len(idx)) % k
    return ids


def cross_validate(
    data: Path, k: int, cache_dir: Path, preset: str = "quick", progress: bool = True, **overrides: object
) -> dict:
    """Train/score ``k`` folds; returns per-fold metrics and mean/sd."""
    from triage.lifecycle.fitting import predict_logits, softmax
    from triage.lifecycle.train import train_classifier
    from triage.lifecycle.train_config import TrainConfig
    from triage.models import load_model

    samples = [s for s in load_manifest(data) if s.label in CLASSES]
    cache = build_cache(samples, 256, cache_dir, with_masks=False, progress=progress)
    cache = cache.subset(dedup_groups(cache.thumbs, cache.sha1s))
    folds = fold_ids(cache.labels(), k)
    per_fold = []
    for f in range(k):
        test, rest = cache.subset(folds == f), cache.subset(folds != f)
        inner = stratified_split(rest.labels(), 0.15, seed=f)
        train, val = rest.subset(~inner), rest.subset(inner)
        cfg = TrainConfig.from_preset("classifier", preset, seed=f, **overrides)
        if cfg.max_train_images and len(train.samples) > cfg.max_train_images:
            train = train.subset(stratified_split(train.labels(), cfg.max_train_images / len(train.samples), f))
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            wd = Path(tmp) / "weights"
            folder = train_classifier(
                cfg,
                train,
                val,
                Path(tmp) / "run",
                wd / "classifier" / f"fold{f}",
                {"recipe": f"crossval fold {f}/{k}"},
                progress=progress,
            )
            model = load_model(wd, "classifier", folder.name)
            logits = predict_logits(model.net, test.images, cfg.input_size)
            y = np.array([CLASSES.index(lab) for lab in test.labels()])
            rep = classification_report(y, softmax(logits, model.card.temperature))
            train_min = model.card.wall_time_min or 0.0
        per_fold.append(
            {
                "fold": f,
                "n_train": len(train.samples),
                "n_test": len(y),
                "accuracy": rep["accuracy"],
                "macro_f1": rep["macro_f1"],
                "tumor_miss_rate": rep["tumor_miss_rate"],
                "ece": rep["ece"],
                "train_min": train_min,
                "fold_min": (time.time() - t0) / 60,
            }
        )
        log.info("fold %d: %s", f, per_fold[-1])
    keys = ("accuracy", "macro_f1", "tumor_miss_rate", "ece")
    summary = {
        key: {
            "mean": float(np.mean([p[key] for p in per_fold])),
            "sd": float(np.std([p[key] for p in per_fold], ddof=1)) if k > 1 else 0.0,
        }
        for key in keys
    }
    return {"folds": k, "preset": preset, "per_fold": per_fold, "summary": summary}
