"""Training/evaluation data: manifests, folder layouts, de-duplication, splits and the crop cache.

One documented layout is understood everywhere: a ``manifest.csv`` with at least ``path`` and
``label`` (optional ``mask_path``, ``split``, ``patient_id``, ``sha1``), paths relative to the
manifest's folder — the format of every dataset in ``../shared/data``. A class-folder tree
(``glioma/ meningioma/ no_tumor/ pituitary/`` with aliases, optional ``masks/``) is converted
to the same records by :func:`scan_class_folders` (the rules of :mod:`triage.folders`).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from triage import atomic, folders
from triage.brain_check import is_blank
from triage.errors import DatasetError, InvalidScanError
from triage.io import read_mask_path, read_path
from triage.preprocess import CROP_VERSION, DEFAULT_CROP, LEGACY_CROP, crop_brain
from triage.records import normalize_label
from triage.transforms import square, square_mask

log = logging.getLogger(__name__)

# Near-duplicate rule used by the shared datasets' READMEs: 64x64 grey thumbnail, cosine >= 0.99.
NEAR_DUP_COSINE = 0.99
THUMB = 64


@dataclass(frozen=True)
class Sample:
    """One labelled image on disk. ``label`` is a class name or ``"tumor"`` (binary sets)."""

    path: Path
    label: str
    dataset: str
    split: str = ""
    mask_path: Path | None = None
    patient_id: str = ""
    sha1: str = ""


def load_manifest(dataset_dir: str | Path, name: str | None = None) -> list[Sample]:
    """Read ``manifest.csv`` of a dataset folder (:func:`triage.folders.manifest_rows`) into samples
    (labels normalised)."""
    root = Path(dataset_dir)
    mf = root / folders.MANIFEST
    if not mf.is_file():
        raise DatasetError(f"{root} has no manifest.csv")
    name = name or root.name
    out = []
    for row in folders.manifest_rows(mf):
        raw = row.get("label", "")
        label = normalize_label(raw) or ("tumor" if raw.lower() in {"yes", "tumor"} else None)
        if label is None:
            raise DatasetError(f"{mf}: unknown label {raw!r} for {row['path']}")
        mp = row.get("mask_path", "")
        out.append(
            Sample(
                path=folders.manifest_path(root, row["path"]),
                label=label,
                dataset=name,
                split=row.get("split", ""),
                mask_path=folders.manifest_path(root, mp) if mp else None,
                patient_id=row.get("patient_id", ""),
                sha1=row.get("sha1", ""),
            )
        )
    return out


def scan_class_folders(root: str | Path) -> tuple[list[Sample], list[str]]:
    """Walk a class-folder tree by the rules of :mod:`triage.folders` (junk, image files, masks paired by
    file stem, class and split from folder names). Returns samples and human-readable notes on skipped files."""
    root = Path(root)
    found = folders.scan_class_folders(root)
    samples = [
        Sample(path=f.path, label=f.label, dataset=root.name, split=f.split, mask_path=f.mask) for f in found.images
    ]
    return samples, found.skipped + found.unpaired_masks


def load_folder(folder: str | Path) -> tuple[list[Sample], list[str]]:
    """The samples of a dataset folder: its ``manifest.csv`` when it has one, else its class folders
    (:func:`scan_class_folders`); with notes on skipped files."""
    folder = Path(folder)
    if (folder / folders.MANIFEST).is_file():
        return load_manifest(folder), []
    return scan_class_folders(folder)


def file_sha1(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def thumbnail_vector(img: np.ndarray) -> np.ndarray:
    """uint8 (H, W) -> unit-norm float32 (4096,) thumbnail used for near-duplicate checks."""
    t = cv2.resize(img, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    n = np.linalg.norm(t)
    return t / n if n > 0 else t


def thumbnail_u8(img: np.ndarray) -> np.ndarray:
    """uint8 (H, W) -> the uint8 (64, 64) thumbnail :func:`thumbnail_vector` normalises (4 kB to keep)."""
    return cv2.resize(img, (THUMB, THUMB), interpolation=cv2.INTER_AREA)


def near_duplicate_of(
    query: np.ndarray, reference: np.ndarray, threshold: float = NEAR_DUP_COSINE, chunk: int = 2048
) -> np.ndarray:
    """For each row of ``query`` (N, D), True if any row of ``reference`` (M, D) has cosine >= threshold."""
    if len(query) == 0 or len(reference) == 0:
        return np.zeros(len(query), bool)
    hit = np.zeros(len(query), bool)
    ref = reference.T.copy()
    for i in range(0, len(query), chunk):
        hit[i : i + chunk] = (query[i : i + chunk] @ ref).max(axis=1) >= threshold
    return hit


def _pooled(vectors: np.ndarray, block: int = 8) -> np.ndarray:
    """(N, 64*64) thumbnails -> (N, (64/block)^2) sums of block x block pixels / block: a contraction
    (``|P(a - b)| <= |a - b|`` by Cauchy-Schwarz), so a near pair stays near in the small space."""
    n, k = len(vectors), THUMB // block
    pooled = vectors.reshape(n, k, block, k, block).sum(axis=(2, 4), dtype=np.float32) / float(block)
    return pooled.reshape(n, k * k)


def dedup_sources(
    vectors: np.ndarray, sha1s: list[str], threshold: float = NEAR_DUP_COSINE, chunk: int = 1024
) -> np.ndarray:
    """For each row, -1 when it is kept, else the index of the earlier kept row it duplicates
    (same sha1, or thumbnail cosine >= ``threshold``); the first of a group is kept.

    ``vectors``: unit-norm float (N, D) thumbnails (:func:`thumbnail_vector`), or raw uint8
    (N, 64, 64) thumbnails (:func:`thumbnail_u8`, normalised here). For 64 x 64 ones, pairs
    are first screened on 64-number block sums (a contraction: cosine >= t needs a block-sum
    distance <= sqrt(2 - 2t)), and only screened pairs are compared on all 4096 numbers, with
    the same result as comparing every pair. 20,000 images took 97 s and 2.35 GB when every pair
    was compared on 4096 numbers (issue 22, item 5); the screen costs 64 numbers a pair.
    """
    n = len(vectors)
    src = np.full(n, -1, np.int64)
    first: dict[str, int] = {}
    for i, s in enumerate(sha1s):
        if s and s in first:
            src[i] = first[s]
        else:
            first.setdefault(s, i)
    if n == 0:
        return src
    raw = np.asarray(vectors).reshape(n, -1)
    if raw.dtype == np.uint8:  # raw thumbnails (4 kB a row instead of 16): normalised a chunk at a time
        norms = np.concatenate(
            [np.linalg.norm(raw[a : a + chunk].astype(np.float32), axis=1) for a in range(0, n, chunk)]
        )
        norms[norms == 0] = 1.0

        def unit(idx: np.ndarray | slice) -> np.ndarray:
            return raw[idx].astype(np.float32) / norms[idx, None]
    else:
        raw = raw.astype(np.float32, copy=False)

        def unit(idx: np.ndarray | slice) -> np.ndarray:
            return raw[idx]

    screen = raw.shape[1] == THUMB * THUMB
    parts = [unit(slice(a, a + chunk)) for a in range(0, n, chunk)] if not screen else []
    small = np.concatenate([_pooled(unit(slice(a, a + chunk))) for a in range(0, n, chunk)] if screen else parts)
    # A second, finer screen (4x4 blocks, 256 numbers) before the full comparison.
    mid = np.concatenate([_pooled(unit(slice(a, a + chunk)), 4) for a in range(0, n, chunk)]) if screen else None
    sq = np.einsum("ij,ij->i", small, small)
    sq_mid = np.einsum("ij,ij->i", mid, mid) if mid is not None else None
    limit = 2.0 * (1.0 - threshold) + 1e-4  # squared distance bound, with float rounding room
    ref = np.ascontiguousarray(small.T)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        d2 = small[start:stop] @ ref  # in place: one chunk x N array
        d2 *= -2.0
        d2 += sq[None, :]
        d2 += sq[start:stop, None]
        for row, i in enumerate(range(start, stop)):
            if src[i] >= 0:
                continue  # a removed row removes nothing
            cand = np.flatnonzero(d2[row, i + 1 :] <= limit) + i + 1
            cand = cand[src[cand] < 0]
            if cand.size and mid is not None:
                cand = cand[sq_mid[cand] + sq_mid[i] - 2.0 * (mid[cand] @ mid[i]) <= limit]
            if cand.size:
                dup = cand[unit(cand) @ unit(slice(i, i + 1))[0] >= threshold]
                src[dup] = i
    return src


def dedup_groups(
    vectors: np.ndarray, sha1s: list[str], threshold: float = NEAR_DUP_COSINE, chunk: int = 1024
) -> np.ndarray:
    """Keep-mask that drops exact (sha1) and near duplicates inside one set, keeping the first
    (:func:`dedup_sources`; memory ``chunk x N``, never the ``N x N`` matrix)."""
    return dedup_sources(vectors, sha1s, threshold, chunk) < 0


def stratified_split(labels: list[str], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask selecting ``fraction`` of each label (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    sel = np.zeros(len(labels), bool)
    labels_arr = np.asarray(labels)
    for lab in sorted(set(labels)):
        idx = np.nonzero(labels_arr == lab)[0]
        rng.shuffle(idx)
        sel[idx[: round(fraction * len(idx))]] = True
    return sel


@dataclass
class CachedSet:
    """Pre-cropped, square, resized images (uint8 N x S x S), masks (bool or None) and thumbnails."""

    samples: list[Sample]
    images: np.ndarray
    masks: np.ndarray | None
    thumbs: np.ndarray
    sha1s: list[str]
    rejected: list[tuple[str, str]]

    def subset(self, keep: np.ndarray) -> CachedSet:
        idx = np.nonzero(keep)[0]
        return CachedSet(
            [self.samples[i] for i in idx],
            self.images[idx],
            None if self.masks is None else self.masks[idx],
            self.thumbs[idx],
            [self.sha1s[i] for i in idx],
            list(self.rejected),
        )

    def labels(self) -> list[str]:
        return [s.label for s in self.samples]

    def counts(self) -> dict[str, int]:
        return dict(Counter(self.labels()))


def read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Binary mask (threshold 128, as the BRISC README requires) of the image of ``shape``.

    Decoded by :func:`triage.io.read_mask_path` (the scans' allow-list and header size checks: a
    mask is attacker-controlled input too). Raises :class:`DatasetError` naming the mask and the
    reason; no other exception escapes.
    """
    path = Path(path)
    try:
        m = read_mask_path(path)
    except InvalidScanError as exc:
        raise DatasetError(f"mask {path.name}: {exc}") from exc
    if m.shape != tuple(shape):
        raise DatasetError(f"mask {path.name} is {m.shape[::-1]} but its image is {tuple(shape)[::-1]}")
    return m >= 128


