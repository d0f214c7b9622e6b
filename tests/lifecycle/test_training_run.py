"""run_training helpers: a fine-tune inherits its parent's input size, crop and augmentation unless overridden."""

import dataclasses
import json

import numpy as np
import pytest

from tests.model_fixtures import make_tiny_weights
from triage.lifecycle.recipe import standardized
from triage.lifecycle.train_config import TrainConfig
from triage.lifecycle.training_run import _inherit_from_parent, run_training
from triage.models import read_metadata
from triage.preprocess import INTENSITY_NORM, LEGACY_CROP, standardize_intensity


def test_fine_tune_keeps_the_parents_input_size_and_crop(tmp_path):
    wd = make_tiny_weights(tmp_path / "w")  # tiny classifier: 64 px, no crop key (legacy)
    assert read_metadata(wd, "classifier", "tiny")["input_size"] == 64
    cfg = TrainConfig.from_preset("classifier", "quick", init_from="tiny")
    assert cfg.input_size == 128
    _inherit_from_parent(cfg, wd, {})
    assert cfg.input_size == 64 and cfg.crop == LEGACY_CROP


def test_explicit_overrides_win(tmp_path):
    wd = make_tiny_weights(tmp_path / "w")
    crop = {"margin": 0.1, "join": 0.0}
    cfg = TrainConfig.from_preset("classifier", "quick", init_from="tiny", input_size=96, crop=crop)
    _inherit_from_parent(cfg, wd, {"input_size": 96, "crop": crop})
    assert cfg.input_size == 96 and cfg.crop == crop


def test_fine_tune_keeps_the_parents_augmentation_unless_overridden(tmp_path):
    wd = make_tiny_weights(tmp_path / "w")
    card = wd / "classifier" / "tiny" / "metadata.json"
    meta = json.loads(card.read_text())
    meta["train_config"] = {
        "sequence_aug": 0.5,
        "sequence_aug_no_tumor": 0.1,
        "enhancement_aug": 0.35,
        "intensity_norm": INTENSITY_NORM,
    }
    card.write_text(json.dumps(meta))
    cfg = TrainConfig.from_preset("classifier", "quick", init_from="tiny")
    _inherit_from_parent(cfg, wd, {})
    assert (cfg.sequence_aug, cfg.sequence_aug_no_tumor, cfg.enhancement_aug) == (0.5, 0.1, 0.35)
    assert cfg.intensity_norm == INTENSITY_NORM  # the weights expect standardised crops
    cfg = TrainConfig.from_preset("classifier", "quick", init_from="tiny", enhancement_aug=0.0)
    _inherit_from_parent(cfg, wd, {"enhancement_aug": 0.0})
    assert cfg.enhancement_aug == 0.0 and cfg.sequence_aug_no_tumor == 0.1


def test_standardized_set_changes_only_the_images():
    from tests.lifecycle.test_train import _synthetic_set

    s = _synthetic_set(2)
    bright = dataclasses.replace(s, images=np.clip(s.images * 1.3, 0, 255).astype(np.uint8))
    out = standardized(bright, INTENSITY_NORM)
    assert out.samples == bright.samples and out.sha1s == bright.sha1s and out.masks is bright.masks
    assert np.array_equal(out.images[0], standardize_intensity(bright.images[0]))
    assert not np.array_equal(out.images, bright.images)


def test_unknown_intensity_norm_is_refused_before_any_data_is_read(tmp_path):
    with pytest.raises(ValueError, match="unknown intensity_norm"):
        run_training(
            "classifier",
            tmp_path / "nowhere",
            tmp_path / "w" / "classifier" / "x",
            preset="quick",
            intensity_norm="zscore",
        )
