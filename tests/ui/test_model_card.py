"""Model-card rows: lineage, test-time augmentation and cross-sequence augmentation are shown."""

import pytest

from triage.card import ModelCard
from triage.ui.model_card import card_rows


def _card(task: str, **meta) -> ModelCard:
    """A parsed card with an input size (every loadable card has one) and the given fields."""
    return ModelCard.from_meta({"input_size": 64, **meta}, task=task)


def test_card_rows_show_lineage_and_augmentation():
    meta = {
        "arch": "monai:UNet",
        "version": "v2",
        "trained": True,
        "input_size": 160,
        "threshold": 0.5,
        "min_area_frac": 0.002,
        "tta": True,
        "wall_time_min": 78.0,
        "loss": "per-image Dice + BCE",
        "train_config": {"init_from": "v1", "sequence_aug": 0.4},
    }
    rows = dict(card_rows(_card("segmenter", **meta)))
    assert rows["Training loss"] == "per-image Dice + BCE"
    assert rows["Lineage"].startswith("fine-tuned from version v1")
    assert "mirror" in rows["Test-time augmentation"]
    assert "40%" in rows["Cross-sequence augmentation"]


def test_card_row_shows_class_conditional_sequence_augmentation():
    meta = {
        "arch": "timm:regnetx_004",
        "trained": True,
        "classes": ["no_tumor"],
        "train_config": {"sequence_aug": 0.5, "sequence_aug_no_tumor": 0.1, "enhancement_aug": 0.35},
    }
    rows = dict(card_rows(_card("classifier", **meta)))
    row = rows["Cross-sequence augmentation"]
    assert "50% of tumor" in row and "10% of no-tumor" in row
    assert "35%" in rows["Enhancement suppression"]


def test_v1_style_card_has_no_lineage_rows():
    rows = dict(card_rows(_card("classifier", arch="timm:regnetx_004", trained=True, classes=["no_tumor"])))
    assert "Lineage" not in rows and "Cross-sequence augmentation" not in rows
    assert "Enhancement suppression" not in rows


def test_card_row_shows_intensity_standardisation_only_when_used():
    meta = {"arch": "timm:regnetx_004", "trained": True, "classes": ["no_tumor"], "crop": {"margin": 0.04}}
    assert "Intensity standardisation" not in dict(card_rows(_card("classifier", **meta)))
    rows = dict(card_rows(_card("classifier", **meta, intensity_norm="head_percentiles_v1")))
    assert rows["Intensity standardisation"].startswith("head_percentiles_v1")


def test_card_rows_show_the_values_the_model_runs_with():
    """A card that leaves a field out is shown with the default the pipeline applies (from triage.card)."""
    rows = dict(card_rows(_card("classifier", arch="timm:regnetx_004", version="v1")))
    assert rows["Temperature (calibration)"] == "1.000" and rows["Test-time augmentation"] == "none"
    assert rows["Brain-crop settings"]  # v1 cards ran with the legacy crop
    assert "Out-of-distribution threshold" not in rows  # no limit: nothing is flagged out of distribution
    seg = dict(card_rows(_card("segmenter", arch="monai:UNet")))
    assert (seg["Mask threshold"], seg["Minimum mask area"]) == ("0.50", "0.0% of the brain crop")
    ood = {"threshold": 12.34, "threshold_rule": "99.5th percentile of validation scores"}
    rows = dict(card_rows(_card("classifier", arch="timm:regnetx_004", ood=ood, best_epoch=7, preprocess="crop")))
    assert rows["Out-of-distribution threshold"] == "12.3 (99.5th percentile of validation scores)"
    assert (rows["Best epoch"], rows["Preprocessing"]) == ("7", "crop")


def test_metric_rows_read_the_validation_block_of_the_card():
    from triage.ui.model_card import metric_rows, per_class_rows

    after = {"n": 200, "accuracy": 0.9, "accuracy_ci95": [0.85, 0.94], "per_class": {"glioma": {"recall": 0.8}}}
    card = _card("classifier", arch="timm:x", metrics={"validation": {"after_calibration": after, "ece_after": 0.02}})
    rows = dict(metric_rows(card))
    assert rows["Accuracy"] == "90.0% (95% CI 85.0%–94.0%)" and rows["ECE after calibration"] == "0.020"
    assert per_class_rows(card) == [{"class": "glioma", "recall": 0.8}]
    seg = _card("segmenter", arch="monai:UNet", metrics={"validation": {"dice": 0.81, "n_tumor": 5, "n_empty": 7}})
    assert dict(metric_rows(seg))["Tumor / tumor-free validation slices"] == "5 / 7"
    assert metric_rows(_card("classifier", arch="timm:x")) == [] and per_class_rows(_card("segmenter", arch="u")) == []


def test_licence_rows_name_non_commercial_sources() -> None:
    from triage.lifecycle.sources import non_commercial, training_sources
    from triage.ui.model_card import licence_rows

    info = {"sources": {"brisc2025": {"train": 10, "val": 2}, "brats2015_hgg6": {"train": 5, "val": 1}}}
    sources = training_sources(info)
    rows = licence_rows(_card("classifier", arch="timm:x", training_sources=sources))
    assert [(r["source"], r["training images"], r["commercial use"]) for r in rows] == [
        ("brisc2025", 10, "allowed"),
        ("brats2015_hgg6", 5, "NOT allowed"),
    ]
    assert non_commercial(sources) and not non_commercial(sources[:1])
    assert licence_rows(_card("classifier", arch="timm:x")) == []


def test_model_change_rows_are_newest_first(tmp_path) -> None:
    from triage.config import get_settings
    from triage.lifecycle.promotion import ModelChange, record_change
    from triage.ui.model_card import model_change_rows

    cfg = get_settings(data_dir=tmp_path)
    assert model_change_rows(cfg) == []
    first = ModelChange("2026-12-01T10:00:00.5Z", "classifier", None, "v1", "a", "rollback", "first")
    record_change(tmp_path, first)
    record_change(
        tmp_path, ModelChange("2026-12-02T11:00:00Z", "classifier", "v1", "v2", "b", "promotion", figures={"n": 300})
    )
    rows = model_change_rows(cfg)
    assert [r["to"] for r in rows] == ["v2", "v1"]
    assert rows[0]["images compared"] == 300 and rows[1]["images compared"] == ""
    assert (rows[1]["from"], rows[1]["time (UTC)"]) == ("", "2026-12-01 10:00:00")


def test_model_cards_are_records_and_a_broken_card_is_a_model_error(tmp_path, monkeypatch) -> None:
    from tests.model_fixtures import make_tiny_weights
    from triage.errors import ModelBrokenError
    from triage.ui.resources import model_cards, models_trained

    wd = make_tiny_weights(tmp_path / "w")
    monkeypatch.setenv("TRIAGE_WEIGHTS_DIR", str(wd))
    cards = model_cards()
    assert set(cards) == {"classifier", "segmenter"} and all(isinstance(c, ModelCard) for c in cards.values())
    assert cards["classifier"].version == "tiny" and models_trained() is False
    (wd / "segmenter" / "tiny" / "metadata.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelBrokenError, match="segmenter version 'tiny'"):
        model_cards()
