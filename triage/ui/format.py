"""Display text and tables for the pages (no streamlit here, so it is testable on its own)."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Sequence

import pandas as pd

from triage.privacy import case_ref
from triage.records import CLASSES, Case, Flag, ReviewState

# Every ASCII punctuation character may be backslash-escaped in CommonMark, and escaping all of
# them is the only rule that needs no list of today's syntax: emphasis, links and images
# (``![p](https://host)`` would make every reader's browser fetch from that host), headings,
# lists, tables, code, HTML, LaTeX ($), and Streamlit's own ``:red[...]`` / ``:material/x:``.
_MD_SPECIAL = re.compile(r"([!-/:-@\[-`{-~])")


def escape_md(text: object) -> str:
    """``text`` as literal characters inside Markdown (st.markdown, st.caption, st.info/warning/error/
    success, labels...): every ASCII punctuation backslash-escaped, line breaks kept as line breaks.

    The one way user-controlled text (file names, notes, reviewer names, error texts, labels from
    imports) is mixed with our own bold labels; alone, user text goes to st.text / st.code / tables.
    """
    lines = str(text if text is not None else "").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    # Leading spaces would make an indented code block; trailing ones a hard break: neither is user intent.
    return "  \n".join(_MD_SPECIAL.sub(r"\\\1", line.strip()) for line in lines)


CLASS_TEXT: dict[str, str] = {
    "no_tumor": "No tumor",
    "glioma": "Glioma",
    "meningioma": "Meningioma",
    "pituitary": "Pituitary",
}

# Flags a reviewer must notice, in the words shown on screen.
FLAG_TEXT: dict[str, str] = {
    Flag.UNCERTAIN: "uncertain",
    Flag.OOD: "outside what the model knows",
    Flag.DISAGREEMENT: "classifier and segmenter disagree",
    Flag.UNTRAINED_MODEL: "untrained model",
    Flag.SUSPECT_HEADER: "implausible DICOM header value ignored",
    Flag.NOT_BRAIN: "not a brain MRI",
    Flag.REJECTED: "rejected",
}
# Flags offered by the worklist filter (the ones analysed cases can carry), as plain strings for widgets.
CASE_FLAGS: tuple[str, ...] = tuple(
    f.value for f in (Flag.UNCERTAIN, Flag.OOD, Flag.DISAGREEMENT, Flag.SUSPECT_HEADER, Flag.UNTRAINED_MODEL)
)

REVIEW_TEXT: dict[str, str] = {
    ReviewState.UNREVIEWED: "unreviewed",
    ReviewState.CONFIRMED: "confirmed",
    ReviewState.CORRECTED: "corrected",
    ReviewState.SIGNED_OFF: "signed off",
    ReviewState.PARTLY_REVIEWED: "partly reviewed",  # a study whose slices are in different states
}


def class_text(label: str | None) -> str:
    """'glioma' -> 'Glioma'; unknown or empty labels are shown as given ('' -> '-')."""
    if not label:
        return "-"
    return CLASS_TEXT.get(label, str(label))


def flag_text(flags: Iterable[str]) -> str:
    """Readable, comma-separated flags ('' when there are none)."""
    return ", ".join(FLAG_TEXT.get(f, str(f)) for f in flags if f != Flag.REJECTED)


def thumbnail_uri(png: bytes | None) -> str | None:
    """PNG bytes -> a ``data:image/png;base64,...`` URI (None when there is no thumbnail)."""
    if not png:
        return None
    return "data:image/png;base64," + base64.b64encode(bytes(png)).decode("ascii")


def case_name(case: Case, hide_names: bool = False) -> str:
    """The file name of a case as a page shows it: ``case <id>`` when names are hidden (or missing)."""
    return case_ref(case.scan_id) if hide_names or not case.name else case.name


def case_title(case: Case, hide_names: bool = False) -> str:
    """One-line description of a case for pickers: name, class, risk."""
    return f"{case_name(case, hide_names)} — {class_text(case.effective_label)} — risk {case.risk:.2f}"


WORKLIST_COLUMNS: tuple[str, ...] = (
    "thumbnail",
    "name",
    "class",
    "risk",
    "review",
    "flags",
    *(f"p_{c}" for c in CLASSES),
    "received",
)


def worklist_frame(cases: Sequence[Case], hide_names: bool = False) -> pd.DataFrame:
    """The worklist table: one row per case, in the given order, indexed 0..n-1.

    Columns: thumbnail (data URI), name, class (effective, '(reviewed)' when changed by a
    reviewer), p_<class> in [0, 1], risk in [0, 1], flags (readable text), review, received
    (UTC datetime) and scan_id (for selection, not displayed). ``hide_names``: name is ``case <id>``.
    """
    rows = []
    for c in cases:
        shown = class_text(c.effective_label)
        if c.reviewed_label and c.reviewed_label != c.label:
            shown += " (corrected)"
        rows.append(
            {
                "thumbnail": thumbnail_uri(c.thumbnail),
                "name": case_name(c, hide_names),
                "class": shown,
                **{f"p_{k}": p for k, p in c.probabilities.items()},
                "risk": c.risk,
                "flags": flag_text(c.flags),
                "review": REVIEW_TEXT.get(c.review_status, c.review_status),
                "received": pd.to_datetime(c.received_at, utc=True, errors="coerce"),
                "scan_id": c.scan_id,
            }
        )
    columns = [*WORKLIST_COLUMNS, "scan_id"]
    return pd.DataFrame(rows, columns=columns)


def rejections_frame(rejections: Sequence[dict], hide_names: bool = False) -> pd.DataFrame:
    """Refused uploads: name (``case <content id>`` when names are hidden), reason, received (UTC)."""
    return pd.DataFrame(
        [
            {
                "name": case_ref((r.get("sha256") or "")[:32]) if hide_names else r.get("name", ""),
                "reason": r.get("reason", ""),
                "received": pd.to_datetime(r.get("received_at"), utc=True, errors="coerce"),
            }
            for r in rejections
        ],
        columns=["name", "reason", "received"],
    )


def audit_frame(audit: Sequence[dict]) -> pd.DataFrame:
    """Audit rows (oldest first) for display: when (UTC, seconds), who, action, field, old, new."""
    return pd.DataFrame(
        [
            {
                "when": str(a.get("at", ""))[:19].replace("T", " "),
                "who": a.get("actor", ""),
                "action": str(a.get("action", "")).replace("_", " "),
                "field": a.get("field") or "",
                "old": a.get("old_value") if a.get("old_value") is not None else "",
                "new": a.get("new_value") if a.get("new_value") is not None else "",
            }
            for a in audit
        ],
        columns=["when", "who", "action", "field", "old", "new"],
    )


STUDY_COLUMNS: tuple[str, ...] = (
    "thumbnail",
    "name",
    "open",  # beside the name: visible without scrolling the table sideways at 1366 px
    "slices",
    "suspicious",
    "flagged",
    "class",
    "risk",
    "volume_ml",
    "review",
    "flags",
    "sequence",
    "model",
    "received",
)
EMPTY = "–"  # how a table shows a value that is unknown (never "None")


def study_title(study, hide_names: bool = False) -> str:
    """How a page names a study: a loose slice by its file name (``case <id>`` when hidden); a
    series study by its DICOM description, else (names shown) its volume or folder name, else
    ``study <id>``. ``study``: a :class:`triage.studies.StudySummary`."""
    if study.single:
        return case_name(study.key_case, hide_names)
    series = study.series[0] if study.series else None
    if series is not None and series.source == "dicom" and study.description:
        return study.description  # a DICOM description names the sequence, not the patient
    if not hide_names and series is not None and series.description:
        return series.description
    return f"study {study.study_key[:12]}"


def study_sequence(study) -> str:
    """Modality and sequence description of a study's series ('MR · AX T1 POST, AX FLAIR')."""
    descriptions = [s.description for s in study.series if s.source == "dicom" and s.description]
    parts = [p for p in (study.modality, ", ".join(dict.fromkeys(descriptions))) if p]
    return " · ".join(parts)


