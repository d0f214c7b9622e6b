"""run_training helpers: a fine-tune inherits its parent's input size, crop and augmentation unless overridden."""

import json

from tests.model_fixtures import make_tiny_weights
from triage.models import read_metadata
from triage.preprocess import LEGACY_CROP
from triage.train import TrainConfig
from triage.training_run import _inherit_from_parent


def test_fine_tune_keeps_the_parents_input_size_and_crop(tmp_path):
    wd = make_tiny_weights(tmp_path / "w")                    # tiny classifier: 64 px, no crop key (legacy)
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
    meta["train_config"] = {"sequence_aug": 0.5, "sequence_aug_no_tumor": 0.1, "enhancement_aug": 0.35}
    card.write_text(json.dumps(meta))
    cfg = TrainConfig.from_preset("classifier", "quick", init_from="tiny")
    _inherit_from_parent(cfg, wd, {})
    assert (cfg.sequence_aug, cfg.sequence_aug_no_tumor, cfg.enhancement_aug) == (0.5, 0.1, 0.35)
    cfg = TrainConfig.from_preset("classifier", "quick", init_from="tiny", enhancement_aug=0.0)
    _inherit_from_parent(cfg, wd, {"enhancement_aug": 0.0})
    assert cfg.enhancement_aug == 0.0 and cfg.sequence_aug_no_tumor == 0.1
