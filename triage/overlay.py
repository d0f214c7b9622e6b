"""Display overlays: heatmaps, mask outlines, boxes and PNG thumbnails.

Pure numpy/OpenCV (no torch). Every function returns a new uint8 (H, W, 3) **RGB** array and
never modifies its input. Colours are RGB tuples of 0-255 ints. Shapes are validated and
mismatches raise ValueError.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

log = logging.getLogger(__name__)

Color = tuple[int, int, int]

PREDICTION_COLOR: Color = (255, 0, 0)  # red
TRUTH_COLOR: Color = (0, 255, 0)  # green
BBOX_COLOR: Color = (255, 255, 0)  # yellow


def to_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W), (H, W, 1) or (H, W, 3) -> a new uint8 (H, W, 3) RGB array.

    Greyscale is replicated into the three channels; a 3-channel image is assumed RGB already.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        _check_nonempty(image.shape)
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        _check_nonempty(image.shape[:2])
        return np.ascontiguousarray(image).copy()
    raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {image.shape}")


def heatmap_overlay(
    image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, colormap: int = cv2.COLORMAP_JET
) -> np.ndarray:
    """Blend a colour-mapped heatmap over an image.

    image: uint8 (H, W) grey (or (H, W, 3) RGB). heatmap: float (H, W) in [0, 1] (values
    outside are clipped, NaN counts as 0). alpha in [0, 1] is the heatmap's weight.
    Returns uint8 (H, W, 3) RGB = (1 - alpha) * image + alpha * colormap(heatmap).
    """
    rgb = to_rgb(image)
    heatmap = np.asarray(heatmap)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be 2D (H, W), got shape {heatmap.shape}")
    if heatmap.shape != rgb.shape[:2]:
        raise ValueError(f"heatmap shape {heatmap.shape} does not match image shape {rgb.shape[:2]}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    levels = np.nan_to_num(heatmap.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    levels = np.round(np.clip(levels, 0.0, 1.0) * 255.0).astype(np.uint8)
    colored = cv2.cvtColor(cv2.applyColorMap(levels, colormap), cv2.COLOR_BGR2RGB)
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colored.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def auto_thickness(shape: tuple[int, ...]) -> int:
    """Line thickness in pixels for an image of ``shape``: 1 px per 256 px of the longer side."""
    return max(1, round(max(shape[:2]) / 256))


def mask_contour_overlay(
    image: np.ndarray, mask: np.ndarray, color: Color = PREDICTION_COLOR, thickness: int | None = None
) -> np.ndarray:
    """Draw the outline of a binary mask (outer borders and holes) over an image.

    image: uint8 (H, W) or (H, W, 3) RGB. mask: bool (or 0/1) (H, W). thickness: pixels, None
    picks :func:`auto_thickness`. Returns uint8 (H, W, 3) RGB; an empty mask leaves the image
    unchanged.
    """
    rgb = to_rgb(image)
    m = _check_mask(mask, rgb.shape[:2], "mask")
    return _draw_contours(rgb, m, color, thickness)


def truth_vs_prediction_overlay(
    image: np.ndarray, pred_mask: np.ndarray, truth_mask: np.ndarray, thickness: int | None = None
) -> np.ndarray:
    """Outline the ground truth in green and the prediction in red (drawn on top).

    image: uint8 (H, W) or (H, W, 3). pred_mask, truth_mask: bool (H, W). Returns uint8 RGB.
    """
    rgb = to_rgb(image)
    pred = _check_mask(pred_mask, rgb.shape[:2], "pred_mask")
    truth = _check_mask(truth_mask, rgb.shape[:2], "truth_mask")
    rgb = _draw_contours(rgb, truth, TRUTH_COLOR, thickness)
    return _draw_contours(rgb, pred, PREDICTION_COLOR, thickness)


def bbox_overlay(
    image: np.ndarray, bbox: tuple[int, int, int, int], color: Color = BBOX_COLOR, thickness: int | None = None
) -> np.ndarray:
    """Draw a rectangle ``bbox = (x0, y0, x1, y1)`` (x1/y1 exclusive, image pixels).

    image: uint8 (H, W) or (H, W, 3). Returns uint8 (H, W, 3) RGB. The box must be non-empty;
    parts outside the image are clipped by OpenCV.
    """
    rgb = to_rgb(image)
    if len(bbox) != 4:
        raise ValueError(f"bbox must be (x0, y0, x1, y1), got {bbox!r}")
    x0, y0, x1, y1 = (int(v) for v in bbox)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"bbox {bbox!r} is empty (need x0 < x1 and y0 < y1)")
    t = auto_thickness(rgb.shape) if thickness is None else _check_thickness(thickness)
    cv2.rectangle(rgb, (x0, y0), (x1 - 1, y1 - 1), _check_color(color), t)
    return rgb


def thumbnail_png(image: np.ndarray, max_side: int = 128) -> bytes:
    """Encode a downscaled copy of an image as PNG bytes.

    image: uint8 (H, W) grey or (H, W, 3) RGB. The longer side is reduced to ``max_side``
    (aspect kept, never upscaled). Greyscale stays single-channel in the PNG.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {image.shape}")
    _check_nonempty(image.shape[:2])
    if int(max_side) < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    h, w = image.shape[:2]
    scale = min(1.0, int(max_side) / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def _draw_contours(rgb: np.ndarray, mask: np.ndarray, color: Color, thickness: int | None) -> np.ndarray:
    """Draw all contours (RETR_LIST: outer borders and holes) of bool ``mask`` on ``rgb`` in place."""
    t = auto_thickness(rgb.shape) if thickness is None else _check_thickness(thickness)
    if not mask.any():
        return rgb
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, _check_color(color), t)
    return rgb


def _check_mask(mask: np.ndarray, shape: tuple[int, int], name: str) -> np.ndarray:
    """Validate a (H, W) mask of the given shape and return it as bool."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be 2D (H, W), got shape {mask.shape}")
    if mask.shape != tuple(shape):
        raise ValueError(f"{name} shape {mask.shape} does not match image shape {tuple(shape)}")
    return mask.astype(bool)


def _check_color(color: Color) -> tuple[int, int, int]:
    if len(color) != 3 or not all(0 <= int(c) <= 255 for c in color):
        raise ValueError(f"color must be an (R, G, B) tuple of 0-255 ints, got {color!r}")
    return int(color[0]), int(color[1]), int(color[2])


def _check_thickness(thickness: int) -> int:
    if int(thickness) < 1:
        raise ValueError(f"thickness must be >= 1, got {thickness}")
    return int(thickness)


def _check_nonempty(shape: tuple[int, ...]) -> None:
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"image is empty (shape {shape})")
