"""Training on synthetic data: the loss falls and the saved version loads back."""

import json

import numpy as np
import pytest
import torch

from tests.conftest import draw_synthetic_slice
from triage.datasets import CachedSet, Sample, prepare_sample, thumbnail_vector
from triage.lifecycle.fitting import fit_temperature, softmax
from triage.lifecycle.losses import seg_loss
from triage.lifecycle.train import sequence_probabilities, train_classifier, train_segmenter
from triage.lifecycle.train_config import SEG_LOSS_NAMES, TrainConfig
from triage.models import load_model

# Slow tier: real models, training runs, subprocesses or full pages (`pytest -m 'not slow'` skips them).
pytestmark = pytest.mark.slow


def _synthetic_set(n_per_class: int, size: int = 64, seed: int = 0) -> CachedSet:
    """Classes differ by tumor brightness/position so a tiny net can learn them in a few steps."""
    rng = np.random.default_rng(seed)
    samples, images, masks = [], [], []
    spec = {
        "no_tumor": None,
        "glioma": (0.35, 0.35, 240),
        "meningioma": (0.65, 0.65, 200),
        "pituitary": (0.65, 0.35, 160),
    }
    for label, t in spec.items():
        for i in range(n_per_class):
            kw = (
                {"tumor": False}
                if t is None
                else {
                    "tumor_center": (t[0] * 128 + rng.integers(-6, 6), t[1] * 128 + rng.integers(-6, 6)),
                    "tumor_level": t[2],
                    "tumor_radius": 14,
                }
            )
            img, mask = draw_synthetic_slice(shape=(128, 128), seed=int(rng.integers(1e6)), **kw)
            im, mk = prepare_sample(img, mask, size)
            samples.append(
                Sample(
                    path=f"/synthetic/{label}{i}.png",
                    label=label,
                    dataset="synthetic",
                    mask_path=None if t is None else f"/synthetic/{label}{i}_mask.png",
                )
            )
            images.append(im)
            masks.append(mk)
    return CachedSet(
        samples,
        np.stack(images),
        np.stack(masks),
        np.stack([thumbnail_vector(x) for x in images]),
        [str(i) for i in range(len(images))],
        [],
    )


@pytest.fixture(scope="module")
def data():
    return _synthetic_set(12, seed=0), _synthetic_set(4, seed=1)


def test_classifier_trains_and_loads(tmp_path, data):
    train, val = data
    cfg = TrainConfig.from_preset(
        "classifier",
        "quick",
        input_size=64,
        epochs=6,
        batch_size=16,
        lr=3e-3,
        threads=1,
        schedule_by_time=False,
        patience=10,
    )
    folder = train_classifier(
        cfg, train, val, tmp_path / "run", tmp_path / "w" / "classifier" / "t1", {"recipe": "synthetic"}, progress=False
    )
    meta = json.loads((folder / "metadata.json").read_text())
    hist = meta["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert meta["temperature"] > 0 and meta["trained"] is True
    assert meta["intensity_norm"] is None and "standardize_intensity" not in meta["preprocess"]
    assert "ece_before" in meta["metrics"]["validation"]
    m = load_model(tmp_path / "w", "classifier", "t1")
    assert m.extras["ood_means"].shape[0] == 4
    events = [json.loads(line) for line in (tmp_path / "run" / "progress.jsonl").read_text().splitlines()]
    assert events[-1]["kind"] == "done"


@pytest.mark.parametrize("seg_dice", ["batch", "batch+image", "tversky"])
def test_segmenter_trains_and_loads(tmp_path, data, seg_dice):
    train, val = data
    cfg = TrainConfig.from_preset(
        "segmenter",
        "quick",
        input_size=64,
        epochs=4,
        batch_size=8,
        threads=1,
        schedule_by_time=False,
        patience=10,
        seg_dice=seg_dice,
        arch_kwargs={
            "in_channels": 1,
            "out_channels": 1,
            "channels": [8, 16, 32],
            "strides": [2, 2],
            "num_res_units": 1,
        },
    )
    folder = train_segmenter(
        cfg, train, val, tmp_path / "run", tmp_path / "w" / "segmenter" / "s1", {"recipe": "synthetic"}, progress=False
    )
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["history"][-1]["train_loss"] < meta["history"][0]["train_loss"]
    assert 0 < meta["threshold"] < 1
    assert meta["loss"] == SEG_LOSS_NAMES[seg_dice]
    load_model(tmp_path / "w", "segmenter", "s1")


def _logits(mask: torch.Tensor) -> torch.Tensor:
    """Confident logits that draw exactly ``mask``."""
    return torch.where(mask > 0, 8.0, -8.0)


def test_per_image_dice_weighs_a_missed_small_lesion_like_a_large_one():
    big, small = torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64)
    big[..., 8:56, 8:56] = 1
    small[..., 30:34, 30:34] = 1
    masks = torch.cat([big, small])
    missed_small = _logits(torch.cat([big, torch.zeros_like(small)]))
    both, batch = seg_loss("batch+image"), seg_loss("batch")
    # one Dice over the batch barely notices the missed 16-pixel lesion; per image it costs half a Dice term
    assert batch(missed_small, masks) < 0.05
    assert both(missed_small, masks) - batch(missed_small, masks) > 0.45


