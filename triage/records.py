"""Class order and the frozen records that flow through the pipeline.

``TumorClass`` is the only definition of class order: model outputs, CSV columns and
metadata all follow ``CLASSES``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum

import numpy as np

from triage.clock import utc_now
from triage.errors import WorklistError


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


# ----- the worklist's case (issue 24: one record on both sides of the worklist) -----------------

# The states a case can be in (the schema's CHECK); a study can also be partly reviewed.
REVIEW_STATUSES: tuple[str, ...] = tuple(
    s.value for s in (ReviewState.UNREVIEWED, ReviewState.CONFIRMED, ReviewState.CORRECTED, ReviewState.SIGNED_OFF)
)
PROB_COLUMNS: tuple[str, ...] = tuple(f"p_{c}" for c in CLASSES)
# The fields only the worklist's review methods write (refused by ``Case.from_mapping``).
REVIEW_FIELDS: tuple[str, ...] = (
    "review_status",
    "reviewed_label",
    "mask_rejected",
    "note",
    "reviewer",
    "reviewed_at",
    "revision",
)
_FLAGS = {f.value: f for f in Flag}


def check_label(label: object, what: str = "label") -> str:
    """``label`` as a class name; :class:`WorklistError` when it is not one of ``CLASSES``."""
    if label not in CLASSES:
        raise WorklistError(f"{what} must be one of {', '.join(CLASSES)}; got {label!r}")
    return str(label)


def finite(value: object, column: str) -> float:
    """``value`` as a finite float; :class:`WorklistError` naming ``column`` otherwise."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise WorklistError(f"{column} must be a number, got {value!r}") from exc
    if not math.isfinite(number):
        raise WorklistError(f"{column} must be finite, got {number}")
    return number


def iso_utc(value: object) -> str:
    """Normalise a datetime or ISO string to ISO-8601 UTC (naive values are taken as UTC)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise WorklistError(f"received_at is not an ISO-8601 time: {value!r}") from exc
    if not isinstance(value, datetime):
        raise WorklistError(f"received_at must be a datetime or ISO string, got {type(value).__name__}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _json_default(obj: object) -> object:
    """JSON fallback for numpy scalars/arrays, paths and anything else (as text)."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def dumps(obj: object) -> str:
    """JSON as the worklist stores it (sorted keys; numpy values as lists, anything else as text)."""
    return json.dumps(obj, default=_json_default, sort_keys=True)


def _flags(flags: object) -> tuple[str, ...]:
    """Flags as a tuple: the known ones as :class:`Flag`, any other as its text."""
    if flags is None:
        return ()
    if isinstance(flags, str):
        flags = [flags]
    if not isinstance(flags, (list, tuple, set, frozenset)):
        raise WorklistError(f"flags must be a list of strings, got {type(flags).__name__}")
    return tuple(_FLAGS.get(str(f), str(f)) for f in flags)


def _optional_text(value: object) -> str | None:
    return None if value is None else str(value)


def _key(value: object) -> str | None:
    return None if not value else str(value)


