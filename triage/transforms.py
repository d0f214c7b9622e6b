"""The one model-input transform: training, calibration, evaluation and inference all call it.

A brain crop (uint8, any shape) becomes a model tensor in two stages:

1. :func:`square`: zero-pad to a centred square and resize to ``SQUARE_SIDE`` (256) px with
   OpenCV (area filter when shrinking, linear when enlarging). Training caches this stage.
2. :func:`resize_batch`: bilinear resampling of the squares to the card's ``input_size``
   (the identity case of the training augmentation's ``grid_sample``), then ``(x / 255 - mean) / std``.

Before this module, inference resized each crop straight to ``input_size`` while training,
temperature scaling and the OOD statistics saw the two-stage path, so the calibrated numbers
were fitted on other pixels than the ones the app classified (issue 23, item 3). Every shipped
card was fitted on the two-stage path, which is why it is the one kept.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from triage.preprocess import model_crops, pad_to_square

SQUARE_SIDE = 256
INPUT_TRANSFORM = "square256-bilinear-v1"


MAX_CROP_ASPECT = 8.0  # the intake refuses scans over 4:1; this bounds the padded square for any caller


def square(crop: np.ndarray, side: int = SQUARE_SIDE) -> np.ndarray:
    """Stage 1: uint8 (h, w) crop -> uint8 (side, side), aspect kept by zero padding."""
    h, w = crop.shape[:2]
    if max(h, w) > MAX_CROP_ASPECT * max(1, min(h, w)):
        raise ValueError(f"crop of {w}x{h} px is too narrow to be a brain slice")
    sq, _ = pad_to_square(crop)
    interp = cv2.INTER_AREA if sq.shape[0] > side else cv2.INTER_LINEAR
    return cv2.resize(sq, (side, side), interpolation=interp)


def square_mask(mask: np.ndarray, side: int = SQUARE_SIDE) -> np.ndarray:
    """A crop-sized bool mask through stage 1 (linear, then >= 0.5)."""
    sq, _ = pad_to_square(mask.astype(np.uint8) * 255)
    return cv2.resize(sq, (side, side), interpolation=cv2.INTER_LINEAR) >= 128


def identity_grid(n: int, size: int) -> torch.Tensor:
    theta = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(n, 2, 3)
    return F.affine_grid(theta, (n, 1, size, size), align_corners=False)


def resize_batch(squares: torch.Tensor, size: int) -> torch.Tensor:
    """Stage 2 without normalisation: (N, 1, S, S) in [0, 1] -> (N, 1, size, size), bilinear."""
    return F.grid_sample(
        squares, identity_grid(squares.shape[0], size), mode="bilinear", padding_mode="zeros", align_corners=False
    )


def squares_to_tensor(squares: np.ndarray, size: int, mean: float, std: float) -> torch.Tensor:
    """Stage 2: uint8 (N, S, S) squares -> normalised float (N, 1, size, size)."""
    x = torch.from_numpy(np.ascontiguousarray(squares)).unsqueeze(1).float() / 255.0
    return (resize_batch(x, size) - mean) / std


def model_input(crops: list[np.ndarray], meta: dict) -> torch.Tensor:
    """Both stages, driven by a model card: intensity standardisation when the card says so,
    square, resize to ``input_size``, normalise with the card's mean and std."""
    norm = meta.get("normalization") or {}
    squares = np.stack([square(c) for c in model_crops(crops, meta)])
    return squares_to_tensor(
        squares, int(meta["input_size"]), float(norm.get("mean", 0.2)), float(norm.get("std", 0.25))
    )


def to_model_input(crop: np.ndarray, size: int) -> np.ndarray:
    """Both stages without the normalisation: uint8 crop -> float32 (size, size) in [0, 1]."""
    x = torch.from_numpy(square(crop)).float().view(1, 1, SQUARE_SIDE, SQUARE_SIDE) / 255.0
    return resize_batch(x, size)[0, 0].numpy()


def from_model_output(prob: np.ndarray, crop_shape: tuple[int, int]) -> np.ndarray:
    """Inverse of both stages for a (size, size) map -> (h, w) map of the crop."""
    h, w = crop_shape
    s = max(h, w)
    up = cv2.resize(prob.astype(np.float32), (s, s), interpolation=cv2.INTER_LINEAR)
    top, left = (s - h) // 2, (s - w) // 2
    return up[top : top + h, left : left + w]
