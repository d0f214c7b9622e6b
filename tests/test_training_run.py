"""run_training helpers: a fine-tune inherits its parent's input size and crop unless overridden."""

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
