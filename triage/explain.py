"""Class-activation heatmaps (Grad-CAM family) for the classifier, via pytorch-grad-cam.

The map is computed on the same model input as a prediction (brain crop -> zero-pad to
square -> resize to the card's ``input_size`` -> ``(x - mean) / std``, all read off the
:class:`~triage.card.ModelCard`) and mapped back to the crop, then optionally pasted into the full
scan with :func:`explain_to_scan`.

Thread safety: the library registers forward hooks on a layer of the (shared) model, so two
concurrent calls on the same model would record each other's activations. Every call is
serialised with :data:`EXPLAIN_LOCK` (or the lock passed in). Plain predictions on the same
model that may run while a heatmap is computed should take the same lock.

Hook clean-up: ``BaseCAM.__exit__`` in grad-cam 1.5.7 prints and *swallows* ``IndexError``
(e.g. a bad layer index), so the context manager is not used; hooks are released in a
``try/finally`` and every exception propagates.

torch and pytorch-grad-cam are imported when a heatmap is computed, not with this module, so
pages and the analysis path can name the methods without loading torch (issue 17).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from triage.card import ModelCard
from triage.models import resolve_module
from triage.preprocess import paste_into_scan
from triage.records import CLASSES
from triage.transforms import from_model_output, model_array

if TYPE_CHECKING:
    from pytorch_grad_cam.base_cam import BaseCAM
    from torch import nn

log = logging.getLogger(__name__)

# Method name -> pytorch_grad_cam class name.
METHODS: dict[str, str] = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "eigencam": "EigenCAM",  # class-agnostic: first principal component of the activations
    "layercam": "LayerCAM",
}

# Seg-Grad-CAM (Vinogradova et al. 2020): Grad-CAM of the *segmenter*, whose target is the sum of its
# tumour logits over the pixels it calls tumour. The classifier's Grad-CAM does not localise here
# (pointing game 0.14 on BRISC test, bench/heatmap_localisation.py); this one answers "where does the
# model see tumour", and is captioned as the segmenter's evidence, not the classifier's.
SEGMENTER_METHOD = "seg-gradcam"
# The U-Net decoder stage at 1/4 of the input (40x40 at 160 px), chosen on 60 BRISC *train* tumours: pointing game
# 0.58 / 0.95 / 0.93 / 0.92 for decoder.blocks.0-3, and of those >= 0.9 the most energy inside the mask (0.37
# against 0.19 / 0.11), i.e. the map that covers the lesion rather than one hot point in it.
SEGMENTER_DEFAULT_LAYER = "decoder.blocks.2"
# Every method a reader can pick, in the order the page lists them (the default first).
ALL_METHODS: tuple[str, ...] = (SEGMENTER_METHOD, *METHODS)

# Serialises every heatmap computation on shared models (hooks are not thread-safe).
EXPLAIN_LOCK = threading.Lock()


def explain(
    net: nn.Module,
    card: ModelCard | Mapping,
    crop_image: np.ndarray,
    target_class: str,
    method: str = "gradcam",
    lock: threading.Lock | None = None,
) -> np.ndarray:
    """Heatmap of the evidence for ``target_class`` in a brain crop.

    net: the classifier (kept in eval mode; its parameters are not changed). card: its
    :class:`~triage.card.ModelCard` (or the card dict, parsed here): input size, normalisation,
    Grad-CAM layer. crop_image: uint8 (h, w)
    brain crop. target_class: one of ``CLASSES``. method: a key of :data:`METHODS`.
    Returns float32 (h, w) in [0, 1] at the crop's resolution (1 = strongest evidence).
    Raises ValueError for an unknown class, method or layer, or a bad crop.
    """
    cam_cls = _method_class(method)
    class_index = _class_index(target_class)
    crop = _check_crop(crop_image)
    card = ModelCard.of(card)
    x = _normalised_input(crop, card)
    with lock or EXPLAIN_LOCK:
        cam_sq = _run_cam(net, cam_cls, _target_layer(net, card), x, class_index)
    return _to_crop(cam_sq, crop.shape)


def _to_crop(cam_sq: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A model-input-square CAM back at the crop's resolution, float32 in [0, 1]."""
    heat = from_model_output(cam_sq, shape)
    return np.clip(np.nan_to_num(heat, nan=0.0), 0.0, 1.0).astype(np.float32)


def explain_segmenter(
    net: nn.Module,
    card: ModelCard | Mapping,
    crop_image: np.ndarray,
    lock: threading.Lock | None = None,
) -> np.ndarray:
    """Seg-Grad-CAM of the segmenter: the evidence behind the pixels it calls tumour.

    net: the segmenter (its output is (1, 1, S, S) tumour logits). card: its
    :class:`~triage.card.ModelCard` or card dict (input size, normalisation, optional Grad-CAM
    layer, mask threshold). The target is the
    sum of the logits over the pixels at or above the card's threshold, or over every pixel when
    there are none (then the map shows the most tumour-like region of a slice called tumour-free).
    Returns float32 (h, w) in [0, 1] at the crop's resolution.
    """
    from pytorch_grad_cam import GradCAM

    crop = _check_crop(crop_image)
    card = ModelCard.of(card)
    x = _normalised_input(crop, card)
    layer = _segmenter_layer(net, card.gradcam_layer)
    threshold = card.threshold
    logit_cut = float(np.log(threshold / (1 - threshold))) if 0 < threshold < 1 else 0.0
    with lock or EXPLAIN_LOCK:
        cam_sq = _run_cam(net, GradCAM, layer, x, _RegionTarget(logit_cut))
    return _to_crop(cam_sq, crop.shape)


