"""Brain crop (largest bright region + nearby scalp pieces, extreme points, margin) and
model-input preparation.

All arrays are numpy; tensors are made in the model modules.
"""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np

from triage.io import to_uint8
from triage.records import BrainCrop

# Bump when the crop changes, so caches of cropped training images can be keyed on it.
# v2: scalp/skull fragments next to the largest component are part of the head (v1 cut them off).
CROP_VERSION = 2
# How a model's card describes its crop. Models trained before the card recorded a crop
# (v1 weights) used v1: only the largest bright region (no nearby scalp pieces); triage.card applies it.
DEFAULT_CROP = {"margin": 0.04, "join": 0.03}
LEGACY_CROP = {"margin": 0.04, "join": 0.0}


def _as_grey_u8(img: np.ndarray) -> np.ndarray:
    """Accept what callers actually pass (uint8 grey, RGB, 16-bit, float) and return uint8 (H, W)."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] in (3, 4):
        img = img[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim != 2:
        raise ValueError(f"expected a 2D greyscale image, got shape {img.shape}")
    if img.dtype != np.uint8:
        img = to_uint8(img.astype(np.float32) if img.dtype == bool else img)
    return np.ascontiguousarray(img)


# Head finding runs on at most this many pixels per side (bigger scans are shrunk first), so
# a 40 MP upload costs about as much as a 1 MP one.
MAX_WORK_SIDE = 1024


def find_head_mask(img: np.ndarray, join: float = 0.03) -> np.ndarray:
    """uint8 (H, W) -> bool mask of the head: the largest bright connected region plus the
    bright regions within ``join`` x the image side of it.

    Threshold is relative (half of Otsu, clamped) so dark and bright acquisitions both work;
    opening removes text annotations and thin lines before components are taken. On T1 the
    bright scalp is often separated from the brain by dark bone and CSF: the nearby pieces
    keep it in the head, while annotations in the corners stay out (an annotation closer
    than ``join`` to the head counts as head). Scans larger than ``MAX_WORK_SIDE`` are
    analysed at reduced size and the mask is scaled back.
    """
    img = _as_grey_u8(img)
    h, w = img.shape
    if img.size == 0:
        return np.zeros(img.shape, bool)
    factor = max(h, w) / MAX_WORK_SIDE
    if factor > 1:
        small = cv2.resize(img, (max(1, round(w / factor)), max(1, round(h / factor))), interpolation=cv2.INTER_AREA)
        mask = _head_mask(small, join).astype(np.uint8)
        return cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    return _head_mask(img, join)


def _head_mask(img: np.ndarray, join: float) -> np.ndarray:
    blur = cv2.GaussianBlur(img, (5, 5), 0)
    otsu, _ = cv2.threshold(blur, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    thr = float(np.clip(otsu * 0.5, 8, 60))
    binary = (blur > thr).astype(np.uint8)
    k = max(3, round(min(img.shape) / 100) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, kernel, iterations=2)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n <= 1:
        return np.zeros(img.shape, bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    mask = labels == largest
    if n > 2 and join > 0:
        d = max(2, round(join * min(img.shape)))
        # Euclidean distance to the largest region (linear time, unlike a d-sized dilation).
        dist = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        ids = np.unique(labels[dist <= d])
        ids = ids[(ids != 0) & (ids != largest)]
        if ids.size:
            mask |= np.isin(labels, ids)
    return mask


# Head-intensity standardisation: each image's head percentiles are mapped piecewise-linearly to
# these values (the typical BRISC training crop). Sources differ in brightness and contrast, and in
# BRISC the classes differ too (meningioma slices are brighter than glioma slices), so without it
# a brighter hospital's glioma looks like a BRISC meningioma (Sartaj Testing: 45 of 98 gliomas).
INTENSITY_PERCENTILES = (10.0, 50.0, 90.0, 99.0)
INTENSITY_TARGETS = (41.0, 75.0, 125.0, 186.0)
INTENSITY_NORM = "head_percentiles_v1"


def standardize_intensity(img: np.ndarray) -> np.ndarray:
    """uint8 (H, W) -> uint8 with the head's 10/50/90/99th percentiles at :data:`INTENSITY_TARGETS`.

    Zero stays zero and 255 stays 255 (linear between the landmarks), so the map is monotone and
    keeps the tissue order. A landmark tied with the one below it (flat or saturated heads) is
    skipped; images without a usable head are returned unchanged.
    """
    img = _as_grey_u8(img)
    head = find_head_mask(img, join=0.0)
    if head.sum() < 64:
        return img
    xp, fp = [0.0], [0.0]
    for x, f in zip(np.percentile(img[head], INTENSITY_PERCENTILES), INTENSITY_TARGETS):
        if xp[-1] < x < 255.0:
            xp.append(float(x))
            fp.append(f)
    if len(xp) == 1:
        return img
    xp.append(255.0)
    fp.append(255.0)
    lut = np.clip(np.round(np.interp(np.arange(256, dtype=np.float32), xp, fp)), 0, 255).astype(np.uint8)
    return lut[img]


def check_intensity_norm(name: str | None) -> None:
    """Raise ValueError unless ``name`` is None or the one standardisation this code implements."""
    if name not in (None, INTENSITY_NORM):
        raise ValueError(f"unknown intensity_norm {name!r}; expected None or {INTENSITY_NORM!r}")


def model_crops(crops: list[np.ndarray], card) -> list[np.ndarray]:
    """The crops as the model saw them in training: standardised when its card (a
    :class:`~triage.card.ModelCard` or a card dict) says so."""
    name = card.get("intensity_norm") if isinstance(card, Mapping) else card.intensity_norm
    check_intensity_norm(name)
    if name:
        return [standardize_intensity(c) for c in crops]
    return crops


def crop_brain(img: np.ndarray, margin: float = 0.04, join: float = 0.03) -> BrainCrop:
    """Crop the head region by the extreme points of its mask (:func:`find_head_mask`) plus a margin.

    img: uint8 (H, W). Returns the crop and its bbox in ``img`` coordinates; when no head is
    found (blank image) the full image is returned with ``found=False``.
    """
    img = _as_grey_u8(img)
    h, w = img.shape
    mask = find_head_mask(img, join=join)
    area = int(mask.sum())
    if h * w == 0 or area < 0.01 * h * w:
        return BrainCrop(image=img, bbox=(0, 0, w, h), found=False, head_fraction=area / max(h * w, 1))
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    y_top, y_bottom = int(ys[0]), int(ys[-1])
    x_left, x_right = int(xs[0]), int(xs[-1])
    mx = round(margin * (x_right - x_left + 1))
    my = round(margin * (y_bottom - y_top + 1))
    x0, y0 = max(0, x_left - mx), max(0, y_top - my)
    x1, y1 = min(w, x_right + 1 + mx), min(h, y_bottom + 1 + my)
    return BrainCrop(image=img[y0:y1, x0:x1], bbox=(x0, y0, x1, y1), found=True, head_fraction=area / (h * w))


def pad_to_square(img: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Zero-pad (H, W[, C]) to a centred square. Returns the square and the (top, left) offsets."""
    h, w = img.shape[:2]
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    out = np.zeros((s, s) + img.shape[2:], img.dtype)
    out[top : top + h, left : left + w] = img
    return out, (top, left)


def paste_into_scan(
    crop_map: np.ndarray, bbox: tuple[int, int, int, int], scan_shape: tuple[int, int], fill: float = 0.0
) -> np.ndarray:
    """Place a crop-sized map back into a scan-sized array at ``bbox``."""
    x0, y0, x1, y1 = (int(v) for v in bbox)
    h, w = int(scan_shape[0]), int(scan_shape[1])
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(f"bbox {bbox} is not inside a scan of shape {(h, w)}")
    if crop_map.shape[:2] != (y1 - y0, x1 - x0):
        raise ValueError(f"crop map of shape {crop_map.shape[:2]} does not fit bbox {bbox} ({y1 - y0}x{x1 - x0})")
    out = np.full((h, w) + crop_map.shape[2:], fill, crop_map.dtype)
    out[y0:y1, x0:x1] = crop_map
    return out


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of a boolean mask's True pixels (x1/y1 exclusive), or None when empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