def studies_frame(studies: Sequence, hide_names: bool = False) -> pd.DataFrame:
    """The study worklist table, one row per study in the given order, indexed 0..n-1.

    Columns: thumbnail (the key slice), name, slices, suspicious, flagged, class (of the key
    slice), risk (the key slice's; a corrected class's once reviewed), volume_ml (text, "–" when
    unknown), review, flags (key slice), sequence, model (classifier · segmenter versions of the key
    slice), received (UTC), open (a relative link that opens the key slice in Case review, for a new
    tab) and scan_id (the key slice, for opening it; not displayed)."""
    rows = []
    for s in studies:
        key = s.key_case
        rows.append(
            {
                "thumbnail": thumbnail_uri(key.thumbnail),
                "name": study_title(s, hide_names),
                "slices": s.n_slices,
                "suspicious": s.n_suspicious,
                "flagged": s.n_flagged,
                "class": class_text(key.effective_label),
                "risk": float(s.risk),
                "volume_ml": EMPTY if s.volume_ml is None else f"{float(s.volume_ml):.1f}",
                "review": REVIEW_TEXT.get(s.review_status, s.review_status),
                "flags": flag_text(key.flags) or EMPTY,
                "sequence": study_sequence(s) or EMPTY,
                "model": " · ".join(v for v in (key.classifier_version, key.segmenter_version) if v) or EMPTY,
                "received": pd.to_datetime(s.received_at, utc=True, errors="coerce"),
                "open": f"case_review?case={s.key_scan_id}",
                "scan_id": s.key_scan_id,
            }
        )
    return pd.DataFrame(rows, columns=[*STUDY_COLUMNS, "scan_id"])


def series_frame(study, hide_names: bool = False) -> pd.DataFrame:
    """The series of one study: description, slices, suspicious, flagged, risk, key slice
    (its place in the stack), spacing, volume, missing slices; key_scan_id for opening."""
    rows = []
    for s in study.series:
        shown = s.description if (s.source == "dicom" or not hide_names) else ""
        rows.append(
            {
                "series": shown or f"series {s.series_key[:12]}",
                "slices": s.n_slices,
                "suspicious": s.n_suspicious,
                "flagged": s.n_flagged,
                "risk": float(s.risk),
                "key slice": f"{s.key_position} of {s.n_slices}",
                "spacing_mm": s.spacing_mm,
                "volume_ml": None if s.volume_ml is None else round(float(s.volume_ml), 2),
                "missing": s.missing,
                "key_scan_id": s.key_scan_id,
            }
        )
    return pd.DataFrame(rows)
