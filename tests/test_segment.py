"""Segmenter wrapper: mirror test-time augmentation and the validation re-tune of its post-processing."""

import json

import numpy as np
import torch

from tests.conftest import draw_synthetic_slice
from tests.model_fixtures import make_tiny_weights
from triage.datasets import CachedSet, Sample, prepare_sample, thumbnail_vector
from triage.lifecycle import calibrate
from triage.models import load_model
from triage.segment import Segmenter, probability_maps


class _LeftBiased(torch.nn.Module):
    """Logit = pixel value + a left-to-right ramp, so the mirror image gives a different map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-2, 2, x.shape[-1]).view(1, 1, 1, -1)
        return x + ramp


def test_mirror_tta_is_the_mean_of_both_orientations():
    x = torch.rand(3, 1, 16, 16)
    net = _LeftBiased()
    plain = torch.sigmoid(net(x)).squeeze(1)
    mirrored = torch.sigmoid(net(x.flip(-1))).squeeze(1).flip(-1)
    assert torch.allclose(probability_maps(net, x, tta=True), (plain + mirrored) / 2, atol=1e-6)
    assert not torch.allclose(probability_maps(net, x, tta=True), plain)


def test_segmenter_uses_tta_only_when_the_card_says_so(tmp_path):
    wd = make_tiny_weights(tmp_path / "w")
    model = load_model(wd, "segmenter", "tiny")
    crop = np.random.default_rng(0).integers(0, 255, (80, 70), dtype=np.uint8)
    plain = Segmenter(model)
    assert plain.tta is False
    model.meta["tta"] = True
    tta = Segmenter(model)
    a, b = plain.probabilities([crop])[0], tta.probabilities([crop])[0]
    assert a.shape == b.shape == (80, 70)
    assert not np.allclose(a, b)


def _tiny_val(n: int = 6, size: int = 64) -> CachedSet:
    samples, images, masks = [], [], []
    for i in range(n):
        img, mask = draw_synthetic_slice(shape=(96, 96), seed=i, tumor=i % 2 == 0)
        im, mk = prepare_sample(img, mask, size)
        samples.append(
            Sample(
                path=f"/s/{i}.png",
                label="glioma" if i % 2 == 0 else "no_tumor",
                dataset="s",
                mask_path=f"/s/{i}_m.png" if i % 2 == 0 else None,
            )
        )
        images.append(im)
        masks.append(mk)
    return CachedSet(
        samples,
        np.stack(images),
        np.stack(masks),
        np.stack([thumbnail_vector(x) for x in images]),
        [str(i) for i in range(n)],
        [],
    )


def test_retune_segmenter_rewrites_the_card(tmp_path, monkeypatch):
    wd = make_tiny_weights(tmp_path / "w")
    monkeypatch.setattr(calibrate, "_validation_set", lambda meta, shared, cache: _tiny_val())
    entry = calibrate.retune_segmenter(wd, "tiny", tmp_path, tmp_path / "cache", tta=True)
    meta = json.loads((wd / "segmenter" / "tiny" / "metadata.json").read_text())
    assert meta["tta"] is True and entry["tta"] is True
    assert meta["threshold"] == entry["new"]["threshold"] in (0.4, 0.5, 0.6)
    assert len(meta["postprocess_search"]) == 12 and len(meta["postprocess_history"]) == 1
    assert load_model(wd, "segmenter", "tiny").meta["tta"] is True


def test_segmenter_standardises_crops_when_the_card_says_so(tmp_path):
    from tests.model_fixtures import plain_and_standardising
    from triage.preprocess import standardize_intensity

    plain_model, normed_model = plain_and_standardising(make_tiny_weights(tmp_path / "w"), "segmenter")
    plain = Segmenter(plain_model)
    img, _ = draw_synthetic_slice(shape=(96, 96), seed=3, brain_level=170, skull_level=240, tumor_level=250)
    got = Segmenter(normed_model).probabilities([img])[0]
    assert np.allclose(got, plain.probabilities([standardize_intensity(img)])[0], atol=1e-5)
    assert not np.allclose(got, plain.probabilities([img])[0], atol=1e-4)
