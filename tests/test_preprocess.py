"""Brain crop and model-input geometry, on synthetic slices and on real BRISC/LGG data."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from triage.preprocess import (
    INTENSITY_NORM,
    INTENSITY_PERCENTILES,
    INTENSITY_TARGETS,
    crop_brain,
    find_head_mask,
    model_crops,
    pad_to_square,
    paste_into_scan,
    standardize_intensity,
)
from triage.transforms import from_model_output, to_model_input

MARGIN = 0.04


def head_box(
    shape: tuple[int, int], center: tuple[float, float] | None = None, axes: tuple[float, float] | None = None
) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the outer head ellipse drawn by ``synthetic_slice`` (float, inclusive)."""
    h, w = shape
    cy, cx = center if center is not None else (h / 2.0, w / 2.0)
    ay, ax = axes if axes is not None else (0.40 * h, 0.33 * w)
    return cx - ax, cy - ay, cx + ax, cy + ay


def assert_contains_and_tight(
    bbox: tuple[int, int, int, int],
    head: tuple[float, float, float, float],
    shape: tuple[int, int],
    margin: float = MARGIN,
    slack: float = 3.0,
) -> None:
    x0, y0, x1, y1 = bbox
    hx0, hy0, hx1, hy1 = head
    h, w = shape
    # contains the whole (visible part of the) head
    assert x0 <= max(0, math.ceil(hx0)) and y0 <= max(0, math.ceil(hy0)), (bbox, head)
    assert x1 >= min(w, math.floor(hx1)) and y1 >= min(h, math.floor(hy1)), (bbox, head)
    # and is tight: at most the margin (plus blur/rounding slack) around it
    mx, my = margin * (hx1 - hx0) + slack, margin * (hy1 - hy0) + slack
    assert x0 >= hx0 - mx and y0 >= hy0 - my, (bbox, head)
    assert x1 <= hx1 + mx + 1 and y1 <= hy1 + my + 1, (bbox, head)


GEOMETRIES = {
    "default_256": {},
    "large_512": {"shape": (512, 512)},
    "portrait_300x200": {"shape": (300, 200)},
    "landscape_200x320": {"shape": (200, 320), "axes": (80, 100)},
    "off_centre": {"shape": (256, 256), "center": (100, 150), "axes": (70, 60)},
    "small_head": {"shape": (256, 256), "axes": (40, 32)},
    "thin_ring_wide_gap": {"skull": 4, "gap": 10},
    "thick_bright_skull": {"skull": 16, "gap": 2, "skull_level": 255},
    "scalp_separated_512": {"shape": (512, 512), "skull": 10, "gap": 12},
    "dark_acquisition": {"brain_level": 40, "skull_level": 70, "tumor_level": 60, "noise": 2.0},
    "bright_acquisition": {"brain_level": 200, "skull_level": 250, "tumor_level": 240},
    "no_tumor": {"tumor": False},
    "noisy": {"noise": 12.0, "seed": 3},
}


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_bbox_contains_whole_head_and_is_tight(synthetic_slice, geometry: str) -> None:
    kw = GEOMETRIES[geometry]
    img, _ = synthetic_slice(**kw)
    crop = crop_brain(img)
    assert crop.found
    assert_contains_and_tight(crop.bbox, head_box(img.shape, kw.get("center"), kw.get("axes")), img.shape)
    x0, y0, x1, y1 = crop.bbox
    np.testing.assert_array_equal(crop.image, img[y0:y1, x0:x1])
    assert 0.0 < crop.head_fraction <= 1.0


def test_tumor_is_inside_the_crop(synthetic_slice) -> None:
    img, mask = synthetic_slice(shape=(256, 256), tumor_center=(70, 175), tumor_radius=14)
    x0, y0, x1, y1 = crop_brain(img).bbox
    assert mask.sum() > 100
    assert mask[y0:y1, x0:x1].sum() == mask.sum()


def test_zero_margin_hugs_the_head(synthetic_slice) -> None:
    img, _ = synthetic_slice(shape=(256, 256))
    assert_contains_and_tight(crop_brain(img, margin=0.0).bbox, head_box(img.shape), img.shape, margin=0.0)