def prepare_sample(
    img: np.ndarray, mask: np.ndarray | None, size: int, crop: dict | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Crop the brain exactly as inference does (``crop`` = the model card's crop settings), then
    stage 1 of :mod:`triage.transforms` (square, resize to ``size``)."""
    head = crop_brain(img, **(crop or DEFAULT_CROP))
    x0, y0, x1, y1 = head.bbox
    mout = None if mask is None else square_mask(mask[y0:y1, x0:x1], size)
    return square(head.image, size), mout


def build_cache(
    samples: list[Sample],
    size: int,
    cache_dir: Path | None = None,
    with_masks: bool = True,
    progress: bool = False,
    crop: dict | None = None,
) -> CachedSet:
    """Decode, crop and resize every sample once (cached as .npz keyed by samples and crop)."""
    crop = dict(crop or DEFAULT_CROP)
    # Legacy-crop caches keep the names they had before crops were part of the key.
    crop_key = "" if crop == LEGACY_CROP else f"|crop{CROP_VERSION}:{sorted(crop.items())}"
    key = hashlib.sha1(
        ("|".join(f"{s.path}:{s.label}:{s.mask_path}" for s in samples) + f"|{size}|{with_masks}|v2{crop_key}").encode()
    ).hexdigest()[:16]
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"cache_{size}_{key}.npz"
        if cache_file.exists():
            z = np.load(cache_file, allow_pickle=False)
            keep = z["keep"]
            kept = [s for s, k in zip(samples, keep) if k]
            rejected = [(str(s.path), "unreadable") for s, k in zip(samples, keep) if not k]
            masks = z["masks"] if with_masks and z["masks"].size else None
            return CachedSet(kept, z["images"], masks, z["thumbs"], list(z["sha1s"]), rejected)
    images, masks, thumbs, sha1s, keep, rejected = [], [], [], [], [], []
    it = samples
    if progress:
        from tqdm import tqdm

        it = tqdm(samples, desc=f"caching {size}px", unit="img")
    for s in it:
        try:
            scan = read_path(s.path)[0]
            m = read_mask(s.mask_path, scan.shape) if (with_masks and s.mask_path) else None
        except (InvalidScanError, DatasetError, OSError) as exc:
            rejected.append((str(s.path), str(exc)))
            keep.append(False)
            continue
        if is_blank(scan.pixels):  # an empty export teaches nothing and skews the class balance
            rejected.append((str(s.path), "blank image"))
            keep.append(False)
            continue
        img, mk = prepare_sample(scan.pixels, m, size, crop)
        images.append(img)
        masks.append(mk if mk is not None else np.zeros((size, size), bool))
        thumbs.append(thumbnail_vector(scan.pixels))
        sha1s.append(s.sha1 or file_sha1(s.path))
        keep.append(True)
    kept = [s for s, k in zip(samples, keep) if k]
    images_a = np.stack(images) if images else np.zeros((0, size, size), np.uint8)
    masks_a = np.stack(masks) if (masks and with_masks) else np.zeros((0, size, size), bool)
    thumbs_a = np.stack(thumbs) if thumbs else np.zeros((0, THUMB * THUMB), np.float32)
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        # Write to a private temporary name and rename: two trainings started together must
        # never read each other's half-written cache.
        with atomic.atomic_path(cache_file, suffix=".tmp.npz") as tmp:  # .npz: np.savez would append it
            np.savez(
                tmp, images=images_a, masks=masks_a, thumbs=thumbs_a, sha1s=np.asarray(sha1s), keep=np.asarray(keep)
            )
    return CachedSet(kept, images_a, masks_a if with_masks else None, thumbs_a, sha1s, rejected)
