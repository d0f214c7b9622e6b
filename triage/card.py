"""The model card as a typed, read-only record, parsed once when a model version loads.

``metadata.json`` stays the on-disk form (training and calibration write it as a dict); every
reader goes through :class:`ModelCard`, so a default, a legacy rule or a check lives here and
nowhere else (as timm's ``PretrainedCfg`` does for its models):

- ``crop``: cards written before the crop was recorded (v1 weights) used the legacy crop;
- ``normalization``: mean 0.2 / std 0.25 of ``x / 255`` when a card does not say;
- ``temperature`` 1.0, ``tta`` off, ``threshold`` 0.5, ``min_area_frac`` 0, no OOD threshold
  (nothing is out of distribution) and no fitted flag rule (risk.py's fixed rule) when absent;
- ``intensity_norm`` must be one this code implements, checked here so a card asking for an
  unknown standardisation fails when the model loads, not at the first scan;
- the descriptive blocks (training data and sources, epoch history, metrics, training settings) are
  empty when a card predates them, so the Model page and the comparisons never repeat a default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from triage.flags import FlagRule
from triage.preprocess import LEGACY_CROP, check_intensity_norm
from triage.records import CLASSES

DEFAULT_MEAN = 0.2
DEFAULT_STD = 0.25


def _frozen(value: Any) -> Mapping:
    return MappingProxyType(dict(value)) if isinstance(value, Mapping) else MappingProxyType({})


def _frozen_list(value: Any) -> tuple[Mapping, ...]:
    """A JSON list of objects as a tuple of read-only mappings (entries that are not objects are dropped)."""
    if not isinstance(value, (list, tuple)):
        return ()
    return tuple(_frozen(v) for v in value if isinstance(v, Mapping))


@dataclass(frozen=True)
class ModelCard:
    """What a model version's ``metadata.json`` says, with its defaults applied and checked.

    The inference fields (input size, normalisation, crop, temperature, TTA, thresholds, flag rule)
    are what the per-scan path needs; the descriptive ones (``data``, ``metrics``, ``train_config``,
    ...) are read-only views for the model pages and comparisons. ``raw`` is the parsed JSON itself,
    for keys this record does not name.
    """

    task: str
    arch: str
    input_size: int
    arch_kwargs: Mapping = field(default_factory=lambda: MappingProxyType({}))
    version: str = ""
    trained: bool = False
    created: str = ""
    mean: float = DEFAULT_MEAN
    std: float = DEFAULT_STD
    crop: Mapping = field(default_factory=lambda: MappingProxyType(dict(LEGACY_CROP)))
    intensity_norm: str | None = None
    tta: bool = False
    in_chans: int = 1
    # classifier
    classes: tuple[str, ...] = CLASSES
    temperature: float = 1.0
    ood_threshold: float = math.inf
    ood_rule: str = ""  # how the OOD threshold was chosen ("99.5th percentile of validation scores")
    flag_rule: FlagRule | None = None
    gradcam_layer: str = ""
    # segmenter
    threshold: float = 0.5
    min_area_frac: float = 0.0
    # descriptive
    preprocess: str = ""
    loss: str = ""  # the segmenter's training loss, as the card names it
    data: Mapping = field(default_factory=lambda: MappingProxyType({}))
    training_sources: tuple[Mapping, ...] = ()  # {source, train_images, licence, commercial_use} per source
    history: tuple[Mapping, ...] = ()  # one entry per training epoch (losses, validation metrics)
    best_epoch: int | None = None
    metrics: Mapping = field(default_factory=lambda: MappingProxyType({}))
    train_config: Mapping = field(default_factory=lambda: MappingProxyType({}))
    wall_time_min: float | None = None
    raw: Mapping = field(default_factory=lambda: MappingProxyType({}), repr=False)

    @classmethod
    def from_meta(
        cls, meta: Mapping, task: str | None = None, version: str | None = None, need_arch: bool = True
    ) -> ModelCard:
        """Parse a ``metadata.json`` dict (ValueError naming the field when it is unusable).

        ``task`` / ``version`` come from the version's folder when the card does not record them;
        ``need_arch=False`` accepts a card that only describes the model input (no network is built from it).
        """
        if not isinstance(meta, Mapping):
            raise ValueError(f"a model card must be a JSON object, got {type(meta).__name__}")
        if (need_arch and not isinstance(meta.get("arch"), str)) or "input_size" not in meta:
            raise ValueError("metadata.json has no 'arch' or 'input_size'")
        norm = meta.get("normalization") or {}
        intensity_norm = meta.get("intensity_norm") or None
        check_intensity_norm(intensity_norm)
        ood = meta.get("ood") or {}
        wall, best = meta.get("wall_time_min"), meta.get("best_epoch")
        return cls(
            task=str(meta.get("task") or task or ""),
            arch=str(meta.get("arch") or ""),
            input_size=int(meta["input_size"]),
            arch_kwargs=_frozen(meta.get("arch_kwargs")),
            version=str(meta.get("version") or version or ""),
            trained=bool(meta.get("trained", False)),
            created=str(meta.get("created") or ""),
            mean=float(norm.get("mean", DEFAULT_MEAN)),
            std=float(norm.get("std", DEFAULT_STD)),
            crop=_frozen(meta.get("crop") or LEGACY_CROP),
            intensity_norm=intensity_norm,
            tta=bool(meta.get("tta", False)),
            in_chans=int(meta.get("in_chans", 1)),
            classes=tuple(meta.get("classes") or CLASSES),
            temperature=float(meta.get("temperature") or 1.0),
            ood_threshold=float(ood.get("threshold") if ood.get("threshold") is not None else math.inf),
            ood_rule=str(ood.get("threshold_rule") or ""),
            flag_rule=FlagRule.from_card(meta.get("flag_rule")),
            gradcam_layer=str(meta.get("gradcam_layer") or "").strip(),
            threshold=float(meta.get("threshold") if meta.get("threshold") is not None else 0.5),
            min_area_frac=float(meta.get("min_area_frac") or 0.0),
            preprocess=str(meta.get("preprocess") or ""),
            loss=str(meta.get("loss") or ""),
            data=_frozen(meta.get("data")),
            training_sources=_frozen_list(meta.get("training_sources")),
            history=_frozen_list(meta.get("history")),
            best_epoch=None if best is None else int(best),
            metrics=_frozen(meta.get("metrics")),
            train_config=_frozen(meta.get("train_config")),
            wall_time_min=None if wall is None else float(wall),
            raw=MappingProxyType(dict(meta)),
        )

    @classmethod
    def of(cls, card: ModelCard | Mapping) -> ModelCard:
        """``card`` itself, or the record parsed from a card dict (for callers holding either; the dict
        may describe the model input only, as Grad-CAM's helpers pass it)."""
        return card if isinstance(card, ModelCard) else cls.from_meta(card, need_arch=False)

    def validation(self) -> Mapping:
        """The card's validation metrics (empty when it has none)."""
        return self.metrics.get("validation") or {}

    @property
    def has_ood_threshold(self) -> bool:
        """True when the card sets an out-of-distribution limit (without one nothing is flagged OOD)."""
        return math.isfinite(self.ood_threshold)