@pytest.mark.parametrize("pad", [(40, 10, 100, 0), (0, 120, 0, 60), (200, 200, 200, 200)])
def test_survives_black_borders(synthetic_slice, pad: tuple[int, int, int, int]) -> None:
    img, _ = synthetic_slice(shape=(256, 256))
    top, bottom, left, right = pad
    padded = np.pad(img, ((top, bottom), (left, right)))
    x0, y0, x1, y1 = crop_brain(img).bbox
    px0, py0, px1, py1 = crop_brain(padded).bbox
    assert abs(px0 - (x0 + left)) <= 1 and abs(py0 - (y0 + top)) <= 1
    assert abs(px1 - (x1 + left)) <= 1 and abs(py1 - (y1 + top)) <= 1


ANNOTATIONS = [  # (text, scale, thickness): PACS-style burned-in corner labels on a 512 px slice
    ("R 12/03/24", 0.6, 1),
    ("ACC 0042 SE:4 IM:17", 0.8, 2),
    ("R 12/03/24", 1.2, 3),
    ("R", 3.0, 8),
    ("L", 4.0, 12),
]


@pytest.mark.parametrize("corner", ["tl", "tr", "bl", "br"])
@pytest.mark.parametrize(("text", "scale", "thickness"), ANNOTATIONS)
def test_corner_annotation_is_not_in_the_crop(
    synthetic_slice, corner_text, corner: str, text: str, scale: float, thickness: int
) -> None:
    img, _ = synthetic_slice(shape=(512, 512))
    clean = crop_brain(img).bbox
    annotated = corner_text(img, text, corner=corner, scale=scale, thickness=thickness)
    assert (annotated != img).sum() > 50  # the text is really there
    assert crop_brain(annotated).bbox == clean


def test_labels_in_every_corner(synthetic_slice, corner_text) -> None:
    img, _ = synthetic_slice(shape=(512, 512), axes=(190, 160))
    clean = crop_brain(img).bbox
    annotated = img
    for corner in ("tl", "tr", "bl", "br"):
        annotated = corner_text(annotated, "T1 AX", corner=corner, scale=0.9, thickness=2)
    assert crop_brain(annotated).bbox == clean


def test_bright_frame_lines_and_dots_are_ignored(synthetic_slice) -> None:
    img, _ = synthetic_slice(shape=(512, 512))
    clean = crop_brain(img).bbox
    noisy = img.copy()
    noisy[5, :] = 255  # a 1-px ruler line
    noisy[:, 508] = 255
    noisy[500:503, 10:13] = 255  # a marker dot
    assert crop_brain(noisy).bbox == clean


def test_head_cut_by_the_field_of_view(synthetic_slice) -> None:
    img, _ = synthetic_slice(shape=(256, 256), center=(40, 128), axes=(100, 90))
    crop = crop_brain(img)
    assert crop.found
    x0, y0, x1, y1 = crop.bbox
    assert y0 == 0 and 0 <= x0 < x1 <= 256 and y1 <= 256
    assert_contains_and_tight(crop.bbox, head_box(img.shape, (40, 128), (100, 90)), img.shape)


@pytest.mark.parametrize("shape", [(256, 256), (300, 180), (32, 32)])
def test_blank_image_is_not_found(shape: tuple[int, int]) -> None:
    img = np.zeros(shape, np.uint8)
    crop = crop_brain(img)
    assert not crop.found
    assert crop.bbox == (0, 0, shape[1], shape[0])
    assert crop.image.shape == shape
    assert crop.head_fraction == 0.0
    assert not find_head_mask(img).any()


def test_tiny_speck_is_not_a_head() -> None:
    img = np.zeros((256, 256), np.uint8)
    img[100:110, 100:110] = 200  # 0.15 % of the image
    assert not crop_brain(img).found


def test_noise_and_uniform_images_do_not_crash() -> None:
    rng = np.random.default_rng(0)
    for img in (
        rng.integers(0, 256, (200, 240), dtype=np.uint8),
        np.full((64, 64), 255, np.uint8),
        np.full((64, 64), 7, np.uint8),
    ):
        crop = crop_brain(img)
        x0, y0, x1, y1 = crop.bbox
        assert 0 <= x0 < x1 <= img.shape[1] and 0 <= y0 < y1 <= img.shape[0]


