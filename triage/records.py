"""Class order and the frozen records that flow through the pipeline.

``TumorClass`` is the only definition of class order: model outputs, CSV columns and
metadata all follow ``CLASSES``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


class TumorClass(StrEnum):
    NO_TUMOR = "no_tumor"
    GLIOMA = "glioma"
    MENINGIOMA = "meningioma"
    PITUITARY = "pituitary"


CLASSES: tuple[str, ...] = tuple(c.value for c in TumorClass)


# The enums below name values that are stored (worklist columns, job files, CSV, JSON): their
# values never change, so old databases and files read the same. StrEnum members compare and
# hash equal to their value, so code holding a plain string from storage still matches.


class Flag(StrEnum):
    """Why a case needs a closer look (the worklist's ``flags`` column)."""

    UNCERTAIN = "uncertain"  # the model is unsure between classes
    OOD = "ood"  # the image is unlike the training data
    DISAGREEMENT = "disagreement"  # classifier and segmenter disagree
    SUSPECT_HEADER = "suspect_header"  # a DICOM header value was implausible and dropped
    UNTRAINED_MODEL = "untrained_model"  # an untrained placeholder model produced the result
    REJECTED = "rejected"  # the file was not analysed (the reason is in the result's error)
    NOT_BRAIN = "not_brain"  # with REJECTED: the image is not a brain-MRI slice


class ReviewState(StrEnum):
    """A case's review state (``review_status``); ``PARTLY_REVIEWED`` is a study's only."""

    UNREVIEWED = "unreviewed"
    CONFIRMED = "confirmed"
    CORRECTED = "corrected"
    SIGNED_OFF = "signed_off"
    PARTLY_REVIEWED = "partly_reviewed"  # a study whose slices are in different states


class JobPhase(StrEnum):
    """A training job's status (stored in its job file) and the finer phases shown while it runs."""

    PREPARING = "preparing"
    TRAINING = "training"
    FINISHING = "finishing"
    CANCELLING = "cancelling"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    MISSING = "missing"  # a background task that was never started (lifecycle.background.BACKGROUND)


class SourceKind(StrEnum):
    """Where training data is imported from (the Training page and ``import_source``)."""

    FOLDER = "folder"
    ZIP = "zip"
    MANIFEST = "manifest"
    WORKLIST = "worklist"


class SeriesSource(StrEnum):
    """What a series was built from (the ``series.source`` column)."""

    DICOM = "dicom"
    NIFTI = "nifti"
    IMAGES = "images"
    SINGLE = "single"  # a lone file: a one-slice study


# Folder names seen in public datasets, mapped to our class names.
CLASS_ALIASES: dict[str, str] = {
    "no_tumor": "no_tumor",
    "notumor": "no_tumor",
    "no": "no_tumor",
    "normal": "no_tumor",
    "no tumor": "no_tumor",
    "no-tumor": "no_tumor",
    "healthy": "no_tumor",
    "glioma": "glioma",
    "glioma_tumor": "glioma",
    "gliomas": "glioma",
    "meningioma": "meningioma",
    "meningioma_tumor": "meningioma",
    "meningiomas": "meningioma",
    "pituitary": "pituitary",
    "pituitary_tumor": "pituitary",
    "pituitary_adenoma": "pituitary",
}


def normalize_label(name: str) -> str | None:
    """Map a folder or manifest label (``glioma_tumor``, ``notumor``...) to a class name, or None."""
    return CLASS_ALIASES.get(name.strip().lower())


@dataclass(frozen=True)
class Scan:
    """One decoded 2D slice.

    pixels: uint8 (H, W) greyscale, display-ready (windowed, MONOCHROME1 inverted).
    scan_id: sha256 of the file bytes (plus frame index for multi-frame files), hex.
    pixel_spacing: (row_mm, col_mm) when the file says so, else None.
    """

    scan_id: str
    name: str
    pixels: np.ndarray
    pixel_spacing: tuple[float, float] | None = None
    source_format: str = ""
    frame: int | None = None
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


@dataclass(frozen=True)
class BrainCrop:
    """The brain region of a scan. bbox = (x0, y0, x1, y1) in scan pixels, x1/y1 exclusive."""

    image: np.ndarray
    bbox: tuple[int, int, int, int]
    found: bool
    head_fraction: float


@dataclass(frozen=True)
class Prediction:
    """Calibrated class probabilities (order ``CLASSES``) and the out-of-distribution view."""

    probs: np.ndarray
    label: str
    confidence: float
    entropy: float
    ood_score: float
    ood: bool

    def prob(self, cls: str) -> float:
        return float(self.probs[CLASSES.index(cls)])


@dataclass(frozen=True)
class Segmentation:
    """Binary tumor mask at the scan's resolution (bool, H x W) and its measures."""

    mask: np.ndarray
    area_px: int
    area_mm2: float | None
    bbox: tuple[int, int, int, int] | None
    max_prob: float


@dataclass(frozen=True)
class Explanation:
    """A class-activation heatmap (float32 H x W in [0, 1], scan resolution)."""

    heatmap: np.ndarray
    target_class: str
    method: str


@dataclass(frozen=True)
class CaseResult:
    """Everything the pipeline knows about one input file (or one frame of it)."""

    name: str
    status: str  # "ok" | "rejected"
    scan_id: str = ""
    error: str = ""
    scan: Scan | None = None
    crop: BrainCrop | None = None
    prediction: Prediction | None = None
    segmentation: Segmentation | None = None
    explanation: Explanation | None = None
    risk: float = 0.0
    flags: tuple[str, ...] = ()
    timings_ms: dict = field(default_factory=dict)
    # The model versions that produced this result ({"classifier": ..., "segmenter": ...}): read from
    # the bundle the analysis used, so a promotion during the analysis cannot relabel it.
    model_versions: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"