MAX_THUMBNAIL_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Case:
    """One worklist case (a slice): what :meth:`Worklist.add_case` takes and every case read returns.

    ``probs``: the calibrated probabilities in ``CLASSES`` order (``p_<class>`` columns when stored).
    ``flags``: :class:`Flag` members (a flag this version does not know stays its text).
    ``extra``: anything else known of the slice (frame, pixel spacing, DICOM header summary...), as JSON
    values. The review fields (``review_status`` to ``revision``) are written by the worklist's review
    methods only. Construction checks and normalises every field (errors are :class:`WorklistError`),
    so a ``Case`` read back from the worklist equals the one added.
    """

    scan_id: str
    label: str
    probs: tuple[float, ...]
    risk: float
    name: str = ""
    stored_path: str = ""
    received_at: str = ""  # ISO-8601 UTC; empty: now
    flags: tuple[str, ...] = ()
    ood: bool = False
    tumor_area_px: int = 0
    tumor_area_mm2: float | None = None
    mask_path: str | None = None
    thumbnail: bytes | None = field(default=None, repr=False)  # PNG
    classifier_version: str = ""
    segmenter_version: str = ""
    truth_label: str | None = None
    truth_mask_path: str | None = None
    study_key: str | None = None
    series_key: str | None = None
    instance_key: str | None = None
    slice_order: float | None = None
    extra: dict = field(default_factory=dict)
    review_status: str = ReviewState.UNREVIEWED
    reviewed_label: str | None = None
    mask_rejected: bool = False
    note: str = ""
    reviewer: str | None = None
    reviewed_at: str | None = None
    revision: int = 0

    def __post_init__(self) -> None:
        # The one home of the case rules (formerly the worklist's _case_values / _column_values).
        if self.scan_id in (None, "") or self.label in (None, "") or self.risk in (None, ""):
            missing = [n for n in ("scan_id", "label", "risk") if getattr(self, n) in (None, "")]
            raise WorklistError(f"case is missing required fields: {', '.join(missing)}")
        probs = self.probs
        if probs is None or isinstance(probs, (str, bytes)) or len(probs) != len(CLASSES):
            raise WorklistError(f"probs must have {len(CLASSES)} values (order {', '.join(CLASSES)})")
        thumbnail = self.thumbnail
        if thumbnail is not None:
            if not isinstance(thumbnail, (bytes, bytearray, memoryview)):
                raise WorklistError("thumbnail must be PNG bytes")
            thumbnail = bytes(thumbnail)
            if len(thumbnail) > MAX_THUMBNAIL_BYTES:
                raise WorklistError(f"thumbnail is {len(thumbnail)} bytes; the limit is {MAX_THUMBNAIL_BYTES}")
        extra = self.extra
        if extra is not None and not isinstance(extra, Mapping):
            raise WorklistError(f"extra must be a mapping, got {type(extra).__name__}")
        if self.review_status not in REVIEW_STATUSES:
            raise WorklistError(f"review_status must be one of {', '.join(REVIEW_STATUSES)}")
        values = {
            "scan_id": str(self.scan_id),
            "label": check_label(self.label),
            "probs": tuple(finite(p, c) for p, c in zip(probs, PROB_COLUMNS)),
            "risk": finite(self.risk, "risk"),
            "name": str(self.name or ""),
            "stored_path": str(self.stored_path or ""),
            "received_at": iso_utc(self.received_at) if self.received_at else utc_now(),
            "flags": _flags(self.flags),
            "ood": bool(self.ood),
            "tumor_area_px": int(self.tumor_area_px or 0),
            "tumor_area_mm2": None if self.tumor_area_mm2 is None else finite(self.tumor_area_mm2, "tumor_area_mm2"),
            "mask_path": _optional_text(self.mask_path),
            "thumbnail": thumbnail,
            "classifier_version": str(self.classifier_version or ""),
            "segmenter_version": str(self.segmenter_version or ""),
            "truth_label": None if self.truth_label is None else check_label(self.truth_label, "truth_label"),
            "truth_mask_path": _optional_text(self.truth_mask_path),
            "study_key": _key(self.study_key),
            "series_key": _key(self.series_key),
            "instance_key": _key(self.instance_key),
            "slice_order": None if self.slice_order is None else finite(self.slice_order, "slice_order"),
            # Through JSON once, as the worklist stores it: the case read back equals this one.
            "extra": json.loads(dumps(dict(extra or {}))),
            "review_status": ReviewState(self.review_status),
            "reviewed_label": (
                None if self.reviewed_label is None else check_label(self.reviewed_label, "reviewed_label")
            ),
            "mask_rejected": bool(self.mask_rejected),
            "note": str(self.note or ""),
            "reviewer": _optional_text(self.reviewer),
            "reviewed_at": _optional_text(self.reviewed_at),
            "revision": int(self.revision or 0),
        }
        if (values["series_key"] is None) != (values["study_key"] is None):
            raise WorklistError("a case in a series needs both study_key and series_key")
        for name, value in values.items():
            object.__setattr__(self, name, value)  # frozen: set once, here

    @classmethod
    def from_mapping(cls, case: Mapping) -> Case:
        """A new case from a dict of worklist columns (``p_<class>`` or ``probs``; unknown keys go to
        ``extra``). Review fields are refused: only the review methods write them."""
        case = dict(case)
        probs = case.pop("probs", None)
        if probs is not None and not any(c in case for c in PROB_COLUMNS):
            if len(probs) != len(CLASSES):
                raise WorklistError(f"probs must have {len(CLASSES)} values (order {', '.join(CLASSES)})")
            case.update(zip(PROB_COLUMNS, probs))
        forbidden = sorted(set(REVIEW_FIELDS) & case.keys())
        if forbidden:
            raise WorklistError(f"add_case cannot set review fields {forbidden}; use review()")
        missing = [c for c in ("scan_id", "label", *PROB_COLUMNS, "risk") if case.get(c) in (None, "")]
        if missing:
            raise WorklistError(f"case is missing required fields: {', '.join(missing)}")
        probs = tuple(case.pop(c) for c in PROB_COLUMNS)
        extra = dict(case.pop("extra", None) or {})
        known = INPUT_FIELDS & case.keys()
        extra.update({k: v for k, v in case.items() if k not in known})
        return cls(probs=probs, extra=extra, **{k: case[k] for k in known})

    @classmethod
    def from_stored(cls, values: Mapping) -> Case:
        """A case from a worklist row already decoded (flags/extra as JSON values, ``p_<class>``
        columns), without the checks: the worklist checked it when it was written, and a page
        lists every case on each run."""
        case = object.__new__(cls)
        # Straight into the instance dict: a frozen dataclass's __setattr__ refuses, and
        # object.__setattr__ per field made reading 5,000 cases half as slow again.
        case.__dict__.update(
            {name: values[name] for name in _STORED_FIELDS},
            probs=tuple(values[c] for c in PROB_COLUMNS),
            flags=_flags(values["flags"]),
            ood=bool(values["ood"]),
            mask_rejected=bool(values["mask_rejected"]),
            review_status=ReviewState(values["review_status"]),
        )
        return case

    def prob(self, cls: str) -> float:
        """The calibrated probability of class ``cls``."""
        return self.probs[CLASSES.index(cls)]

    @property
    def probabilities(self) -> dict[str, float]:
        """``{class: probability}`` in ``CLASSES`` order."""
        return dict(zip(CLASSES, self.probs))

    @property
    def effective_label(self) -> str:
        """The reviewer's label when there is one, else the model's."""
        return self.reviewed_label or self.label

    @property
    def study(self) -> str:
        """The study this slice belongs to (``case:<scan_id>`` for a slice outside any series)."""
        return self.study_key or f"case:{self.scan_id}"

    @property
    def reviewed(self) -> bool:
        return self.review_status != ReviewState.UNREVIEWED

    def as_row(self) -> dict:
        """The case as worklist columns (``p_<class>`` probabilities, flags a list of text): for CSV
        export and JSON."""
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("probs", "flags")}
        row.update(zip(PROB_COLUMNS, self.probs))
        row["flags"] = [str(f) for f in self.flags]
        row["review_status"] = str(self.review_status)
        return row


# The fields add_case writes as their own columns (the review fields are review()'s; probs and extra are encoded).
INPUT_FIELDS = frozenset(f.name for f in fields(Case)) - set(REVIEW_FIELDS) - {"probs", "extra"}
_STORED_FIELDS = tuple(
    f.name for f in fields(Case) if f.name not in ("probs", "flags", "ood", "mask_rejected", "review_status")
)
