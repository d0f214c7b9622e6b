"""Brain crop (seed 000: largest contour, extreme points, margin) and model-input preparation.

All arrays are numpy; tensors are made in the model modules.
"""

from __future__ import annotations

import cv2
import numpy as np

from triage.records import BrainCrop


def find_head_mask(img: np.ndarray) -> np.ndarray:
    """uint8 (H, W) -> bool mask of the largest bright connected region (the head).

    Threshold is relative (half of Otsu, clamped) so dark and bright acquisitions both work;
    opening removes text annotations and thin lines before the largest contour is taken.
    """
    blur = cv2.GaussianBlur(img, (5, 5), 0)
    otsu, _ = cv2.threshold(blur, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    thr = float(np.clip(otsu * 0.5, 8, 60))
    binary = (blur > thr).astype(np.uint8)
    k = max(3, int(round(min(img.shape) / 100)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, kernel, iterations=2)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n <= 1:
        return np.zeros(img.shape, bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest


def crop_brain(img: np.ndarray, margin: float = 0.04) -> BrainCrop:
    """Crop the head region by the extreme points of its largest contour.

    img: uint8 (H, W). Returns the crop and its bbox in ``img`` coordinates; when no head is
    found (blank image) the full image is returned with ``found=False``.
    """
    h, w = img.shape
    mask = find_head_mask(img)
    area = int(mask.sum())
    if area < 0.01 * h * w:
        return BrainCrop(image=img, bbox=(0, 0, w, h), found=False, head_fraction=area / (h * w))
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    c = max(contours, key=cv2.contourArea)
    x_left, x_right = int(c[:, :, 0].min()), int(c[:, :, 0].max())
    y_top, y_bottom = int(c[:, :, 1].min()), int(c[:, :, 1].max())
    mx = int(round(margin * (x_right - x_left + 1)))
    my = int(round(margin * (y_bottom - y_top + 1)))
    x0, y0 = max(0, x_left - mx), max(0, y_top - my)
    x1, y1 = min(w, x_right + 1 + mx), min(h, y_bottom + 1 + my)
    return BrainCrop(image=img[y0:y1, x0:x1], bbox=(x0, y0, x1, y1), found=True,
                     head_fraction=area / (h * w))


def pad_to_square(img: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Zero-pad (H, W[, C]) to a centred square. Returns the square and the (top, left) offsets."""
    h, w = img.shape[:2]
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    out = np.zeros((s, s) + img.shape[2:], img.dtype)
    out[top:top + h, left:left + w] = img
    return out, (top, left)


def to_model_input(crop: np.ndarray, size: int) -> np.ndarray:
    """uint8 crop (h, w) -> float32 (size, size) in [0, 1], aspect kept by zero padding."""
    sq, _ = pad_to_square(crop)
    interp = cv2.INTER_AREA if sq.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(sq, (size, size), interpolation=interp).astype(np.float32) / 255.0


def from_model_output(prob: np.ndarray, crop_shape: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`to_model_input` for a (size, size) map -> (h, w) map of the crop."""
    h, w = crop_shape
    s = max(h, w)
    up = cv2.resize(prob.astype(np.float32), (s, s), interpolation=cv2.INTER_LINEAR)
    top, left = (s - h) // 2, (s - w) // 2
    return up[top:top + h, left:left + w]


def paste_into_scan(crop_map: np.ndarray, bbox: tuple[int, int, int, int], scan_shape: tuple[int, int],
                    fill: float = 0.0) -> np.ndarray:
    """Place a crop-sized map back into a scan-sized array at ``bbox``."""
    out = np.full(scan_shape, fill, crop_map.dtype)
    x0, y0, x1, y1 = bbox
    out[y0:y1, x0:x1] = crop_map
    return out
