"""The multi-source training recipe: every shared dataset, split by patient, site or subtype.

Issue 23 asks for models that hold up on other hospitals' scans, so the recipe trains on every
source in ``../shared/data`` and keeps honest held-out parts of each for testing:

=====================  ==========================================  =====================================
source                 held out for testing                        validation (model selection, T, OOD)
=====================  ==========================================  =====================================
brisc2025              its ``test`` split                          stratified 12% of ``train``
sartaj (Training)      Sartaj ``Testing``                          none (BRISC-like)
tcga_lgg_sites         whole sites CS and FG (29 patients)         5 DU patients
brats2015_hgg6         patients 1 and 2 (the source's test folder)  patient 3
feltrin_44c_tumours    six whole subtypes (never a random split)   one whole subtype (Papiloma)
navoneel, LGG subset   the whole set                               none
=====================  ==========================================  =====================================

Feltrin's ``other_tumor`` and ``non_neoplastic`` images are lesions that are none of the four
classes; they train with the label ``tumor`` ("any class but no_tumor", see
:func:`label_set`), so the classifier learns that an unfamiliar mass is never ``no_tumor``.
Near-duplicates of any test image are dropped from training and validation, as in
:mod:`triage.lifecycle.recipe`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from triage.datasets import CachedSet, Sample, build_cache, near_duplicate_of, stratified_split
from triage.errors import DatasetError
from triage.folders import MANIFEST, manifest_path, manifest_rows
from triage.lifecycle.recipe import CACHE_SIZE, SplitBundle, cached, concat
from triage.records import CLASSES

log = logging.getLogger(__name__)

RECIPE = "triage.sources.multi_source_split"
LGG = "tcga_lgg_sites"
BRATS = "brats2015_hgg6"
FELTRIN = "feltrin_44c_tumours"
LGG_TEST_SITES = ("CS", "FG")
LGG_VAL_PATIENTS = 5
BRATS_TEST_PATIENTS = ("brats2013_pat0001", "brats2013_pat0002")
BRATS_VAL_PATIENTS = ("brats2013_pat0003",)
# Held out whole: two glioma subtypes, three rarer tumour types and one non-neoplastic lesion.
FELTRIN_TEST_SUBTYPES = ("Ependimoma", "Ganglioglioma", "Schwannoma", "Meduloblastoma", "Germinoma", "Granuloma")
FELTRIN_VAL_SUBTYPES = ("Papiloma",)
# Share of each training batch drawn from each source (inside a source, classes are balanced).
CLASSIFIER_SHARES = {"brisc2025": 0.33, "sartaj": 0.1, LGG: 0.2, BRATS: 0.1, FELTRIN: 0.27}
SEGMENTER_SHARES = {"brisc2025": 0.5, LGG: 0.3, BRATS: 0.2}
# Feltrin labels outside the four classes: a lesion, class unknown -> "tumor" (any tumour class).
FELTRIN_LABELS = {"glioma": "glioma", "meningioma": "meningioma", "other_tumor": "tumor", "non_neoplastic": "tumor"}


def label_set(label: str) -> tuple[int, ...]:
    """Class indexes a sample's label allows: one class, or every tumour class for ``tumor``."""
    if label == "tumor":
        return tuple(i for i, c in enumerate(CLASSES) if c != "no_tumor")
    return (CLASSES.index(label),)


def label_matrix(labels: list[str]) -> np.ndarray:
    """(N, C) bool: which classes each label allows (the target of the partial-label loss)."""
    out = np.zeros((len(labels), len(CLASSES)), bool)
    for i, lab in enumerate(labels):
        out[i, list(label_set(lab))] = True
    return out


@dataclass(frozen=True)
class Row:
    """A manifest row with the grouping columns the splits need."""

    sample: Sample
    group: str  # patient (LGG, BraTS) or subtype (Feltrin)
    site: str = ""
    sequence: str = ""


def read_rows(shared: Path, name: str) -> list[Row]:
    """Manifest rows of an added dataset with their patient / site / subtype / sequence."""
    root = Path(shared) / name
    mf = root / MANIFEST
    if not mf.is_file():
        raise DatasetError(f"dataset {name} not found under {shared}")
    out = []
    for row in manifest_rows(mf):
        raw = row["label"]
        label = FELTRIN_LABELS.get(raw, raw) if name == FELTRIN else raw
        if label not in CLASSES and label != "tumor":
            raise DatasetError(f"{mf}: unknown label {raw!r}")
        mp = row.get("mask_path", "")
        sample = Sample(
            path=manifest_path(root, row["path"]),
            label=label,
            dataset=name,
            mask_path=manifest_path(root, mp) if mp else None,
            patient_id=row.get("patient_id", ""),
            sha1=row.get("sha1", ""),
        )
        group = row.get("subtype") or sample.patient_id
        out.append(Row(sample, group, row.get("site", ""), row.get("sequence", "")))
    return out


