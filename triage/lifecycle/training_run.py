"""One function per training run, shared by the CLI and the retraining page's background process.

``data`` is either the shared data folder (``../shared/data``: the standard leakage-free
recipe of :mod:`triage.lifecycle.recipe`) or one dataset folder (a ``manifest.csv`` or class folders),
which is de-duplicated and split stratified 85/15 here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from triage.config import get_settings
from triage.datasets import (
    CachedSet,
    build_cache,
    dedup_groups,
    load_folder,
    near_duplicate_of,
    stratified_split,
)
from triage.errors import DatasetError
from triage.lifecycle.recipe import (
    CACHE_SIZE,
    SplitBundle,
    standard_split,
    standardized,
    write_split_file,
)
from triage.lifecycle.train import train_classifier, train_segmenter
from triage.lifecycle.train_config import TrainConfig

log = logging.getLogger(__name__)

MIN_IMAGES_PER_CLASS = 5


def is_shared_root(path: Path) -> bool:
    return (Path(path) / "brisc2025" / "manifest.csv").is_file()


def folder_split(
    data: Path,
    cache_dir: Path,
    seed: int = 0,
    val_fraction: float = 0.15,
    progress: bool = True,
    crop: dict | None = None,
) -> SplitBundle:
    """De-duplicate and split one dataset folder (manifest.csv or class folders)."""
    data = Path(data)
    samples, notes = load_folder(data)
    samples = [s for s in samples if s.label != "tumor"]
    if not samples:
        raise DatasetError(f"no labelled images found in {data}")
    cache = build_cache(samples, CACHE_SIZE, cache_dir, with_masks=True, progress=progress, crop=crop)
    keep = dedup_groups(cache.thumbs, cache.sha1s)
    removed = int((~keep).sum())
    cache = cache.subset(keep)
    counts = cache.counts()
    if len(counts) < 2:
        raise DatasetError(f"only one class present ({', '.join(counts)}); at least two are needed")
    small = {k: v for k, v in counts.items() if v < MIN_IMAGES_PER_CLASS}
    if small:
        raise DatasetError(f"too few images for {small}; at least {MIN_IMAGES_PER_CLASS} per class are needed")
    val_sel = stratified_split(cache.labels(), val_fraction, seed)
    train, val = cache.subset(~val_sel), cache.subset(val_sel)
    dup = near_duplicate_of(val.thumbs, train.thumbs)
    val = val.subset(~dup)
    info = {
        "recipe": "triage.training_run.folder_split",
        "source": str(data),
        "seed": seed,
        "val_fraction": val_fraction,
        "duplicates_removed": removed,
        "val_removed_as_duplicates_of_train": int(dup.sum()),
        "rejected": cache.rejected[:50],
        "skipped": notes[:50],
        "train_counts": train.counts(),
        "val_counts": val.counts(),
    }
    return SplitBundle(train, val, info)


def _segmentation_subset(s: CachedSet) -> CachedSet:
    """Images usable for segmentation: those with a mask, plus tumor-free ones (empty mask)."""
    keep = np.array([(x.mask_path is not None) or x.label == "no_tumor" for x in s.samples], bool)
    return s.subset(keep)


def _limit(s: CachedSet, n: int | None, seed: int) -> CachedSet:
    if n is None or len(s.samples) <= n:
        return s
    sel = stratified_split(s.labels(), n / len(s.samples), seed)
    return s.subset(sel)


# Settings a fine-tune takes from its parent's card unless overridden: the augmentation the parent
# learned with, and the intensity standardisation its weights expect.
INHERITED_SETTINGS = ("sequence_aug", "sequence_aug_no_tumor", "enhancement_aug", "intensity_norm")


def _inherit_from_parent(cfg: TrainConfig, weights_dir: Path, overrides: dict) -> None:
    """A fine-tune keeps the parent's input size and brain crop unless told otherwise: the quick
    preset's 128 px would otherwise retrain a 160 px model at another scale (measured: validation
    accuracy 0.960 -> 0.917 for a quick fine-tune of classifier v2 at 128 px). It also keeps the
    parent's cross-sequence and enhancement augmentation: the preset's uniform remap would bring
    back the "looks like T2 -> no tumor" shortcut that v3 and v4 were trained away from."""
    from triage.models import read_card

    parent = read_card(weights_dir, cfg.task, cfg.init_from)
    if "input_size" not in overrides and parent.input_size:
        cfg.input_size = parent.input_size
    if "crop" not in overrides:
        cfg.crop = dict(parent.crop)
    parent_cfg = parent.train_config
    for key in INHERITED_SETTINGS:
        if key not in overrides and key in parent_cfg:
            setattr(cfg, key, parent_cfg[key])


def run_training(
    task: str,
    data: Path,
    out: Path,
    preset: str = "full",
    run_dir: Path | None = None,
    cache_dir: Path | None = None,
    weights_dir: Path | None = None,
    init_from: str | None = None,
    progress: bool = True,
    **overrides: object,
) -> Path:
    """Prepare data, train ``task`` and write the model version folder ``out``. Returns ``out``.

    ``run_dir`` / ``cache_dir`` default to the settings' folders (``Settings.run_dir``, ``Settings.cache_dir``)."""
    out = Path(out)
    run_dir = Path(run_dir) if run_dir else get_settings().run_dir(task, out.name)
    cache_dir = Path(cache_dir) if cache_dir else get_settings().cache_dir
    cfg = TrainConfig.from_preset(task, preset, init_from=init_from, **overrides)
    if init_from and weights_dir is not None:
        _inherit_from_parent(cfg, Path(weights_dir), overrides)
        cfg.check()
    sample_weights = val_sources = None
    if is_shared_root(data) and cfg.recipe == "multi_source":
        from triage.lifecycle.sources import CLASSIFIER_SHARES, SEGMENTER_SHARES, balanced_weights, multi_source_split

        bundle = multi_source_split(Path(data), cache_dir, task=task, seed=cfg.seed, progress=progress, crop=cfg.crop)
        shares = CLASSIFIER_SHARES if task == "classifier" else SEGMENTER_SHARES
        if cfg.source_shares:
            unknown = set(cfg.source_shares) - set(shares)
            if unknown:
                raise ValueError(f"source_shares names unknown sources {sorted(unknown)}; known: {sorted(shares)}")
            shares = {**shares, **cfg.source_shares}
        sample_weights = balanced_weights(bundle.train_sources, bundle.train.labels(), shares)
        val_sources = bundle.val_sources
    elif is_shared_root(data):
        bundle = standard_split(
            Path(data), cache_dir, seed=cfg.seed, use_sartaj=(task == "classifier"), progress=progress, crop=cfg.crop
        )
    else:
        bundle = folder_split(Path(data), cache_dir, seed=cfg.seed, progress=progress, crop=cfg.crop)
    train, val = bundle.train, bundle.val
    if task == "segmenter" and sample_weights is None:
        train, val = _segmentation_subset(train), _segmentation_subset(val)
        if train.masks is None or not train.masks.any():
            raise DatasetError("no tumor masks found: the segmenter cannot be trained on this data")
    if sample_weights is None:  # the multi-source recipe samples epochs by weight instead
        train = _limit(train, cfg.max_train_images, cfg.seed)
        val = _limit(val, None if cfg.max_train_images is None else max(200, cfg.max_train_images // 4), cfg.seed)
    train, val = standardized(train, cfg.intensity_norm), standardized(val, cfg.intensity_norm)
    info = dict(bundle.info)
    info.update({"used_train": len(train.samples), "used_val": len(val.samples)})
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "data_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    log.info("training %s on %d images (val %d)", task, len(train.samples), len(val.samples))
    trainer = train_classifier if task == "classifier" else train_segmenter
    folder = trainer(
        cfg,
        train,
        val,
        run_dir,
        out,
        info,
        weights_dir=weights_dir,
        progress=progress,
        sample_weights=sample_weights,
        val_sources=val_sources,
    )
    write_split_file(folder, SplitBundle(train, val, info))
    return folder