def test_non_uint8_and_rgb_inputs_are_accepted(synthetic_slice) -> None:
    img, _ = synthetic_slice(shape=(256, 256))
    ref = crop_brain(img).bbox
    rgb = np.dstack([img, img, img])
    assert crop_brain(rgb).bbox == ref
    as16 = img.astype(np.uint16) * 257
    bbox16 = crop_brain(as16).bbox
    assert max(abs(a - b) for a, b in zip(bbox16, ref, strict=True)) <= 2
    with pytest.raises(ValueError, match="2D"):
        crop_brain(np.zeros((4, 4, 4, 4), np.uint8))


def test_large_scan_is_cropped_quickly(synthetic_slice) -> None:
    """A 6 MP scan is analysed at reduced size: same geometry, no multi-second morphology."""
    import time

    img, _ = synthetic_slice(shape=(2400, 2400), skull=48, gap=48, noise=0)
    t = time.perf_counter()
    crop = crop_brain(img)
    assert time.perf_counter() - t < 3.0
    assert_contains_and_tight(crop.bbox, head_box(img.shape), img.shape, slack=12)


# --------------------------------------------------------------------------- model input geometry


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_pad_to_square() -> None:
    img = np.arange(6 * 10, dtype=np.uint8).reshape(6, 10)
    sq, (top, left) = pad_to_square(img)
    assert sq.shape == (10, 10) and (top, left) == (2, 0)
    np.testing.assert_array_equal(sq[2:8], img)
    assert not sq[:2].any() and not sq[8:].any()
    rgb = np.ones((7, 3, 3), np.uint8)
    sq, (top, left) = pad_to_square(rgb)
    assert sq.shape == (7, 7, 3) and (top, left) == (0, 2)


def test_to_model_input_range_shape_and_aspect(synthetic_slice) -> None:
    img, _ = synthetic_slice(shape=(300, 200))
    crop = crop_brain(img)
    x = to_model_input(crop.image, 224)
    assert x.shape == (224, 224) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    h, w = crop.image.shape
    assert h > w  # portrait crop -> zero columns left and right, nothing squashed
    pad_cols = int((h - w) / 2 / h * 224) - 1
    assert pad_cols > 5 and not x[:, :pad_cols].any() and not x[:, -pad_cols:].any()


@pytest.mark.parametrize("shape", [(512, 512), (300, 200), (200, 320), (137, 411)])
@pytest.mark.parametrize("size", [224, 256, 384])
def test_mask_round_trip_to_scan_resolution(synthetic_slice, shape: tuple[int, int], size: int) -> None:
    axes = (0.4 * shape[0], 0.33 * shape[1])
    r = 0.25 * min(axes)
    img, mask = synthetic_slice(shape=shape, tumor_radius=r)
    assert mask.sum() > 200
    crop = crop_brain(img)
    x0, y0, x1, y1 = crop.bbox
    model_space = to_model_input(mask[y0:y1, x0:x1].astype(np.uint8) * 255, size)  # "probabilities"
    assert model_space.shape == (size, size)
    back = from_model_output(model_space, crop.image.shape)
    assert back.shape == crop.image.shape
    full = paste_into_scan(back, crop.bbox, img.shape)
    assert full.shape == img.shape
    assert iou(full >= 0.5, mask) > 0.95


def test_paste_into_scan_fill_and_validation() -> None:
    out = paste_into_scan(np.ones((3, 4), np.float32), (2, 1, 6, 4), (8, 10), fill=-1.0)
    assert out.shape == (8, 10) and out.dtype == np.float32
    assert (out[1:4, 2:6] == 1).all() and (out == -1).sum() == 80 - 12
    with pytest.raises(ValueError, match="does not fit"):
        paste_into_scan(np.ones((3, 3)), (2, 1, 6, 4), (8, 10))
    with pytest.raises(ValueError, match="not inside"):
        paste_into_scan(np.ones((3, 4)), (8, 1, 12, 4), (8, 10))


# --------------------------------------------------------------------------- real data


def _rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_real_brisc_crops_keep_the_tumor(shared_data: Path) -> None:
    from triage.datasets import read_mask
    from triage.io import read_path

    folder = shared_data / "brisc2025"
    rows = [r for r in _rows(folder) if r["mask_path"]]
    assert len(rows) > 1000
    step = len(rows) // 24
    sample = rows[::step][:24]  # spread over splits, classes and planes
    assert {r["label"] for r in sample} >= {"glioma", "meningioma", "pituitary"}
    for row in sample:
        (scan,) = read_path(folder / row["path"])
        mask = read_mask(folder / row["mask_path"], scan.shape)
        crop = crop_brain(scan.pixels)
        assert crop.found, row["path"]
        x0, y0, x1, y1 = crop.bbox
        kept = mask[y0:y1, x0:x1].sum() / max(int(mask.sum()), 1)
        assert kept > 0.99, (row["path"], kept)
        assert crop.head_fraction > 0.1