@dataclass
class SourceSplit:
    """Train / validation / test rows of one source, by group."""

    train: list[Row] = field(default_factory=list)
    val: list[Row] = field(default_factory=list)
    test: list[Row] = field(default_factory=list)


def split_lgg(rows: list[Row], seed: int = 0) -> SourceSplit:
    """Whole sites CS and FG for testing; ``LGG_VAL_PATIENTS`` patients of the rest for validation."""
    train_pool = sorted({r.group for r in rows if r.site not in LGG_TEST_SITES})
    rng = np.random.default_rng(seed)
    val_patients = set(rng.choice(train_pool, size=LGG_VAL_PATIENTS, replace=False).tolist())
    out = SourceSplit()
    for r in rows:
        part = out.test if r.site in LGG_TEST_SITES else (out.val if r.group in val_patients else out.train)
        part.append(r)
    return out


def split_by_group(rows: list[Row], test: tuple[str, ...], val: tuple[str, ...]) -> SourceSplit:
    """Rows whose group is in ``test`` / ``val`` go there, the rest train (BraTS patients, Feltrin subtypes)."""
    out = SourceSplit()
    for r in rows:
        (out.test if r.group in test else out.val if r.group in val else out.train).append(r)
    return out


def source_splits(shared: Path, seed: int = 0) -> dict[str, SourceSplit]:
    """The split of every added source (LGG sites, BraTS, Feltrin)."""
    return {
        LGG: split_lgg(read_rows(shared, LGG), seed),
        BRATS: split_by_group(read_rows(shared, BRATS), BRATS_TEST_PATIENTS, BRATS_VAL_PATIENTS),
        FELTRIN: split_by_group(read_rows(shared, FELTRIN), FELTRIN_TEST_SUBTYPES, FELTRIN_VAL_SUBTYPES),
    }


def cache_rows(rows: list[Row], cache_dir: Path, progress: bool, crop: dict | None) -> CachedSet:
    """Decoded, cropped crops of manifest rows (the shared crop cache)."""
    return build_cache([r.sample for r in rows], CACHE_SIZE, cache_dir, with_masks=True, progress=progress, crop=crop)


def _drop_dups(s: CachedSet, protect: list[CachedSet]) -> tuple[CachedSet, int]:
    hit = np.zeros(len(s.samples), bool)
    for ref in protect:
        ref_sha = set(ref.sha1s)
        hit |= np.array([x in ref_sha for x in s.sha1s], bool)
        hit |= near_duplicate_of(s.thumbs, ref.thumbs)
    return s.subset(~hit), int(hit.sum())


@dataclass
class MultiSourceBundle(SplitBundle):
    """A :class:`SplitBundle` whose images know their source (for balanced sampling)."""

    train_sources: list[str] = field(default_factory=list)
    val_sources: list[str] = field(default_factory=list)


def _source_name(s: Sample) -> str:
    return "sartaj" if s.dataset.startswith("sartaj") else s.dataset


