"""Overlays: shapes, dtypes, colours where expected, validation, PNG thumbnails."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from triage.overlay import (
    bbox_overlay,
    heatmap_overlay,
    mask_contour_overlay,
    thumbnail_png,
    to_rgb,
    truth_vs_prediction_overlay,
)

RED, GREEN = (255, 0, 0), (0, 255, 0)


def grey(h: int = 64, w: int = 80, level: int = 100) -> np.ndarray:
    return np.full((h, w), level, np.uint8)


def square_mask(shape: tuple[int, int], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_to_rgb_shapes_and_validation() -> None:
    img = grey()
    rgb = to_rgb(img)
    assert rgb.shape == (64, 80, 3) and rgb.dtype == np.uint8 and np.all(rgb == 100)
    assert to_rgb(img[:, :, None]).shape == (64, 80, 3)
    assert to_rgb(rgb) is not rgb
    with pytest.raises(ValueError, match="uint8"):
        to_rgb(img.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        to_rgb(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        to_rgb(np.zeros((0, 4), np.uint8))


def test_heatmap_overlay_colours_hot_region_red_and_keeps_input() -> None:
    img = grey()
    heat = np.zeros((64, 80), np.float32)
    heat[:, 40:] = 1.0
    out = heatmap_overlay(img, heat, alpha=0.5)
    assert out.shape == (64, 80, 3) and out.dtype == np.uint8
    hot, cold = out[10, 60].astype(int), out[10, 10].astype(int)
    assert hot[0] > hot[2] + 50  # JET high end is red
    assert cold[2] > cold[0] + 50  # JET low end is blue
    assert np.all(img == 100)
    assert np.array_equal(heatmap_overlay(img, heat, alpha=0.0), to_rgb(img))


def test_heatmap_overlay_clips_and_validates() -> None:
    img = grey(8, 8)
    wild = np.full((8, 8), np.nan, np.float32)
    wild[0, 0] = 7.0
    out = heatmap_overlay(img, wild)
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    with pytest.raises(ValueError, match="does not match"):
        heatmap_overlay(img, np.zeros((8, 9)))
    with pytest.raises(ValueError, match="2D"):
        heatmap_overlay(img, np.zeros((8, 8, 1)))
    with pytest.raises(ValueError, match="alpha"):
        heatmap_overlay(img, np.zeros((8, 8)), alpha=1.5)


def test_contour_drawn_on_mask_boundary_only() -> None:
    img = grey()
    mask = square_mask(img.shape, 20, 40, 30, 60)
    out = mask_contour_overlay(img, mask, color=RED, thickness=1)
    assert out.shape == (64, 80, 3) and out.dtype == np.uint8
    changed = np.any(out != 100, axis=2)
    boundary = mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert np.array_equal(changed, boundary)
    assert tuple(out[20, 45]) == RED and tuple(out[30, 30]) == RED
    assert tuple(out[30, 45]) == (100, 100, 100)  # interior untouched
    assert tuple(out[5, 5]) == (100, 100, 100)  # outside untouched


def test_contour_auto_thickness_rgb_input_and_empty_mask() -> None:
    img = grey(600, 600)
    mask = square_mask(img.shape, 200, 400, 200, 400)
    out = mask_contour_overlay(to_rgb(img), mask)
    assert np.any(np.all(out == RED, axis=2)[200:210, 300])
    assert np.all(np.all(out == RED, axis=2)[200:202, 300])  # auto thickness > 1 on a big image
    empty = mask_contour_overlay(img, np.zeros(img.shape, bool))
    assert np.array_equal(empty, to_rgb(img))
    with pytest.raises(ValueError, match="does not match"):
        mask_contour_overlay(img, np.zeros((10, 10), bool))


def test_truth_vs_prediction_colours() -> None:
    img = grey()
    pred = square_mask(img.shape, 10, 30, 10, 30)
    truth = square_mask(img.shape, 35, 55, 40, 70)
    out = truth_vs_prediction_overlay(img, pred, truth)
    assert out.shape == (64, 80, 3)
    assert tuple(out[10, 20]) == RED
    assert tuple(out[35, 50]) == GREEN
    assert tuple(out[20, 20]) == (100, 100, 100)
    with pytest.raises(ValueError, match="truth_mask"):
        truth_vs_prediction_overlay(img, pred, truth[:10])


def test_bbox_overlay_edges() -> None:
    img = grey()
    out = bbox_overlay(img, (10, 5, 50, 40), color=GREEN, thickness=1)
    assert tuple(out[5, 30]) == GREEN and tuple(out[39, 30]) == GREEN  # y1 exclusive
    assert tuple(out[20, 10]) == GREEN and tuple(out[20, 49]) == GREEN
    assert tuple(out[20, 30]) == (100, 100, 100) and tuple(out[40, 30]) == (100, 100, 100)
    with pytest.raises(ValueError, match="empty"):
        bbox_overlay(img, (10, 10, 10, 20))
    with pytest.raises(ValueError, match="bbox"):
        bbox_overlay(img, (1, 2, 3))  # type: ignore[arg-type]


def test_thumbnail_png_grey_and_rgb() -> None:
    img = np.tile(np.arange(300, dtype=np.uint8)[None, :], (200, 1))
    data = thumbnail_png(img, max_side=64)
    assert data.startswith(b"\x89PNG")
    back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.shape == (43, 64)
    rgb = np.zeros((20, 10, 3), np.uint8)
    rgb[..., 0] = 255  # pure red in RGB
    back = cv2.imdecode(np.frombuffer(thumbnail_png(rgb), np.uint8), cv2.IMREAD_COLOR)
    assert back.shape == (20, 10, 3)  # never upscaled
    assert tuple(back[0, 0]) == (0, 0, 255)  # BGR on decode -> it was stored as red
    with pytest.raises(ValueError):
        thumbnail_png(img.astype(np.float32))
    with pytest.raises(ValueError):
        thumbnail_png(img, max_side=0)
