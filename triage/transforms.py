"""The one model-input transform: training, calibration, evaluation and inference all call it.

A brain crop (uint8, any shape) becomes a model tensor in two stages:

1. :func:`square`: zero-pad to a centred square and resize to ``SQUARE_SIDE`` (256) px with
   OpenCV (area filter when shrinking, linear when enlarging). Training caches this stage.
2. :func:`squares_to_array`: bilinear resampling of the squares to the card's ``input_size``
   (exactly the identity case of the training augmentation's ``grid_sample``), then ``(x / 255 - mean) / std``.
   It is done in NumPy with a separable weight matrix (:func:`resize_matrix`), so the analysis path
   never imports torch (issue 17).

Before this module, inference resized each crop straight to ``input_size`` while training,
temperature scaling and the OOD statistics saw the two-stage path, so the calibrated numbers
were fitted on other pixels than the ones the app classified (issue 23, item 3). Every shipped
card was fitted on the two-stage path, which is why it is the one kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING

import cv2
import numpy as np

from triage.card import ModelCard
from triage.preprocess import model_crops, pad_to_square

if TYPE_CHECKING:  # torch is imported inside the training-side functions only
    import torch

SQUARE_SIDE = 256
INPUT_TRANSFORM = "square256-bilinear-v1"


MAX_CROP_ASPECT = 8.0  # the intake refuses scans over 4:1; this bounds the padded square for any caller
# Crops with a longer side above this are shrunk before padding (issue 22, item 1): the padded
# square then holds at most 4096^2 px (16 MB) instead of growing with the square of the longer
# side. Below it the exact two-stage path the models were trained on is unchanged.
MAX_PAD_SIDE = 4096


def square(crop: np.ndarray, side: int = SQUARE_SIDE) -> np.ndarray:
    """Stage 1: uint8 (h, w) crop -> uint8 (side, side), aspect kept by zero padding."""
    h, w = crop.shape[:2]
    if max(h, w) > MAX_CROP_ASPECT * max(1, min(h, w)):
        raise ValueError(f"crop of {w}x{h} px is too narrow to be a brain slice")
    if max(h, w) > MAX_PAD_SIDE:
        f = MAX_PAD_SIDE / max(h, w)
        crop = cv2.resize(crop, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    sq, _ = pad_to_square(crop)
    interp = cv2.INTER_AREA if sq.shape[0] > side else cv2.INTER_LINEAR
    return cv2.resize(sq, (side, side), interpolation=interp)


def square_mask(mask: np.ndarray, side: int = SQUARE_SIDE) -> np.ndarray:
    """A crop-sized bool mask through stage 1 (linear, then >= 0.5)."""
    m = mask.astype(np.uint8) * 255
    h, w = m.shape[:2]
    if max(h, w) > MAX_PAD_SIDE:  # as in square(): never pad a huge mask
        f = MAX_PAD_SIDE / max(h, w)
        m = cv2.resize(m, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    sq, _ = pad_to_square(m)
    return cv2.resize(sq, (side, side), interpolation=cv2.INTER_LINEAR) >= 128


@lru_cache(maxsize=8)
def resize_matrix(size: int, side: int = SQUARE_SIDE) -> np.ndarray:
    """(size, side) float32 weights of 1-D bilinear resampling with ``align_corners=False`` and zero
    padding: ``W @ img @ W.T`` equals ``grid_sample`` with the identity grid (to float32 rounding)."""
    w = np.zeros((size, side), np.float64)
    src = (np.arange(size) + 0.5) * side / size - 0.5  # output pixel centre in source pixels
    lo = np.floor(src).astype(int)
    frac = src - lo
    for i, (j, f) in enumerate(zip(lo, frac)):
        for k, weight in ((j, 1.0 - f), (j + 1, f)):
            if 0 <= k < side:  # outside the square: the zero padding contributes nothing
                w[i, k] += weight
    out = w.astype(np.float32)
    out.setflags(write=False)
    return out


def squares_to_array(squares: np.ndarray, size: int, mean: float, std: float) -> np.ndarray:
    """Stage 2 in NumPy: uint8 (N, S, S) squares -> normalised float32 (N, 1, size, size)."""
    w = resize_matrix(size, squares.shape[-1])
    x = w @ (squares.astype(np.float32) / 255.0) @ w.T
    return ((x - mean) / std).astype(np.float32)[:, None]


def model_array(crops: list[np.ndarray], card: ModelCard | Mapping) -> np.ndarray:
    """Both stages, driven by a model card, as a float32 array (N, 1, size, size): intensity
    standardisation when the card says so, square, resize to ``input_size``, normalise with the
    card's mean and std."""
    card = ModelCard.of(card)
    squares = np.stack([square(c) for c in model_crops(crops, card)])
    return squares_to_array(squares, card.input_size, card.mean, card.std)


def resize_batch(squares: torch.Tensor, size: int) -> torch.Tensor:
    """Stage 2 without normalisation on a torch batch: (N, 1, S, S) in [0, 1] -> (N, 1, size, size),
    the same weights as :func:`resize_matrix` (the evaluation path of the augmentation)."""
    import torch

    w = torch.from_numpy(resize_matrix(size, squares.shape[-1]).copy())
    return w @ squares.float() @ w.T


def squares_to_tensor(squares: np.ndarray, size: int, mean: float, std: float) -> torch.Tensor:
    """Stage 2 as a torch tensor: uint8 (N, S, S) squares -> normalised float (N, 1, size, size)
    (:func:`squares_to_array`, so evaluation and inference see the same pixels bit for bit)."""
    import torch

    return torch.from_numpy(squares_to_array(squares, size, mean, std))


def model_input(crops: list[np.ndarray], card: ModelCard | Mapping) -> torch.Tensor:
    """:func:`model_array` as a torch tensor (Grad-CAM and the torch fallback)."""
    import torch

    return torch.from_numpy(model_array(crops, card))


def to_model_input(crop: np.ndarray, size: int) -> np.ndarray:
    """Both stages without the normalisation: uint8 crop -> float32 (size, size) in [0, 1]."""
    w = resize_matrix(size)
    return (w @ (square(crop).astype(np.float32) / 255.0) @ w.T).astype(np.float32)


def from_model_output(prob: np.ndarray, crop_shape: tuple[int, int]) -> np.ndarray:
    """Inverse of both stages for a (size, size) map -> (h, w) map of the crop."""
    h, w = crop_shape
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    if s > MAX_PAD_SIDE:
        # The crop's window of the map is resampled directly (the same half-pixel mapping as
        # cv2.resize): the s x s float32 square of a 40 MP 4:1 scan alone would be 640 MB.
        k = prob.shape[0] / s
        m = np.float32([[k, 0, (left + 0.5) * k - 0.5], [0, k, (top + 0.5) * k - 0.5]])
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        return cv2.warpAffine(prob.astype(np.float32), m, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    up = cv2.resize(prob.astype(np.float32), (s, s), interpolation=cv2.INTER_LINEAR)
    return up[top : top + h, left : left + w]