def multi_source_split(
    shared: Path,
    cache_dir: Path,
    task: str = "classifier",
    seed: int = 0,
    progress: bool = True,
    crop: dict | None = None,
) -> MultiSourceBundle:
    """Training and validation sets of every source, as the module docstring lays out.

    ``task="segmenter"`` keeps only images with a mask or of tumour-free slices, and leaves out
    Sartaj and Feltrin (no masks).
    """
    shared = Path(shared)
    brisc_train = cached(shared, "brisc2025", "train", cache_dir, progress, crop)
    val_sel = stratified_split(brisc_train.labels(), 0.12, seed)
    b_train, b_val = brisc_train.subset(~val_sel), brisc_train.subset(val_sel)
    b_val, _ = _drop_dups(b_val, [b_train])
    splits = source_splits(shared, seed)
    added = {
        name: {part: cache_rows(getattr(sp, part), cache_dir, progress, crop) for part in ("train", "val", "test")}
        for name, sp in splits.items()
    }
    protect = [
        cached(shared, "brisc2025", "test", cache_dir, progress),
        cached(shared, "sartaj_brain_tumor_classification", "test", cache_dir, progress),
        *[added[name]["test"] for name in added],
    ]
    for name in ("navoneel_brain_mri_yes_no", "lgg_kaggle_3m_subset"):
        try:
            protect.append(cached(shared, name, None, cache_dir, progress))
        except DatasetError:
            log.warning("%s missing: cannot protect it from leakage", name)
    trains, vals = [b_train], [b_val]
    info: dict = {
        "recipe": RECIPE,
        "seed": seed,
        "task": task,
        "near_duplicate_rule": "sha1 equal or 64x64 grey thumbnail cosine >= 0.99",
        "held_out": {
            "brisc2025": "test split",
            "sartaj": "Testing",
            LGG: f"sites {', '.join(LGG_TEST_SITES)}",
            BRATS: list(BRATS_TEST_PATIENTS),
            FELTRIN: list(FELTRIN_TEST_SUBTYPES),
            "navoneel_brain_mri_yes_no": "all",
            "lgg_kaggle_3m_subset": "all",
        },
        "validation": {
            "brisc2025": "stratified 12% of train",
            LGG: f"{LGG_VAL_PATIENTS} patients",
            BRATS: list(BRATS_VAL_PATIENTS),
            FELTRIN: list(FELTRIN_VAL_SUBTYPES),
        },
        "sources": {},
    }
    names = ["sartaj", LGG, BRATS, FELTRIN] if task == "classifier" else [LGG, BRATS]
    for name in names:
        if name == "sartaj":
            extra = cached(shared, "sartaj_brain_tumor_classification", "train", cache_dir, progress, crop)
            already = set(b_train.sha1s) | set(b_val.sha1s)
            extra = extra.subset(np.array([s not in already for s in extra.sha1s], bool))
            tr, n_drop = _drop_dups(extra, protect + [b_val])
            va = None
        else:
            tr, n_drop = _drop_dups(added[name]["train"], protect)
            va, _ = _drop_dups(added[name]["val"], protect)
        trains.append(tr)
        if va is not None and len(va.samples):
            vals.append(va)
        info["sources"][name] = {
            "train": len(tr.samples),
            "val": 0 if va is None else len(va.samples),
            "dropped_duplicates_of_test": n_drop,
        }
    info["sources"]["brisc2025"] = {"train": len(b_train.samples), "val": len(b_val.samples)}
    train, val = concat(trains), concat(vals)
    if task == "segmenter":
        train, val = segmentation_subset(train), segmentation_subset(val)
    info["train_counts"] = train.counts()
    info["val_counts"] = val.counts()
    info["train_sha1_digest"] = hashlib.sha1("".join(sorted(train.sha1s)).encode()).hexdigest()
    info["val_sha1_digest"] = hashlib.sha1("".join(sorted(val.sha1s)).encode()).hexdigest()
    return MultiSourceBundle(
        train, val, info, [_source_name(s) for s in train.samples], [_source_name(s) for s in val.samples]
    )


def segmentation_subset(s: CachedSet) -> CachedSet:
    """Images usable for segmentation: those with a mask, plus tumour-free ones (empty mask)."""
    keep = np.array([(x.mask_path is not None) or x.label == "no_tumor" for x in s.samples], bool)
    return s.subset(keep)


def balanced_weights(sources: list[str], labels: list[str], shares: dict[str, float]) -> np.ndarray:
    """Sampling weight per image: ``shares[source]`` split evenly over that source's labels.

    Without it BRISC (contrast T1) would fill most batches, and a class that one source holds
    alone would carry that source's look as a shortcut.
    """
    src, lab = np.asarray(sources), np.asarray(labels)
    w = np.zeros(len(src), np.float64)
    present = {s for s in shares if (src == s).any()}
    total = sum(shares[s] for s in present)
    for s in present:
        in_src = src == s
        classes = sorted(set(lab[in_src].tolist()))
        for c in classes:
            sel = in_src & (lab == c)
            w[sel] = shares[s] / total / len(classes) / sel.sum()
    return w


# Licence of each training source as its README in ../shared/data states it. Several forbid
# commercial use; a model trained on them inherits that, and its card and the Model page say so.
SOURCE_LICENCES: dict[str, dict] = {
    "brisc2025": {"licence": "CC BY 4.0", "commercial_use": True},
    "sartaj": {"licence": "CC0 (per the Kaggle listing, quoted by third parties)", "commercial_use": True},
    LGG: {
        "licence": "TCIA data-usage policy; Kaggle page believed CC BY-NC-SA 4.0 (not verified offline)",
        "commercial_use": False,
    },
    BRATS: {"licence": "CC BY-NC-SA 3.0 Switzerland", "commercial_use": False},
    FELTRIN: {
        "licence": "none stated; Radiopaedia case images (CC BY-NC-SA): non-commercial research only",
        "commercial_use": False,
    },
}


def training_sources(info: dict) -> list[dict]:
    """The card's list of training sources: name, images used and licence (from the split info)."""
    out = []
    for name, counts in (info.get("sources") or {}).items():
        key = "sartaj" if name.startswith("sartaj") else name
        lic = SOURCE_LICENCES.get(key, {"licence": "unknown", "commercial_use": False})
        n = counts.get("train", counts.get("kept", 0)) if isinstance(counts, dict) else 0
        out.append({"source": key, "train_images": int(n), **lic})
    return out


def non_commercial(sources: list[dict]) -> bool:
    """True when any training source forbids commercial use."""
    return any(not s.get("commercial_use", False) for s in sources)
