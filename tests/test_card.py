"""The model card record: defaults, legacy rules and checks in one place; parsed once at load."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from tests.model_fixtures import CLASSIFIER_META, SEGMENTER_META, make_tiny_weights
from triage.card import ModelCard
from triage.errors import ModelBrokenError
from triage.flags import FlagRule
from triage.models import load_model, read_card
from triage.preprocess import INTENSITY_NORM, LEGACY_CROP
from triage.records import CLASSES


def test_defaults_and_legacy_rules_apply_to_a_minimal_card() -> None:
    card = ModelCard.from_meta({"arch": "timm:regnetx_004", "input_size": 64}, task="classifier", version="v0")
    assert (card.task, card.version, card.input_size) == ("classifier", "v0", 64)
    assert (card.mean, card.std) == (0.2, 0.25)
    assert dict(card.crop) == LEGACY_CROP  # cards that predate the crop setting used the legacy crop
    assert card.temperature == 1.0 and card.tta is False and card.intensity_norm is None
    assert card.classes == CLASSES and card.flag_rule is None and math.isinf(card.ood_threshold)
    assert (card.threshold, card.min_area_frac, card.trained) == (0.5, 0.0, False)


def test_card_values_win_over_defaults() -> None:
    meta = {
        **SEGMENTER_META,
        "normalization": {"mean": 0.1, "std": 0.3},
        "crop": {"margin": 0.05, "join": 0.03},
        "threshold": 0.0,
        "tta": True,
        "intensity_norm": INTENSITY_NORM,
    }
    card = ModelCard.from_meta(meta)
    assert (card.task, card.mean, card.std, card.threshold, card.tta) == ("segmenter", 0.1, 0.3, 0.0, True)
    assert dict(card.crop) == {"margin": 0.05, "join": 0.03} and card.intensity_norm == INTENSITY_NORM
    rule = {"low": 0.2, "high": 0.8, "top_below": 0.5}
    clf = ModelCard.from_meta({**CLASSIFIER_META, "flag_rule": rule, "ood": {"threshold": 12.5}})
    assert clf.flag_rule == FlagRule.from_card(rule) and clf.ood_threshold == 12.5


def test_descriptive_blocks_are_parsed_and_empty_when_absent() -> None:
    """What the Model page reads: training sources (licences), epoch history, metrics, OOD rule, loss."""
    bare = ModelCard.from_meta(CLASSIFIER_META)
    assert (bare.training_sources, bare.history, bare.best_epoch, bare.preprocess, bare.loss) == ((), (), None, "", "")
    assert dict(bare.validation()) == {} and bare.has_ood_threshold and bare.ood_rule == ""
    assert not ModelCard.from_meta({**CLASSIFIER_META, "ood": {"threshold": None}}).has_ood_threshold
    sources = [{"source": "brisc2025", "train_images": 10, "licence": "CC BY 4.0", "commercial_use": True}, "junk"]
    card = ModelCard.from_meta(
        {
            **SEGMENTER_META,
            "training_sources": sources,
            "history": [{"epoch": 0, "val_dice": 0.5}, {"epoch": 1, "val_dice": 0.6}],
            "best_epoch": 1,
            "loss": "per-image Dice + BCE",
            "preprocess": "crop_brain -> resize",
            "metrics": {"validation": {"dice": 0.6}},
        }
    )
    assert [dict(s) for s in card.training_sources] == sources[:1]  # entries that are not objects are dropped
    assert [h["val_dice"] for h in card.history] == [0.5, 0.6] and card.best_epoch == 1
    assert (card.loss, card.preprocess, card.validation()["dice"]) == (
        "per-image Dice + BCE",
        "crop_brain -> resize",
        0.6,
    )
    with pytest.raises(TypeError):
        card.training_sources[0]["licence"] = "mine"  # type: ignore[index]


def test_the_record_is_read_only() -> None:
    card = ModelCard.from_meta(CLASSIFIER_META)
    with pytest.raises(dataclasses.FrozenInstanceError):
        card.temperature = 2.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        card.crop["margin"] = 0.5  # type: ignore[index]


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"input_size": 64}, "no 'arch'"),
        ({"arch": "timm:x"}, "input_size"),
        ({"arch": "timm:x", "input_size": 64, "intensity_norm": "zscore_v9"}, "unknown intensity_norm"),
        ([1, 2], "JSON object"),
    ],
)
def test_an_unusable_card_is_refused_with_the_field_named(meta, match) -> None:
    with pytest.raises(ValueError, match=match):
        ModelCard.from_meta(meta)


def test_load_model_parses_the_card_once_and_refuses_a_broken_one(tmp_path) -> None:
    wd = make_tiny_weights(tmp_path / "w")
    model = load_model(wd, "classifier", "tiny")
    assert model.card is model.card and model.card.input_size == 64 and model.card.version == "tiny"
    model.meta["tta"] = True  # an edited dict is parsed again, never read stale
    assert model.card.tta is True
    assert read_card(wd, "segmenter", "tiny").threshold == 0.5
    card_file = wd / "classifier" / "tiny" / "metadata.json"
    card_file.write_text(json.dumps({**json.loads(card_file.read_text()), "intensity_norm": "zscore_v9"}))
    with pytest.raises(ModelBrokenError, match="unknown intensity_norm"):
        load_model(wd, "classifier", "tiny")


def test_every_shipped_card_parses_to_what_its_json_says() -> None:
    from triage.config import get_settings
    from triage.models import TASKS, list_versions, read_metadata

    wd = get_settings().weights_dir
    seen = 0
    for task in TASKS:
        for version in list_versions(wd, task):
            meta, card = read_metadata(wd, task, version), read_card(wd, task, version)
            assert card.task == task and card.input_size == int(meta["input_size"])
            assert (card.mean, card.std) == (meta["normalization"]["mean"], meta["normalization"]["std"])
            assert dict(card.crop) == (meta.get("crop") or LEGACY_CROP)
            assert card.tta == bool(meta.get("tta", False))
            if task == "classifier":
                assert card.temperature == meta["temperature"] and card.ood_threshold == meta["ood"]["threshold"]
            else:
                assert (card.threshold, card.min_area_frac) == (meta["threshold"], meta["min_area_frac"])
            seen += 1
    if not seen:
        pytest.skip("no shipped weights in this checkout")


def test_a_card_dict_describing_only_the_input_drives_the_transform() -> None:
    """Grad-CAM's helpers pass the input part of a card; building a network still needs ``arch``."""
    card = ModelCard.of({"input_size": 32, "normalization": {"mean": 0.0, "std": 1.0}})
    assert (card.input_size, card.mean, card.std, card.arch) == (32, 0.0, 1.0, "")
    assert ModelCard.of(card) is card
    with pytest.raises(ValueError, match="'arch'"):
        ModelCard.from_meta({"input_size": 32})
