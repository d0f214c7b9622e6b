"""Cheap image-level checks that reject inputs which cannot be a brain-MRI slice.

These run before the models and only catch the unambiguous cases (blank, pure noise, colour
photographs, no head-shaped region). Subtler out-of-distribution inputs are caught by the
classifier's Mahalanobis score (see :mod:`triage.classify`) and, when extreme, rejected by
the service.
"""

from __future__ import annotations

import numpy as np

from triage.records import BrainCrop, Scan

MIN_DYNAMIC_RANGE = 16
MIN_NEIGHBOUR_CORRELATION = 0.35
# Multi-sequence MRI stored as RGB (e.g. TCGA-LGG pre/FLAIR/post) reaches ~65, so only vivid
# colour is rejected outright. Moderate colour is rejected only without the dark background
# that surrounds a head: of ~9,500 shared-data slices none has colourfulness > 30 with a
# border that is less than half dark, while the skimage photos (cat, coffee, rocket...) do.
MAX_COLORFULNESS = 85.0
PHOTO_COLORFULNESS = 30.0
MIN_DARK_BORDER = 0.5


# A binary image (a tumour mask uploaded as a scan, a drawing) has almost no mid-tones. Share of
# pixels between 10% and 90% of the 0.5-99.5 percentile range, in 300-slice samples of every
# shared source: masks (BRISC, BraTS, LGG) at most 0.0018; non-blank slices at least 0.0095 (an
# end slice of tcga_lgg_sites), BRISC/Sartaj/Feltrin/navoneel at least 0.20.
MIN_MIDTONE_SHARE = 0.005


# The image statistics below look at a regular subsample of at most about this many pixels: on a
# 40 MP upload np.percentile and np.corrcoef made float64 copies and peaked at 1.5 GB (issue 22).
# Images up to this size (every real slice) are measured on every pixel, exactly as before.
SAMPLE_PIXELS = 4_000_000


def _sample(img: np.ndarray) -> np.ndarray:
    """A strided view of ``img`` with at most about :data:`SAMPLE_PIXELS` pixels (``img`` itself if smaller)."""
    if img.size <= SAMPLE_PIXELS:
        return img
    step = int(np.ceil(np.sqrt(img.size / SAMPLE_PIXELS)))
    return img[::step, ::step]


def _rows(img: np.ndarray) -> np.ndarray:
    """Whole rows, every k-th, with at most about :data:`SAMPLE_PIXELS` pixels (neighbours stay neighbours)."""
    if img.size <= SAMPLE_PIXELS:
        return img
    return img[:: int(np.ceil(img.size / SAMPLE_PIXELS))]


def midtone_share(img: np.ndarray) -> float:
    """Share of pixels that are neither near black nor near white (after a robust stretch)."""
    img = _sample(img)
    lo, hi = np.percentile(img, [0.5, 99.5])
    x = (img.astype(np.float32) - lo) / max(1.0, float(hi - lo))
    return float(((x > 0.1) & (x < 0.9)).mean())


def dark_border_fraction(img: np.ndarray) -> float:
    """Fraction of the outer 4% frame darker than 12% of the 99th-percentile intensity."""
    h, w = img.shape
    b = max(2, int(0.04 * min(h, w)))
    ring = np.concatenate([img[:b].ravel(), img[-b:].ravel(), img[:, :b].ravel(), img[:, -b:].ravel()])
    return float((ring < 0.12 * max(1.0, float(np.percentile(_sample(img), 99)))).mean())


def neighbour_correlation(img: np.ndarray) -> float:
    """Correlation of horizontally adjacent pixels: ~1 for real images, ~0 for white noise."""
    img = _rows(img)
    a = img[:, :-1].astype(np.float32).ravel()
    b = img[:, 1:].astype(np.float32).ravel()
    if a.std() == 0 or b.std() == 0:
        return 1.0
    return float(np.corrcoef(a, b)[0, 1])


