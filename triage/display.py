"""The Case review viewer's picture (issue 16): window/level and the overlays, pure numpy/OpenCV.

The stored slice is the display-ready uint8 image of the upload (DICOM already windowed by its
VOI, MONOCHROME1 inverted), so window/level here acts on those 0-255 display values: narrowing the
window raises contrast, moving the level brightens or darkens. MR has no standard Hounsfield-like
scale, so the presets are relative to the slice's own brain intensities (percentiles inside the
head), not fixed numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from triage.overlay import TRUTH_COLOR, heatmap_overlay, mask_contour_overlay, to_rgb

PRESETS = ("As stored", "Brain (auto)", "High contrast", "Bright lesion (T2/FLAIR)", "Wide")


@dataclass(frozen=True)
class WindowLevel:
    """A display window: values ``level - window/2 .. level + window/2`` map to black .. white."""

    window: float
    level: float


def preset_window(pixels: np.ndarray, preset: str) -> WindowLevel:
    """The window of ``preset`` (one of :data:`PRESETS`) for a uint8 (H, W) slice.

    "Brain (auto)" spans the 1st-99th percentile of the head's pixels (value > 10, so the black
    background does not count); "High contrast" halves that window; "Bright lesion" centres a
    narrow window on the upper intensities where T2/FLAIR lesions sit; "Wide" doubles it.
    """
    if preset == "As stored" or pixels.size == 0:
        return WindowLevel(256.0, 128.0)
    head = pixels[pixels > 10]
    if head.size < 64:
        head = pixels.ravel()
    lo, p60, hi = (float(v) for v in np.percentile(head, [1, 60, 99]))
    width = max(8.0, hi - lo)
    centre = (lo + hi) / 2
    if preset == "Brain (auto)":
        return WindowLevel(round(width), round(centre))
    if preset == "High contrast":
        return WindowLevel(round(max(8.0, width / 2)), round(centre))
    if preset == "Bright lesion (T2/FLAIR)":
        return WindowLevel(round(max(8.0, hi - p60)), round((p60 + hi) / 2))
    if preset == "Wide":
        return WindowLevel(round(min(512.0, width * 2)), round(centre))
    raise ValueError(f"unknown window preset {preset!r}; expected one of {PRESETS}")


def window_level(pixels: np.ndarray, wl: WindowLevel) -> np.ndarray:
    """uint8 (H, W) -> uint8 (H, W) with the window applied (linear, clipped)."""
    if wl.window <= 0:
        raise ValueError(f"window must be > 0, got {wl.window}")
    # DICOM's linear VOI function (PS3.3 C.11.2.1.2): W 256 / L 128 leaves 0-255 as it is.
    w = max(float(wl.window), 2.0)
    out = ((pixels.astype(np.float32) - (wl.level - 0.5)) / (w - 1.0) + 0.5) * 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def compose_view(
    pixels: np.ndarray,
    wl: WindowLevel,
    mask: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    heat: np.ndarray | None = None,
    opacity: float = 0.4,
) -> np.ndarray:
    """The viewer's picture: the windowed slice, the heatmap blended at ``opacity`` times its value
    (so cold regions stay clear), then the ground
    truth outline (green) and the predicted outline (red) on top. Returns uint8 (H, W, 3) RGB."""
    rgb = to_rgb(window_level(pixels, wl))
    if heat is not None:
        # Weighted by the heat itself: cold regions leave the anatomy as it is instead of a blue wash.
        full = heatmap_overlay(rgb, heat, alpha=1.0).astype(np.float32)
        alpha = float(np.clip(opacity, 0.0, 1.0)) * np.clip(np.nan_to_num(heat.astype(np.float32)), 0.0, 1.0)
        rgb = np.rint(rgb * (1.0 - alpha[..., None]) + full * alpha[..., None]).astype(np.uint8)
    if truth is not None and truth.any():
        rgb = mask_contour_overlay(rgb, truth, color=TRUTH_COLOR)
    if mask is not None and mask.any():
        rgb = mask_contour_overlay(rgb, mask)
    return rgb