def test_real_brisc_no_tumor_and_lgg_flair_found(shared_data: Path) -> None:
    from triage.io import read_path

    brisc = shared_data / "brisc2025"
    healthy = [r for r in _rows(brisc) if r["label"] == "no_tumor"][::200][:4]
    lgg = shared_data / "lgg_kaggle_3m_subset"
    flair = _rows(lgg)[5:40:10]
    for folder, rows in ((brisc, healthy), (lgg, flair)):
        for row in rows:
            (scan,) = read_path(folder / row["path"])
            crop = crop_brain(scan.pixels)
            assert crop.found, row["path"]
            x0, y0, x1, y1 = crop.bbox
            assert (x1 - x0) * (y1 - y0) > 0.15 * scan.pixels.size


# --- head-intensity standardisation -------------------------------------------------------------


def _head_percentiles(img: np.ndarray) -> np.ndarray:
    return np.percentile(img[find_head_mask(img, join=0.0)], INTENSITY_PERCENTILES)


def test_standardised_head_lands_on_the_targets(synthetic_slice) -> None:
    img, _ = synthetic_slice(shape=(256, 256), noise=10.0, seed=1)
    out = standardize_intensity(img)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.allclose(_head_percentiles(out), INTENSITY_TARGETS, atol=3)


def test_brighter_and_flatter_acquisitions_of_one_slice_become_alike(synthetic_slice) -> None:
    """The point of it: brightness and contrast of the source stop being a cue."""
    # Levels low enough that the brighter copy does not saturate (saturation is tested below).
    img, _ = synthetic_slice(shape=(256, 256), noise=10.0, seed=2, brain_level=90, skull_level=160, tumor_level=130)
    head = find_head_mask(img, join=0.0)
    bright = np.clip(img.astype(np.float32) * 1.35 + 20, 0, 255).astype(np.uint8)
    flat = np.clip(img.astype(np.float32) * 0.6, 0, 255).astype(np.uint8)
    base = standardize_intensity(img).astype(np.float32)
    for variant in (bright, flat):
        before = np.abs(variant.astype(np.float32) - img)[head].mean()
        after = np.abs(standardize_intensity(variant).astype(np.float32) - base)[head].mean()
        assert after < 0.25 * before, (before, after)


def test_standardisation_keeps_tissue_order_and_black_background(synthetic_slice) -> None:
    img, _ = synthetic_slice(shape=(128, 128), noise=6.0, seed=4)
    out = standardize_intensity(img)
    order = np.argsort(img.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order].astype(int)) >= 0)  # monotone map
    assert np.all(out[img == 0] == 0)


def _speck() -> np.ndarray:
    img = np.zeros((64, 64), np.uint8)
    img[30:34, 30:34] = 200
    return img


@pytest.mark.parametrize("img", [np.zeros((64, 64), np.uint8), _speck()])
def test_images_without_a_usable_head_are_left_alone(img: np.ndarray) -> None:
    assert np.array_equal(standardize_intensity(img), img)


def test_saturated_head_is_still_standardised(synthetic_slice) -> None:
    """A tied landmark (here the 99th percentile at 255) is skipped, not a reason to give up."""
    img, _ = synthetic_slice(shape=(256, 256), noise=10.0, seed=6)
    sat = np.clip(img.astype(np.float32) * 1.6, 0, 255).astype(np.uint8)
    assert _head_percentiles(sat)[-1] == 255
    q = _head_percentiles(standardize_intensity(sat))
    assert np.allclose(q[1:3], INTENSITY_TARGETS[1:3], atol=4)  # median and 90th on target


def test_model_crops_follow_the_card(synthetic_slice) -> None:
    img, _ = synthetic_slice(shape=(96, 96), seed=5)
    assert model_crops([img], {})[0] is img
    assert np.array_equal(model_crops([img], {"intensity_norm": INTENSITY_NORM})[0], standardize_intensity(img))
    with pytest.raises(ValueError, match="unknown intensity_norm"):
        model_crops([img], {"intensity_norm": "zscore"})
