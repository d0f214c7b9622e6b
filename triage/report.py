"""Per-study PDF report (issue 18), written offline with ReportLab.

Key images with the predicted outline, the findings per series, model versions, the reviewer and
sign-off time, and the "triage aid, not a diagnosis" statement. No streamlit; file names appear
only when names are not hidden (:attr:`Settings.file_names_hidden`).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from xml.sax.saxutils import escape

import cv2
import numpy as np

from triage.clock import utc_now
from triage.errors import InvalidScanError, TriageError
from triage.io import read_mask_path, read_scans
from triage.overlay import mask_contour_overlay
from triage.records import Case, ReviewState
from triage.studies import StudySummary, list_studies
from triage.worklist import Worklist

log = logging.getLogger(__name__)

STATEMENT = "A triage aid, not a diagnosis. Every case must be read by a radiologist."
CLASS_TEXT = {"no_tumor": "No tumour", "glioma": "Glioma", "meningioma": "Meningioma", "pituitary": "Pituitary"}


class ReportError(TriageError):
    """A report cannot be made (unknown study...)."""


def key_image(case: Case) -> np.ndarray | None:
    """The stored slice of a case with its stored predicted outline, uint8 (H, W) or (H, W, 3); None
    when the stored file is missing or unreadable (the report says so instead)."""
    path = case.stored_path
    if not path or not Path(path).is_file():
        return None
    try:
        scans = read_scans(Path(path).read_bytes(), "slice")
    except (InvalidScanError, OSError) as exc:
        log.warning("report: slice %s not readable: %s", Path(path).name, exc)
        return None
    frame = case.extra.get("frame")
    scan = next((s for s in scans if s.frame == frame), scans[0])
    mask_path = case.mask_path
    if mask_path and Path(mask_path).is_file() and not case.mask_rejected:
        try:
            mask = read_mask_path(mask_path)
        except InvalidScanError:
            mask = None
        if mask is not None:
            if mask.shape != scan.shape:
                mask = cv2.resize(mask, (scan.shape[1], scan.shape[0]), interpolation=cv2.INTER_NEAREST)
            return mask_contour_overlay(scan.pixels, mask > 127)
    return scan.pixels


def _png(image: np.ndarray) -> bytes:
    img = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def find_study(worklist: Worklist, ref: str) -> StudySummary:
    """The study with key ``ref``, or the study holding the slice ``ref`` (a scan id, or the start
    of one of at least 8 characters, as pages show them: ``case 3f9a1c2b4d5e``)."""
    ref = str(ref).strip().removeprefix("case ").strip()
    studies = list_studies(worklist)
    for s in studies:
        if ref in (s.study_key, s.key_scan_id) or any(ref in x.scan_ids for x in s.series):
            return s
    if len(ref) >= 8:
        found = [s for s in studies if any(sid.startswith(ref) for x in s.series for sid in x.scan_ids)]
        if len(found) == 1:
            return found[0]
        if found:
            raise ReportError(f"{ref!r} matches slices of {len(found)} studies; give more characters")
    raise ReportError(f"no study or slice {ref!r} in the worklist")


def _text(value: object) -> str:
    return escape(str(value if value is not None else ""))


def study_pdf(worklist: Worklist, study: StudySummary, hide_names: bool = True) -> bytes:
    """The PDF bytes of a study's report.

    Pages: the statement, the study (slices, suspicious and flagged slices, risk, volume), the
    sign-off (reviewer, time, note) or "not signed off", the series table, the key image of each
    series with its outline, the key slice's probabilities and the model versions."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import Image, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    styles = getSampleStyleSheet()
    body, head = styles["BodyText"], styles["Heading2"]
    buf = io.BytesIO()
    doc = SimpleDocTemplate(
        buf, pagesize=A4, title="Brain-MRI triage study report", author="brain-MRI triage workstation"
    )
    story: list = []
    title = f"study {study.study_key[:12]}" if not study.single else f"case {study.key_scan_id[:12]}"
    if study.single and not hide_names and study.key_case.name:
        title += f" ({study.key_case.name})"
    elif study.description and (not hide_names or (study.series and study.series[0].source == "dicom")):
        title += f" ({study.description})"
    story.append(Paragraph(f"Brain-MRI triage report: {_text(title)}", styles["Title"]))
    story.append(Paragraph(f"<b>{_text(STATEMENT)}</b>", body))
    story.append(Spacer(1, 4 * mm))

    cases = [c for s in study.series for c in (worklist.get(sid) for sid in s.scan_ids) if c is not None]
    volume = f"{study.volume_ml:.1f} mL" if study.volume_ml is not None else "unknown (no spacing)"
    facts = [
        ["Modality", study.modality or "-"],
        ["Received (UTC)", study.received_at[:19].replace("T", " ")],
        ["Series / slices", f"{len(study.series)} / {study.n_slices}"],
        ["Suspicious slices", str(study.n_suspicious)],
        ["Flagged slices", str(study.n_flagged)],
        ["Risk (most suspicious slice)", f"{study.risk:.2f}"],
        ["Tumour volume", volume],
    ]
    review = None if study.single else worklist.study_review(study.study_key)
    if review is not None:
        signed = [
            ["Signed off by", review["reviewer"]],
            ["Signed off at (UTC)", review["reviewed_at"][:19].replace("T", " ")],
            ["Note", review["note"] or "-"],
        ]
    elif study.review_status == ReviewState.SIGNED_OFF and study.single:
        key = study.key_case
        signed = [
            ["Signed off by", key.reviewer or "-"],
            ["Signed off at (UTC)", (key.reviewed_at or "")[:19].replace("T", " ")],
            ["Note", key.note or "-"],
        ]
    else:
        signed = [["Sign-off", f"NOT SIGNED OFF ({study.review_status.replace('_', ' ')})"]]
    grid = TableStyle([("GRID", (0, 0), (-1, -1), 0.25, colors.grey), ("VALIGN", (0, 0), (-1, -1), "TOP")])
    story.append(Paragraph("Study", head))
    story.append(
        Table([[Paragraph(_text(a), body), Paragraph(_text(b), body)] for a, b in facts + signed], [55 * mm, 110 * mm])
    )
    story[-1].setStyle(grid)

    story.append(Paragraph("Series", head))
    rows = [["Series", "Slices", "Suspicious", "Flagged", "Risk", "Key slice", "Spacing", "Volume"]]
    for s in study.series:
        described = s.description if (s.source == "dicom" or not hide_names) else ""
        rows.append(
            [
                Paragraph(_text(described or f"series {s.series_key[:12]}"), body),
                s.n_slices,
                s.n_suspicious,
                s.n_flagged,
                f"{s.risk:.2f}",
                f"{s.key_position} of {s.n_slices}",
                "-" if s.spacing_mm is None else f"{s.spacing_mm:.2f} mm",
                "-" if s.volume_ml is None else f"{s.volume_ml:.1f} mL",
            ]
        )
    table = Table(rows, repeatRows=1)
    table.setStyle(TableStyle([*grid.getCommands(), ("BACKGROUND", (0, 0), (-1, 0), colors.lightgrey)]))
    story.append(table)

    story.append(Paragraph("Key images (predicted tumour outline in red)", head))
    for s in study.series:
        case = worklist.get(s.key_scan_id)
        if case is None:
            continue
        image = key_image(case)
        label = case.effective_label
        shown = (s.description or s.series_key[:12]) if (s.source == "dicom" or not hide_names) else s.series_key[:12]
        caption = (
            f"Series {shown}, slice {s.key_position} of {s.n_slices}: {CLASS_TEXT.get(label, label)}, "
            f"risk {case.risk:.2f}"
        )
        if case.tumor_area_mm2 is not None and case.tumor_area_px:
            caption += f", tumour area {case.tumor_area_mm2:.0f} mm²"
        if case.mask_rejected:
            caption += " (mask rejected by the reviewer)"
        if image is None:
            story.append(Paragraph(_text(caption + " — stored image missing"), body))
            continue
        h, w = image.shape[:2]
        side = 80 * mm
        story.append(Image(io.BytesIO(_png(image)), width=side * min(1.0, w / h), height=side * min(1.0, h / w)))
        story.append(Paragraph(_text(caption), body))
        probs = ", ".join(f"{CLASS_TEXT[c]} {p:.0%}" for c, p in case.probabilities.items())
        story.append(Paragraph(_text(f"Calibrated probabilities: {probs}"), body))
        story.append(Spacer(1, 3 * mm))

    versions = sorted({(c.classifier_version, c.segmenter_version) for c in cases})
    story.append(Paragraph("Models", head))
    story.append(
        Paragraph(_text("; ".join(f"classifier {a or '?'}, segmenter {b or '?'}" for a, b in versions) or "-"), body)
    )
    story.append(Spacer(1, 4 * mm))
    story.append(
        Paragraph(
            _text(f"Generated {utc_now('seconds')} by the brain-MRI triage workstation. ")
            + f"<b>{_text(STATEMENT)}</b>",
            body,
        )
    )
    doc.build(story)
    return buf.getvalue()


__all__ = ["STATEMENT", "ReportError", "find_study", "key_image", "study_pdf"]
