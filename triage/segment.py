"""Tumor mask for a brain crop, mapped back to the scan's resolution."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import cv2
import numpy as np

from triage.models import LoadedModel
from triage.preprocess import mask_bbox, paste_into_scan
from triage.records import BrainCrop, Segmentation
from triage.transforms import from_model_output, model_array

if TYPE_CHECKING:
    import torch

# float32 (N, 1, S, S) model input -> sigmoid maps (N, 1, S, S).
SegmenterForward = Callable[[np.ndarray], np.ndarray]


def remove_small_components(mask: np.ndarray, min_area: float) -> np.ndarray:
    """Drop connected components smaller than ``min_area`` pixels (bool in, bool out)."""
    if min_area <= 0 or not mask.any():
        return mask
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_area]
    return np.isin(lab, keep)


def probability_maps(net: torch.nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Sigmoid maps (N, H, W) of normalised inputs; with ``tta`` averaged over the slice and its
    left-right mirror (both in one batch). The torch twin of :meth:`Segmenter.probabilities`."""
    import torch

    if not tta:
        return torch.sigmoid(net(x)).squeeze(1)
    n = x.shape[0]
    p = torch.sigmoid(net(torch.cat([x, x.flip(-1)]))).squeeze(1)
    return (p[:n] + p[n:].flip(-1)) / 2


def torch_forward(model: LoadedModel) -> SegmenterForward:
    """The torch network as a :data:`SegmenterForward` (imports torch; used without an ONNX export)."""
    import torch

    net = model.net

    @torch.inference_mode()
    def forward(x: np.ndarray) -> np.ndarray:
        return torch.sigmoid(net(torch.from_numpy(x))).float().numpy()

    return forward


class Segmenter:
    """Wraps a U-Net version: threshold and minimum component area come from its card.

    ``forward`` runs the network (the ONNX runner's first output); without one the torch network
    is built from the weights.
    """

    def __init__(self, model: LoadedModel, forward: SegmenterForward | None = None):
        card = model.card  # parsed and checked (intensity_norm included) when the version loaded
        self.model = model
        self.card = card
        self.forward = forward or torch_forward(model)
        self.size = card.input_size
        self.mean = card.mean
        self.std = card.std
        self.threshold = card.threshold
        self.min_area_frac = card.min_area_frac
        # Mirror test-time augmentation, when the card says the threshold was chosen with it.
        self.tta = card.tta

    def probabilities(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        """Tumor probability maps, float32 (h, w) in [0, 1] at each crop's resolution."""
        if not crops:
            return []
        x = model_array(crops, self.card)
        n = x.shape[0]
        if self.tta:  # the slice and its mirror in one batch, the mirrored map flipped back
            p = self.forward(np.concatenate([x, x[..., ::-1]]))[:, 0]
            probs = (p[:n] + p[n:, :, ::-1]) / 2
        else:
            probs = self.forward(x)[:, 0]
        return [from_model_output(p, c.shape[:2]) for p, c in zip(probs, crops)]

    def segment(
        self, crops: list[BrainCrop], scan_shapes: list[tuple[int, int]], spacings: list[tuple[float, float] | None]
    ) -> list[Segmentation]:
        """Binary masks at scan resolution with area (px, and mm² when spacing is known) and bbox."""
        out = []
        for crop, prob, shape, spacing in zip(
            crops, self.probabilities([c.image for c in crops]), scan_shapes, spacings
        ):
            m = prob >= self.threshold
            # min_area_frac is relative to the model's input square; scale to crop pixels.
            side = max(crop.image.shape[:2])
            m = remove_small_components(m, self.min_area_frac * side * side)
            full = paste_into_scan(m, crop.bbox, shape, fill=False)
            area = int(full.sum())
            mm2 = float(area * spacing[0] * spacing[1]) if spacing else None
            out.append(
                Segmentation(
                    mask=full,
                    area_px=area,
                    area_mm2=mm2,
                    bbox=mask_bbox(full),
                    max_prob=float(prob.max()) if prob.size else 0.0,
                )
            )
        return out
