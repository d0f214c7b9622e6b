"""Grad-CAM heatmaps on a tiny random classifier: shape/range, hooks, threads, errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

from triage.card import ModelCard
from triage.explain import (
    ALL_METHODS,
    EXPLAIN_LOCK,
    METHODS,
    SEGMENTER_METHOD,
    explain,
    explain_segmenter,
    explain_to_scan,
)
from triage.models import build_model
from triage.records import CLASSES

torch.set_num_threads(1)

META = {
    "arch": "timm:regnetx_004",
    "arch_kwargs": {"num_classes": 4, "in_chans": 1},
    "input_size": 64,
    "normalization": {"mean": 0.2, "std": 0.25},
    "gradcam_layer": "s4",
}


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    model = build_model(META)
    return model.eval()


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    """A 48 x 40 uint8 'brain crop' with a bright blob (non-square, to exercise the padding)."""
    rng = np.random.default_rng(0)
    img = rng.integers(40, 120, size=(48, 40)).astype(np.uint8)
    img[10:22, 8:20] = 220
    return img


def forward_hook_count(net: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in net.modules())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_and_class_gives_unit_map_at_crop_size(net: nn.Module, crop: np.ndarray, method: str) -> None:
    for cls in CLASSES:
        heat = explain(net, META, crop, cls, method=method)
        assert heat.shape == crop.shape and heat.dtype == np.float32
        assert np.isfinite(heat).all() and heat.min() >= 0.0 and heat.max() <= 1.0
    assert forward_hook_count(net) == 0


def test_hooks_removed_and_weights_untouched(net: nn.Module, crop: np.ndarray) -> None:
    before = {k: v.clone() for k, v in net.state_dict().items()}
    explain(net, META, crop, "glioma")
    assert forward_hook_count(net) == 0
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_works_under_inference_mode_and_frozen_weights(net: nn.Module, crop: np.ndarray) -> None:
    ref = explain(net, META, crop, "meningioma")
    net.requires_grad_(False)
    try:
        with torch.inference_mode():
            heat = explain(net, META, crop, "meningioma")
    finally:
        net.requires_grad_(True)
    np.testing.assert_allclose(heat, ref, atol=1e-5)


def test_the_typed_card_and_its_dict_give_the_same_map(net: nn.Module, crop: np.ndarray) -> None:
    """The service passes the ModelCard parsed when the model loaded; a card dict is parsed the same way."""
    card = ModelCard.from_meta(META, task="classifier")
    np.testing.assert_array_equal(explain(net, card, crop, "glioma"), explain(net, META, crop, "glioma"))
    # no normalisation block: the card's defaults (mean 0.2, std 0.25), the same as writing them out
    bare = {k: v for k, v in META.items() if k != "normalization"}
    np.testing.assert_array_equal(explain(net, bare, crop, "glioma"), explain(net, META, crop, "glioma"))


def test_fallback_to_last_conv_when_layer_missing(net: nn.Module, crop: np.ndarray) -> None:
    meta = {**META, "gradcam_layer": ""}
    heat = explain(net, meta, crop, "pituitary")
    assert heat.shape == crop.shape and 0.0 <= heat.min() and heat.max() <= 1.0
    assert forward_hook_count(net) == 0


def test_concurrent_calls_match_sequential(net: nn.Module, crop: np.ndarray) -> None:
    classes = ("glioma", "no_tumor")
    expected = {c: explain(net, META, crop, c) for c in classes}
    results: dict[str, np.ndarray] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(classes))

    def work(cls: str) -> None:
        try:
            barrier.wait()
            for _ in range(3):
                results[cls] = explain(net, META, crop, cls)
                assert np.allclose(results[cls], expected[cls], atol=1e-5)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c,)) for c in classes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    for c in classes:
        assert np.allclose(results[c], expected[c], atol=1e-5)
    assert not EXPLAIN_LOCK.locked()
    assert forward_hook_count(net) == 0


def test_custom_lock_is_used(net: nn.Module, crop: np.ndarray) -> None:
    lock = threading.Lock()
    lock.acquire()
    out: list[np.ndarray] = []
    t = threading.Thread(target=lambda: out.append(explain(net, META, crop, "glioma", lock=lock)))
    t.start()
    t.join(timeout=0.3)
    assert t.is_alive() and not out  # waiting for our lock
    lock.release()
    t.join(timeout=60)
    assert len(out) == 1


def test_invalid_names_raise(net: nn.Module, crop: np.ndarray) -> None:
    with pytest.raises(ValueError, match="unknown class"):
        explain(net, META, crop, "astrocytoma")
    with pytest.raises(ValueError, match="unknown explanation method"):
        explain(net, META, crop, "glioma", method="scorecam")
    assert forward_hook_count(net) == 0


def test_bad_layer_raises_and_leaves_no_hooks(net: nn.Module, crop: np.ndarray) -> None:
    with pytest.raises(ValueError, match="gradcam_layer"):
        explain(net, {**META, "gradcam_layer": "s4.99"}, crop, "glioma")
    with pytest.raises(ValueError, match="gradcam_layer"):
        explain(net, {**META, "gradcam_layer": "nope"}, crop, "glioma")
    assert forward_hook_count(net) == 0


def test_exception_inside_cam_propagates_and_releases_hooks(crop: np.ndarray) -> None:
    class Boom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.conv(x)
            raise IndexError("boom")  # grad-cam's __exit__ would swallow this

    boom = Boom()
    with pytest.raises(IndexError, match="boom"):
        explain(boom, {**META, "gradcam_layer": "conv"}, crop, "glioma")
    assert forward_hook_count(boom) == 0


def test_bad_crop_rejected(net: nn.Module) -> None:
    with pytest.raises(ValueError, match="uint8"):
        explain(net, META, np.zeros((8, 8), np.float32), "glioma")
    with pytest.raises(ValueError, match="2D"):
        explain(net, META, np.zeros((8, 8, 3), np.uint8), "glioma")


def test_explain_to_scan_places_crop_map() -> None:
    heat = np.full((4, 6), 0.5, np.float32)
    out = explain_to_scan(heat, (2, 3, 8, 7), (10, 12))
    assert out.shape == (10, 12) and out.dtype == np.float32
    assert np.all(out[3:7, 2:8] == 0.5) and out.sum() == pytest.approx(0.5 * 24)
    with pytest.raises(ValueError):
        explain_to_scan(heat, (0, 0, 5, 4), (10, 12))
    with pytest.raises(ValueError):
        explain_to_scan(heat, (8, 0, 14, 4), (10, 12))


def test_the_heatmap_lands_where_the_evidence_is() -> None:
    """A network whose only evidence is pixel brightness (conv -> average pool -> linear): the
    heatmap's peak must sit on a bright blob, on a non-square crop, so the pad/resize/inverse path
    is aligned (BRISC heatmaps were seen above the lesion; this rules out the transform)."""
    conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, 0, 1, 1] = 1.0  # every channel is the input itself
    head = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(4))
    net = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()
    meta = {"input_size": 64, "normalization": {"mean": 0.0, "std": 1.0}, "gradcam_layer": "0"}
    for shape, (cy, cx) in (((120, 200), (30, 150)), ((200, 90), (160, 20))):
        yy, xx = np.mgrid[: shape[0], : shape[1]]
        crop = (255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 10.0**2))).astype(np.uint8)  # one peak
        heat = explain(net, meta, crop, "glioma")
        py, px = np.unravel_index(int(heat.argmax()), heat.shape)
        assert abs(py - cy) <= 6 and abs(px - cx) <= 6, (shape, (py, px), (cy, cx))


def _brightness_segmenter(cut: float) -> nn.Module:
    """A 'segmenter' whose tumour logit is the pixel's brightness minus ``cut`` (one 3x3 conv, centre tap)."""
    conv = nn.Conv2d(1, 1, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
        conv.bias.fill_(-cut)
    return nn.Sequential(conv).eval()


def test_seg_gradcam_points_at_what_the_segmenter_calls_tumour() -> None:
    net = _brightness_segmenter(0.5)
    meta = {"input_size": 64, "normalization": {"mean": 0.0, "std": 1.0}, "gradcam_layer": "0", "threshold": 0.5}
    yy, xx = np.mgrid[:120, :200]
    blob = lambda cy, cx, peak: peak * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 8.0**2))  # noqa: E731
    crop = (255 * np.maximum(blob(30, 150, 1.0), blob(90, 40, 0.4))).astype(np.uint8)  # only the first is "tumour"
    before = forward_hook_count(net)
    heat = explain_segmenter(net, meta, crop)
    assert heat.shape == crop.shape and heat.dtype == np.float32 and 0.0 <= heat.min() <= heat.max() <= 1.0
    py, px = np.unravel_index(int(heat.argmax()), heat.shape)
    assert abs(py - 30) <= 6 and abs(px - 150) <= 6, (py, px)
    assert heat[90, 40] < 0.05  # the dimmer blob is below the segmenter's threshold: no evidence
    assert forward_hook_count(net) == before