def _segmenter_layer(net: nn.Module, name: str) -> nn.Module:
    """The card's layer (ValueError if it names none), else the smp U-Net's decoder stage chosen on
    BRISC train, else (another architecture, e.g. a department's MONAI U-Net) the last Conv2d."""
    from torch import nn

    if name:
        try:
            return resolve_module(net, name)
        except (AttributeError, IndexError) as exc:
            raise ValueError(f"segmenter layer {name!r} not found in the model: {exc}") from exc
    try:
        return resolve_module(net, SEGMENTER_DEFAULT_LAYER)
    except (AttributeError, IndexError):
        convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ValueError("the segmenter has no Conv2d layer to explain") from None
        return convs[-1]


class _RegionTarget:
    """pytorch-grad-cam target: the sum of a segmenter's logits over the pixels at or above ``logit_cut``
    (every pixel when none is), read off the CAM's own forward pass (its SemanticSegmentationTarget takes
    a fixed mask of a softmax class channel; this model has one sigmoid channel)."""

    def __init__(self, logit_cut: float):
        self.logit_cut = logit_cut

    def __call__(self, output):  # output: the (1, S, S) or (S, S) logits of one image
        region = output.detach() >= self.logit_cut
        return (output * region).sum() if bool(region.any()) else output.sum()


def explain_to_scan(
    heatmap_crop: np.ndarray, bbox: tuple[int, int, int, int], scan_shape: tuple[int, int]
) -> np.ndarray:
    """Place a crop heatmap (float (h, w) in [0, 1]) into the scan: float32 (H, W), 0 outside."""
    heat = np.asarray(heatmap_crop, dtype=np.float32)
    x0, y0, x1, y1 = bbox
    if heat.ndim != 2 or heat.shape != (y1 - y0, x1 - x0):
        raise ValueError(f"heatmap shape {heat.shape} does not match bbox {bbox} (expected {(y1 - y0, x1 - x0)})")
    if not (0 <= x0 < x1 <= scan_shape[1] and 0 <= y0 < y1 <= scan_shape[0]):
        raise ValueError(f"bbox {bbox} is outside the scan of shape {tuple(scan_shape)}")
    return paste_into_scan(heat, bbox, (int(scan_shape[0]), int(scan_shape[1])), fill=0.0)


def _run_cam(net: nn.Module, cam_cls: type[BaseCAM], layer: nn.Module, x: np.ndarray, target: object) -> np.ndarray:
    """Run one CAM on float32 (S, S) input ``x`` with hooks on ``layer`` (always removed).

    ``target``: a class index of the classifier, or a pytorch-grad-cam target callable.

    Returns float32 (S, S) in [0, 1].
    """
    # Grad-CAM needs autograd even when the caller is inside no_grad / inference_mode.
    # Only the target layer's weights require grad while the CAM runs, so backward stops at that
    # layer instead of walking the whole network (about half the CAM time on regnetx_004). The
    # caller holds the model lock, so no other thread sees the temporarily changed flags.
    import torch
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    params = list(net.parameters())
    saved = [p.requires_grad for p in params]
    layer_params = list(layer.parameters())
    with torch.inference_mode(False), torch.enable_grad():
        cam = cam_cls(model=net, target_layers=[layer])
        try:
            if layer_params:
                for p in params:
                    p.requires_grad_(False)
                for p in layer_params:
                    p.requires_grad_(True)
            # Made here (not under a caller's inference_mode). Without trainable target-layer
            # weights the input must require grad so the activations get gradients.
            inp = torch.from_numpy(x)[None, None].to(cam.device).requires_grad_(not layer_params)
            tgt = ClassifierOutputTarget(target) if isinstance(target, int) else target
            out = cam(input_tensor=inp, targets=[tgt])
        finally:
            for p, flag in zip(params, saved):
                p.requires_grad_(flag)
            cam.activations_and_grads.release()
            cam.outputs = None
            net.zero_grad(set_to_none=True)
    return np.asarray(out[0], dtype=np.float32)


def _target_layer(net: nn.Module, card: ModelCard) -> nn.Module:
    """The module named by the card's ``gradcam_layer``, or the last Conv2d when it is not set."""
    from torch import nn

    name = card.gradcam_layer
    if name:
        try:
            return resolve_module(net, name)
        except (AttributeError, IndexError) as exc:
            raise ValueError(f"gradcam_layer {name!r} not found in the model: {exc}") from exc
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("model card has no gradcam_layer and the model has no Conv2d layer")
    log.debug("no gradcam_layer in model card; using the last Conv2d")
    return convs[-1]


def _normalised_input(crop: np.ndarray, card: ModelCard) -> np.ndarray:
    """uint8 (h, w) crop -> float32 (S, S) model input, S the card's input size (the inference transform)."""
    return np.ascontiguousarray(model_array([crop], card)[0, 0], dtype=np.float32)


def _method_class(method: str) -> type[BaseCAM]:
    try:
        name = METHODS[method]
    except (KeyError, TypeError):
        raise ValueError(f"unknown explanation method {method!r}; expected one of {sorted(METHODS)}") from None
    import pytorch_grad_cam

    return getattr(pytorch_grad_cam, name)


def _class_index(target_class: str) -> int:
    if target_class not in CLASSES:
        raise ValueError(f"unknown class {target_class!r}; expected one of {CLASSES}")
    return CLASSES.index(target_class)


def _check_crop(crop: np.ndarray) -> np.ndarray:
    crop = np.asarray(crop)
    if crop.ndim != 2 or crop.shape[0] == 0 or crop.shape[1] == 0:
        raise ValueError(f"crop_image must be a non-empty 2D (h, w) array, got shape {crop.shape}")
    if crop.dtype != np.uint8:
        raise ValueError(f"crop_image must be uint8, got {crop.dtype}")
    return crop