# BodyPartExamined values (DICOM CS, upper case) that a brain MRI may carry; anything else named is refused.
HEAD_BODY_PARTS = ("HEAD", "BRAIN", "SKULL", "CEREBRUM", "CEREBELLUM", "HEADNECK", "HEAD NECK", "HEAD_NECK")
MODALITY_TEXT = {
    "CT": "CT (computed tomography)",
    "CR": "a radiograph",
    "DX": "a radiograph",
    "US": "ultrasound",
    "PT": "PET",
    "NM": "nuclear medicine",
    "MG": "mammography",
    "XA": "angiography",
    "OT": "'other'",
}


def dicom_reason(meta: dict) -> str | None:
    """Why a DICOM file's own tags say it is not a brain MRI (None when they allow it, or are absent).

    Tags are the file's statement of what it is: a CT of the spine is refused on its Modality before
    any pixel is looked at (pydicom's CT_small.dcm used to come back "No tumor 100%")."""
    modality = str(meta.get("Modality") or "").strip().upper()
    if modality and modality != "MR":
        return f"not a brain MRI: the DICOM Modality is {MODALITY_TEXT.get(modality, modality)}; only MR is analysed"
    part = str(meta.get("BodyPartExamined") or "").strip().upper()
    if part and not any(p in part for p in HEAD_BODY_PARTS):
        return f"not a brain MRI: the DICOM BodyPartExamined is {part}; only head / brain studies are analysed"
    return None


BLANK_TOLERANCE = 2  # grey levels: a constant image stays within this after JPEG ringing


def is_blank(img: np.ndarray, tolerance: int = BLANK_TOLERANCE) -> bool:
    """True when every pixel has (almost) the same value: an empty export, nothing to learn from."""
    img = np.asarray(img)
    return img.size == 0 or int(img.max()) - int(img.min()) <= tolerance


# An MRI slice is a head on a dark background. Below this share of dark border pixels a greyscale
# image is kept but flagged `ood` for review: in 400-slice samples of each shared source it
# concerns 0-0.75% of BRISC, Sartaj, Feltrin, BraTS and LGG-subset slices and 5.5% of navoneel,
# 7.5% of tcga_lgg_sites (bright frames), and every skimage greyscale photo (camera 0.13, the
# rest <= 0.02). The multi-source classifier's feature-space OOD score does not separate those
# photos from MRI (grass 652, gravel 957 against a threshold of 2127), so this is the check that does.
ATYPICAL_DARK_BORDER = 0.3


def atypical_reason(scan: Scan) -> str | None:
    """Why a slice that passed :func:`not_brain_reason` still does not look like an MRI slice
    (kept, flagged ``ood`` for review), or None."""
    if dark_border_fraction(scan.pixels) < ATYPICAL_DARK_BORDER:
        return "no dark background around the head"
    return None


def not_brain_reason(scan: Scan, crop: BrainCrop) -> str | None:
    """A sentence saying why ``scan`` is not a brain-MRI slice, or None if it may be one."""
    if scan.source_format == "dicom":
        reason = dicom_reason(scan.meta)
        if reason:
            return reason
    img = scan.pixels
    lo, hi = np.percentile(_sample(img), [1, 99])
    if hi - lo < MIN_DYNAMIC_RANGE:
        return "not a brain MRI: the image is blank or almost uniform"
    if neighbour_correlation(img) < MIN_NEIGHBOUR_CORRELATION:
        return "not a brain MRI: the image looks like random noise"
    if midtone_share(img) < MIN_MIDTONE_SHARE:
        return "not a brain MRI: almost every pixel is black or white (a mask or a drawing, not a scan)"
    colorfulness = float(scan.meta.get("colorfulness", 0.0) or 0.0)
    if colorfulness > MAX_COLORFULNESS:
        return f"not a brain MRI: a colour image (colourfulness {colorfulness:.0f}); MRI slices are greyscale"
    if colorfulness > PHOTO_COLORFULNESS and dark_border_fraction(img) < MIN_DARK_BORDER:
        return (
            f"not a brain MRI: a colour photograph (colourfulness {colorfulness:.0f}, no dark background around a head)"
        )
    if not crop.found:
        return "not a brain MRI: no head region found on a dark background"
    return None
