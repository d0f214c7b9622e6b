"""What a trained network is scored and calibrated with, on cached crops.

Predictions without augmentation, temperature scaling, the Mahalanobis OOD statistics and the
segmenter's threshold / minimum-area search. Shared by the end of a training run
(:mod:`triage.lifecycle.train`) and by re-fitting a shipped version (:mod:`triage.lifecycle.calibrate`),
so both fit on the same inputs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from triage.lifecycle.losses import partial_label_loss
from triage.lifecycle.train_config import MEAN, STD
from triage.metrics import dice_iou
from triage.records import CLASSES
from triage.segment import probability_maps, remove_small_components
from triage.transforms import squares_to_tensor

# Minimum component area (fraction of the input square) used when selecting the best segmenter epoch.
SELECTION_MIN_AREA = 0.002


@torch.no_grad()
def predict_logits(net: nn.Module, images: np.ndarray, size: int, bs: int = 64, tta: bool = False) -> np.ndarray:
    """Logits for cached uint8 crops (N, S, S) resized to ``size`` without augmentation.

    ``tta``: average with the left-right mirrored image (as :class:`triage.classify.Classifier`
    does when the model card says ``tta``).
    """
    net.eval()
    out = []
    for i in range(0, len(images), bs):
        x = squares_to_tensor(images[i : i + bs], size, MEAN, STD)
        logits = net(x).float()
        if tta:
            logits = (logits + net(x.flip(-1)).float()) / 2
        out.append(logits)
    return torch.cat(out).numpy() if out else np.zeros((0, len(CLASSES)), np.float32)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature scaling: the T > 0 minimising validation NLL of softmax(logits / T). One allowed class per
    image makes the partial-label NLL plain cross-entropy, so this is :func:`fit_temperature_sets`."""
    return fit_temperature_sets(logits, np.eye(logits.shape[1], dtype=bool)[np.asarray(y, dtype=int)])


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


@torch.no_grad()
def pooled_features(net: nn.Module, images: np.ndarray, size: int, bs: int = 64) -> np.ndarray:
    """Penultimate (pre-logits) features of a timm classifier for OOD statistics."""
    net.eval()
    feats = []
    for i in range(0, len(images), bs):
        x = squares_to_tensor(images[i : i + bs], size, MEAN, STD)
        feats.append(net.forward_head(net.forward_features(x), pre_logits=True).float())
    return torch.cat(feats).numpy()


def fit_ood_stats(train_feats: np.ndarray, train_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class means (C, D) and a shared Ledoit-Wolf precision matrix (D, D) for Mahalanobis OOD."""
    from sklearn.covariance import LedoitWolf

    means = np.stack([train_feats[train_y == c].mean(0) for c in range(len(CLASSES))])
    centred = train_feats - means[train_y]
    lw = LedoitWolf().fit(centred)
    return means.astype(np.float32), lw.precision_.astype(np.float32)


def mahalanobis_score(feats: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Minimum over classes of the squared Mahalanobis distance (higher = more unusual)."""
    d = feats[:, None, :] - means[None, :, :]
    return np.einsum("ncd,de,nce->nc", d, precision, d).min(1)


def fit_temperature_sets(logits: np.ndarray, allowed: np.ndarray) -> float:
    """Temperature minimising the validation partial-label NLL (:func:`partial_label_loss`)."""
    lt, at = torch.from_numpy(logits).float(), torch.from_numpy(allowed)
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure():
        opt.zero_grad()
        loss = partial_label_loss(lt / log_t.exp(), at)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.exp().item())


@torch.no_grad()
def predict_masks(net: nn.Module, images: np.ndarray, size: int, bs: int = 32, tta: bool = False) -> np.ndarray:
    """Tumor probability maps (N, size, size) for cached crops (``tta``: mean with the mirror image's map)."""
    net.eval()
    out = []
    for i in range(0, len(images), bs):
        out.append(probability_maps(net, squares_to_tensor(images[i : i + bs], size, MEAN, STD), tta))
    return torch.cat(out).numpy() if out else np.zeros((0, size, size), np.float32)


def seg_selection_score(s: dict) -> float:
    """Segmenter selection: Dice on tumor slices, penalised by false-positive masks on empty ones."""
    return s["dice"] - 0.5 * s["fp_rate"]


def search_postprocess(probs: np.ndarray, truth: np.ndarray) -> tuple[dict, list[dict]]:
    """Threshold and minimum component area chosen on validation: keep Dice while pushing
    false-positive masks on tumor-free slices down. Returns (chosen, whole grid)."""
    grid = []
    for thr in (0.4, 0.5, 0.6):
        for maf in (0.0, 0.001, 0.002, 0.004):
            grid.append({"threshold": thr, "min_area_frac": maf, **seg_scores(probs, truth, thr, maf)})
    return max(grid, key=seg_selection_score), grid


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(masks).float().unsqueeze(1)
    return (F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False) >= 0.5).squeeze(1).numpy()


def seg_scores(probs: np.ndarray, truth: np.ndarray, threshold: float, min_area_frac: float) -> dict:
    """Mean Dice/IoU over tumor slices, false-positive rate over empty slices."""
    dices, ious, fps = [], [], []
    min_area = min_area_frac * probs.shape[1] * probs.shape[2]
    for p, t in zip(probs, truth):
        m = remove_small_components(p >= threshold, min_area)
        if t.any():
            d, j = dice_iou(m, t)
            dices.append(d)
            ious.append(j)
        else:
            fps.append(bool(m.any()))
    return {
        "dice": float(np.mean(dices)) if dices else 0.0,
        "iou": float(np.mean(ious)) if ious else 0.0,
        "fp_rate": float(np.mean(fps)) if fps else 0.0,
        "n_tumor": len(dices),
        "n_empty": len(fps),
    }
