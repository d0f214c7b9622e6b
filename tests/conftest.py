"""Shared fixtures: the real-data folder and a synthetic axial brain-MRI drawer."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO_DIR = Path(__file__).resolve().parent.parent


def shared_data_path() -> Path:
    """``$TRIAGE_SHARED_DATA`` if set, else ``<repo>/../shared/data``."""
    env = os.environ.get("TRIAGE_SHARED_DATA")
    return Path(env).expanduser() if env else REPO_DIR.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the shared real datasets; skips the test when the folder is absent."""
    path = shared_data_path()
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}: real-data tests need ../shared/data")
    return path


def draw_synthetic_slice(
    shape: tuple[int, int] = (256, 256),
    center: tuple[float, float] | None = None,
    axes: tuple[float, float] | None = None,
    skull: int = 8,
    gap: int = 3,
    tumor: bool = True,
    tumor_center: tuple[float, float] | None = None,
    tumor_radius: float | None = None,
    brain_level: int = 110,
    skull_level: int = 230,
    tumor_level: int = 190,
    noise: float = 4.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a fake axial T1 slice.

    Dark background, a bright elliptical skull/scalp ring (``skull`` px thick, outer
    semi-axes ``axes`` = (ay, ax) around ``center`` = (cy, cx)), a dark ``gap`` band
    (bone/CSF), a grey brain ellipse inside and, when ``tumor``, a brighter round blob.
    Returns ``(img uint8 HxW, tumor_mask bool HxW)``; the head occupies exactly the pixels
    of the outer ellipse, i.e. rows cy-ay..cy+ay and columns cx-ax..cx+ax.
    """
    h, w = shape
    cy, cx = center if center is not None else (h / 2.0, w / 2.0)
    ay, ax = axes if axes is not None else (0.40 * h, 0.33 * w)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    def inside(ry: float, rx: float, oy: float = cy, ox: float = cx) -> np.ndarray:
        return ((yy - oy) / max(ry, 1e-6)) ** 2 + ((xx - ox) / max(rx, 1e-6)) ** 2 <= 1.0

    img = np.zeros(shape, np.float32)
    img[inside(ay, ax)] = skull_level
    img[inside(ay - skull, ax - skull)] = 15.0  # bone / CSF band: dark
    by, bx = ay - skull - gap, ax - skull - gap
    brain = inside(by, bx)
    img[brain] = brain_level
    mask = np.zeros(shape, bool)
    if tumor:
        r = tumor_radius if tumor_radius is not None else 0.12 * min(by, bx) * 2
        ty, tx = tumor_center if tumor_center is not None else (cy - 0.3 * by, cx + 0.3 * bx)
        mask = inside(r, r, ty, tx) & brain
        img[mask] = tumor_level
    if noise:
        img += rng.normal(0.0, noise, shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), mask


@pytest.fixture
def synthetic_slice() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """Factory fixture: ``synthetic_slice(**kwargs) -> (uint8 HxW image, bool tumor mask)``.

    See :func:`draw_synthetic_slice` for the parameters.
    """
    return draw_synthetic_slice


@pytest.fixture
def corner_text() -> Callable[..., np.ndarray]:
    """Factory fixture: ``corner_text(img, text=..., corner="tl"|"tr"|"bl"|"br", scale, thickness)``."""
    return put_corner_text


def put_corner_text(
    img: np.ndarray, text: str = "L R 12/03/2024", corner: str = "tl", scale: float = 0.8, thickness: int = 2
) -> np.ndarray:
    """Burn a bright annotation into a corner of a copy of ``img`` (as scanners and PACS do)."""
    out = img.copy()
    h, w = out.shape
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x = 4 if corner[1] == "l" else w - tw - 4
    y = th + 4 if corner[0] == "t" else h - base - 4
    cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness, cv2.LINE_AA)
    return out