def test_seg_gradcam_on_a_tumour_free_slice_and_a_bad_layer(crop: np.ndarray) -> None:
    net = _brightness_segmenter(10.0)  # nothing reaches the threshold: the map covers every pixel's logit
    meta = {"input_size": 64, "normalization": {"mean": 0.0, "std": 1.0}, "gradcam_layer": "0"}
    heat = explain_segmenter(net, meta, crop)
    assert heat.shape == crop.shape and np.isfinite(heat).all()
    with pytest.raises(ValueError, match="segmenter layer"):
        explain_segmenter(net, {**meta, "gradcam_layer": "decoder.blocks.9"}, crop)


def test_the_service_routes_seg_gradcam_to_the_segmenter(tmp_path) -> None:
    import json

    import cv2

    from tests.conftest import draw_synthetic_slice
    from tests.model_fixtures import make_tiny_weights
    from triage.config import get_settings
    from triage.service import TriageService

    weights = make_tiny_weights(tmp_path / "weights")
    meta_path = weights / "segmenter" / "tiny" / "metadata.json"

    card = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**card, "gradcam_layer": "model.0"}))
    service = TriageService(get_settings(weights_dir=weights, data_dir=tmp_path / "data"))
    image, _ = draw_synthetic_slice(seed=1)
    _ok, png = cv2.imencode(".png", image)
    (result,) = service.analyze_bytes(png.tobytes(), "s.png")
    exp = service.explain(result, "glioma", SEGMENTER_METHOD)
    assert exp.method == SEGMENTER_METHOD and exp.heatmap.shape == result.scan.shape
    assert ALL_METHODS[0] == SEGMENTER_METHOD and set(METHODS) < set(ALL_METHODS)


def test_seg_gradcam_on_another_architecture_falls_back_to_its_last_conv(crop: np.ndarray) -> None:
    """A department's segmenter (MONAI U-Net) has no smp decoder stage and no gradcam_layer in its card."""
    from tests.model_fixtures import SEGMENTER_META

    net = build_model(SEGMENTER_META).eval()
    heat = explain_segmenter(net, {k: v for k, v in SEGMENTER_META.items() if k != "gradcam_layer"}, crop)
    assert heat.shape == crop.shape and np.isfinite(heat).all()
