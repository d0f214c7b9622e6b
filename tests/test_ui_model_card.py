"""Model-card rows: lineage, test-time augmentation and cross-sequence augmentation are shown."""

from triage.ui.model_card import card_rows


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
    rows = dict(card_rows("segmenter", meta))
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
    rows = dict(card_rows("classifier", meta))
    row = rows["Cross-sequence augmentation"]
    assert "50% of tumor" in row and "10% of no-tumor" in row
    assert "35%" in rows["Enhancement suppression"]


def test_v1_style_card_has_no_lineage_rows():
    rows = dict(card_rows("classifier", {"arch": "timm:regnetx_004", "trained": True, "classes": ["no_tumor"]}))
    assert "Lineage" not in rows and "Cross-sequence augmentation" not in rows
    assert "Enhancement suppression" not in rows


def test_card_row_shows_intensity_standardisation_only_when_used():
    meta = {"arch": "timm:regnetx_004", "trained": True, "classes": ["no_tumor"], "crop": {"margin": 0.04}}
    assert "Intensity standardisation" not in dict(card_rows("classifier", meta))
    rows = dict(card_rows("classifier", {**meta, "intensity_norm": "head_percentiles_v1"}))
    assert rows["Intensity standardisation"].startswith("head_percentiles_v1")


def test_licence_rows_name_non_commercial_sources() -> None:
    from triage.lifecycle.sources import non_commercial, training_sources
    from triage.ui.model_card import licence_rows

    info = {"sources": {"brisc2025": {"train": 10, "val": 2}, "brats2015_hgg6": {"train": 5, "val": 1}}}
    sources = training_sources(info)
    rows = licence_rows({"training_sources": sources})
    assert [(r["source"], r["training images"], r["commercial use"]) for r in rows] == [
        ("brisc2025", 10, "allowed"),
        ("brats2015_hgg6", 5, "NOT allowed"),
    ]
    assert non_commercial(sources) and not non_commercial(sources[:1])
    assert licence_rows({}) == []