def test_tversky_costs_a_missed_pixel_more_than_a_false_one():
    truth = torch.zeros(1, 1, 64, 64)
    truth[..., 16:48, 16:48] = 1
    under, over = torch.zeros_like(truth), torch.zeros_like(truth)
    under[..., 16:48, 24:40] = 1  # half the tumor missed
    over[..., 16:48, 8:56] = 1  # the tumor plus as many false pixels
    tversky, dice = seg_loss("tversky"), seg_loss("batch")
    # both add the same cross-entropy for the same number of wrong pixels, so the gaps compare the overlap terms:
    # Dice prefers the larger mask by 0.13, Tversky by 0.28
    dice_gap = dice(_logits(under), truth) - dice(_logits(over), truth)
    tversky_gap = tversky(_logits(under), truth) - tversky(_logits(over), truth)
    assert tversky_gap > 1.8 * dice_gap > 0


def test_per_image_dice_leaves_tumor_free_batches_to_the_batch_loss():
    empty = torch.zeros(2, 1, 32, 32)
    logits = torch.randn(2, 1, 32, 32)
    assert torch.isclose(seg_loss("batch+image")(logits, empty), seg_loss("batch")(logits, empty))
    with pytest.raises(ValueError, match="seg_dice"):
        seg_loss("focal")


def test_resume_after_interruption(tmp_path, data):
    """A run killed after its checkpoint continues from the next epoch instead of restarting."""
    train, val = data
    kw = dict(input_size=64, batch_size=16, threads=1, schedule_by_time=False, patience=10)
    cfg = TrainConfig.from_preset("classifier", "quick", epochs=2, **kw)
    train_classifier(cfg, train, val, tmp_path / "run", tmp_path / "w" / "classifier" / "a", {}, progress=False)
    cfg3 = TrainConfig.from_preset("classifier", "quick", epochs=3, **kw)
    folder = train_classifier(
        cfg3, train, val, tmp_path / "run", tmp_path / "w" / "classifier" / "b", {}, progress=False
    )
    epochs = [h["epoch"] for h in json.loads((folder / "metadata.json").read_text())["history"]]
    assert epochs == [0, 1, 2]


def test_temperature_scaling_reduces_overconfidence():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    logits = rng.normal(0, 1, (400, 4))
    logits[np.arange(400), y] += 1.0
    logits *= 6  # overconfident
    t = fit_temperature(logits.astype(np.float32), y)
    assert t > 2
    assert softmax(logits / t).max(1).mean() < softmax(logits).max(1).mean()


def test_no_early_stop_in_the_first_half_of_the_schedule(tmp_path):
    """Validation swings while the LR is high, so patience only counts from half-way on."""
    import torch

    from triage.lifecycle.train import RunLog, _fit

    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    cfg = TrainConfig.from_preset(
        "classifier", "quick", epochs=6, batch_size=4, threads=1, schedule_by_time=False, patience=1
    )
    scores = iter([1.0, 0.5, 0.4, 0.3, 0.2, 0.1])  # best at epoch 0, worse ever after
    x = torch.randn(8, 2)

    def step_loss(idx):
        return net(x[idx]).pow(2).mean()

    history, best = _fit(
        cfg,
        net,
        opt,
        torch.Generator().manual_seed(0),
        np.random.default_rng(0),
        8,
        RunLog(tmp_path),
        step_loss,
        lambda: (next(scores), {}),
        "t",
        progress=False,
    )
    assert best["epoch"] == 0
    assert len(history) == 3  # stale from epoch 1, but the stop waits for 3/6 of the schedule


def test_sequence_probabilities_can_differ_for_no_tumor_images():
    tumor = np.array([True, False, True])
    same = TrainConfig(task="classifier", sequence_aug=0.4)
    assert sequence_probabilities(same, tumor).tolist() == pytest.approx([0.4, 0.4, 0.4])
    split = TrainConfig(task="classifier", sequence_aug=0.5, sequence_aug_no_tumor=0.1)
    assert sequence_probabilities(split, tumor).tolist() == pytest.approx([0.5, 0.1, 0.5])


@pytest.mark.parametrize("option", [{"seg_dice": "per_pixel"}, {"intensity_norm": "zscore"}])
def test_unknown_option_names_fail_when_the_config_is_made(option):
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_preset("segmenter", "quick", **option)


@pytest.mark.parametrize("shares", [{"sartaj": -0.1}, {"sartaj": 0.0}, {"sartaj": "a lot"}])
def test_source_shares_must_be_non_negative_and_not_all_zero(shares):
    with pytest.raises(ValueError, match="source_shares"):
        TrainConfig.from_preset("classifier", "multi", source_shares=shares)


def test_card_describes_the_intensity_standardisation_step():
    from triage.lifecycle.train_config import preprocess_description

    plain = TrainConfig.from_preset("classifier", "quick")
    normed = TrainConfig.from_preset("classifier", "quick", intensity_norm="head_percentiles_v1")
    assert "standardize_intensity" not in preprocess_description(plain)
    assert (
        preprocess_description(normed).index("crop_brain")
        < preprocess_description(normed).index("standardize_intensity (head_percentiles_v1)")
        < preprocess_description(normed).index("resize")
    )
