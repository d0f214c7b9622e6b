"""The standard, leakage-free split of ``../shared/data`` used to train and evaluate shipped models.

Rules (all deterministic for a seed):
- validation = a stratified 12% of BRISC train; validation images that are exact (SHA-1) or
  near duplicates (64x64 thumbnail cosine >= 0.99) of the remaining BRISC train are removed;
- training = rest of BRISC train (+ Sartaj Training when ``use_sartaj``), where every *extra*
  image that duplicates a validation or any test image (BRISC test, Sartaj Testing, navoneel,
  LGG) is dropped, so those test sets stay whole;
- at evaluation, test images that duplicate any training image are removed and counted
  (:func:`dedup_test_against_training`), exactly as issue #3 asks for BRISC test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from triage.datasets import (
    CachedSet,
    Sample,
    build_cache,
    load_manifest,
    near_duplicate_of,
    stratified_split,
)
from triage.errors import DatasetError
from triage.preprocess import check_intensity_norm, standardize_intensity

log = logging.getLogger(__name__)

CACHE_SIZE = 256
TEST_SETS = {
    "brisc2025": "test",
    "sartaj_brain_tumor_classification": "test",
    "navoneel_brain_mri_yes_no": None,
    "lgg_kaggle_3m_subset": None,
}


def dataset_samples(shared: Path, name: str, split: str | None = None) -> list[Sample]:
    root = Path(shared) / name
    if not (root / "manifest.csv").is_file():
        raise DatasetError(f"dataset {name} not found under {shared}")
    samples = load_manifest(root, name)
    return [s for s in samples if split is None or s.split == split]


def cached(
    shared: Path, name: str, split: str | None, cache_dir: Path, progress: bool = True, crop: dict | None = None
) -> CachedSet:
    return build_cache(
        dataset_samples(shared, name, split), CACHE_SIZE, cache_dir, with_masks=True, progress=progress, crop=crop
    )


def _dup_mask(query: CachedSet, refs: list[CachedSet]) -> np.ndarray:
    hit = np.zeros(len(query.samples), bool)
    for ref in refs:
        ref_sha = set(ref.sha1s)
        hit |= np.array([s in ref_sha for s in query.sha1s], bool)
        hit |= near_duplicate_of(query.thumbs, ref.thumbs)
    return hit


@dataclass
class SplitBundle:
    train: CachedSet
    val: CachedSet
    info: dict


def standard_split(
    shared: Path,
    cache_dir: Path,
    seed: int = 0,
    val_fraction: float = 0.12,
    use_sartaj: bool = True,
    progress: bool = True,
    crop: dict | None = None,
) -> SplitBundle:
    """Build the training and validation sets described in the module docstring."""
    brisc_train = cached(shared, "brisc2025", "train", cache_dir, progress, crop)
    val_sel = stratified_split(brisc_train.labels(), val_fraction, seed)
    train = brisc_train.subset(~val_sel)
    val_cand = brisc_train.subset(val_sel)
    val_dup = _dup_mask(val_cand, [train])
    val = val_cand.subset(~val_dup)
    info: dict = {
        "recipe": "triage.recipe.standard_split",
        "seed": seed,
        "val_fraction": val_fraction,
        "near_duplicate_rule": "sha1 equal or 64x64 grey thumbnail cosine >= 0.99",
        "val_removed_as_duplicates_of_train": int(val_dup.sum()),
        "sources": {"brisc2025": {"train": len(train.samples), "val": len(val.samples)}},
    }
    if use_sartaj:
        extra = cached(shared, "sartaj_brain_tumor_classification", "train", cache_dir, progress, crop)
        protect = [val, cached(shared, "brisc2025", "test", cache_dir, progress)]
        protect.append(cached(shared, "sartaj_brain_tumor_classification", "test", cache_dir, progress))
        for name in ("navoneel_brain_mri_yes_no", "lgg_kaggle_3m_subset"):
            try:
                protect.append(cached(shared, name, None, cache_dir, progress))
            except DatasetError:
                log.warning("%s missing: cannot protect it from leakage", name)
        # Sartaj Training holds byte-identical copies of BRISC train files: keep one copy.
        already = set(train.sha1s)
        drop = _dup_mask(extra, protect) | np.array([s in already for s in extra.sha1s], bool)
        extra_kept = extra.subset(~drop)
        info["sources"]["sartaj_training"] = {
            "available": len(extra.samples),
            "kept": len(extra_kept.samples),
            "dropped_duplicates_of_val_or_test_or_brisc_train": int(drop.sum()),
        }
        train = concat([train, extra_kept])
    info["train_counts"] = train.counts()
    info["val_counts"] = val.counts()
    info["train_with_mask"] = (
        int(train.masks.reshape(len(train.masks), -1).any(1).sum()) if train.masks is not None else 0
    )
    info["train_sha1_digest"] = hashlib.sha1("".join(sorted(train.sha1s)).encode()).hexdigest()
    info["val_sha1_digest"] = hashlib.sha1("".join(sorted(val.sha1s)).encode()).hexdigest()
    return SplitBundle(train, val, info)


def concat(sets: list[CachedSet]) -> CachedSet:
    masks = None
    if all(s.masks is not None for s in sets):
        masks = np.concatenate([s.masks for s in sets])
    return CachedSet(
        samples=[x for s in sets for x in s.samples],
        images=np.concatenate([s.images for s in sets]),
        masks=masks,
        thumbs=np.concatenate([s.thumbs for s in sets]),
        sha1s=[x for s in sets for x in s.sha1s],
        rejected=[x for s in sets for x in s.rejected],
    )


def standardized(s: CachedSet, intensity_norm: str | None) -> CachedSet:
    """The set as a model with this ``intensity_norm`` sees it: every cached crop standardised
    (preprocess.standardize_intensity), or the set itself when the setting is None."""
    check_intensity_norm(intensity_norm)
    if not intensity_norm or not len(s.images):
        return s
    return dataclasses.replace(s, images=np.stack([standardize_intensity(im) for im in s.images]))


def write_split_file(folder: Path, bundle: SplitBundle) -> None:
    """splits.json beside the weights: the SHA-1 of every training and validation image."""
    data = {"train_sha1": sorted(bundle.train.sha1s), "val_sha1": sorted(bundle.val.sha1s)}
    (Path(folder) / "splits.json").write_text(json.dumps(data), encoding="utf-8")


def dedup_test_against_training(
    test: CachedSet, train_sha1: set[str], train_thumbs: np.ndarray
) -> tuple[CachedSet, int]:
    """Drop test images that duplicate (exact or near) any training image; return kept set and count."""
    hit = np.array([s in train_sha1 for s in test.sha1s], bool)
    hit |= near_duplicate_of(test.thumbs, train_thumbs)
    return test.subset(~hit), int(hit.sum())
