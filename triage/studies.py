"""Studies in the worklist: ingest whole series, and summarise slices into series and studies.

A case stays one slice (the analysis is per slice); a study is the set of cases sharing a
``study_key`` (a case without one, e.g. from before schema v3, is a one-slice study of its own).
A study is ranked by its most suspicious slice (the key slice); its volume is the sum of the
tumour areas times the slice spacing when both are known. No streamlit here.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from triage.analysis_store import remember_result
from triage.config import Settings, get_settings
from triage.errors import InvalidScanError
from triage.intake import case_record, display_name, storable_bytes, store_upload, write_mask
from triage.records import CLASSES, Case, Flag, ReviewState, SeriesSource
from triage.risk import risk_score, suspected_tumor
from triage.series import SeriesInput, dicom_header, is_nifti, stack_geometry, volume_ml
from triage.service import TriageService
from triage.worklist import Worklist

log = logging.getLogger(__name__)

SERIES_CHUNK = 16  # slices per model batch: progress is reported after each
ATTENTION_FLAGS: frozenset[str] = frozenset({Flag.UNCERTAIN, Flag.OOD, Flag.DISAGREEMENT})

SliceProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class SliceOutcome:
    """What became of one slice of an ingested series."""

    file: str
    status: str  # "accepted" | "already in worklist" | "rejected"
    scan_id: str = ""
    label: str = ""
    risk: float | None = None
    flags: tuple[str, ...] = ()
    reason: str = ""
    series_key: str = ""


def _png(pixels: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", pixels)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def ingest_series(
    service: TriageService,
    worklist: Worklist,
    series: SeriesInput,
    truth_label: str | None = None,
    progress: SliceProgress | None = None,
) -> list[SliceOutcome]:
    """Analyse a series in model batches and add its slices to the worklist as cases of one series.

    - A slice already stored (same content, or the same DICOM instance with the same content)
      is not analysed again: "already in worklist". A series that arrives in several uploads
      is completed: its new slices join the stored series.
    - The same DICOM instance UID with different content, or slices of another size than the
      stored series with the same UID, are refused with the reason; the stored slices stay.
    - Slices the pipeline refuses (e.g. the empty slices above the head of a volume) are counted
      in one rejection entry per reason, not one per slice; files refused before analysis get
      one entry each.
    ``progress(done, total)`` is called after each model batch.
    """
    info = series.info
    scans_dir = service.settings.scans_dir
    out: list[SliceOutcome] = [
        SliceOutcome(file=name, status="rejected", reason=why, series_key=info.series_key)
        for name, why in series.refused
    ]
    known = worklist.get_series(info.series_key)
    known_shape = tuple((known or {}).get("extra", {}).get("shape") or ())
    todo = []
    for s in series.slices:
        if known_shape and tuple(s.scan.shape) != known_shape:
            out.append(
                SliceOutcome(
                    s.file_name,
                    "rejected",
                    scan_id=s.scan.scan_id,
                    reason=(
                        f"a series with this UID is already stored with {known_shape[1]}x{known_shape[0]} px slices; "
                        f"this {s.scan.shape[1]}x{s.scan.shape[0]} slice is different content under the same UID "
                        "and was not added (the stored series is unchanged)"
                    ),
                    series_key=info.series_key,
                )
            )
            continue
        prev = worklist.find_instance(s.place.instance_key)
        if prev is not None and prev.scan_id != s.scan.scan_id:
            out.append(
                SliceOutcome(
                    s.file_name,
                    "rejected",
                    scan_id=s.scan.scan_id,
                    reason=(
                        "a slice with this SOPInstanceUID is already stored with different content; the stored "
                        "slice is kept and this file was not added (re-export the series with new UIDs if it changed)"
                    ),
                    series_key=info.series_key,
                )
            )
            continue
        existing = prev or worklist.get(s.scan.scan_id)
        if existing is not None:
            out.append(
                SliceOutcome(
                    s.file_name,
                    "already in worklist",
                    scan_id=existing.scan_id,
                    label=existing.label,
                    risk=round(existing.risk, 3),
                    flags=existing.flags,
                    reason="the same slice was analysed before; the earlier case is kept",
                    series_key=info.series_key,
                )
            )
            continue
        todo.append(s)
    source_path = None
    if series.source_file is not None and todo:
        _, data = series.source_file
        fmt = "nifti-gz" if data[:2] == b"\x1f\x8b" else "nifti"
        source_path = store_upload(data, fmt, scans_dir)  # the volume itself is kept, content-addressed
    added = False
    rejected_reasons: Counter[str] = Counter()
    storable: dict[str, bytes] = {}
    for start in range(0, len(todo), SERIES_CHUNK):
        chunk = todo[start : start + SERIES_CHUNK]
        results = service.analyze_scans([s.scan for s in chunk])
        for s, r in zip(chunk, results):
            if not r.ok:
                rejected_reasons[r.error] += 1
                out.append(
                    SliceOutcome(s.file_name, "rejected", scan_id=r.scan_id, reason=r.error, series_key=info.series_key)
                )
                continue
            if not added:
                worklist.add_series(
                    {
                        "series_key": info.series_key,
                        "study_key": info.study_key,
                        "patient_key": info.patient_key,
                        "source": info.source,
                        "description": info.description,
                        "modality": info.modality,
                        "study_description": info.study_description,
                        "spacing_mm": info.spacing_mm,
                        "positions_in_mm": info.positions_in_mm,
                        "extra": {"shape": list(s.scan.shape)},
                    }
                )
                added = True
            data = s.data or _png(s.scan.pixels)
            digest = hashlib.sha256(data).hexdigest()
            try:
                # Named by the sent bytes' digest (a re-sent file is found again), holding what may be
                # stored: DICOM de-identified unless PHI is allowed (intake.storable_bytes).
                if digest not in storable:
                    storable[digest] = storable_bytes(data, s.fmt if s.data else "png", service.settings)
            except InvalidScanError as exc:
                rejected_reasons[str(exc)] += 1
                out.append(
                    SliceOutcome(
                        s.file_name, "rejected", scan_id=r.scan_id, reason=str(exc), series_key=info.series_key
                    )
                )
                continue
            stored = store_upload(storable[digest], s.fmt if s.data else "png", scans_dir, digest)
            mask_path = write_mask(r, scans_dir)
            case = case_record(r, display_name(s.file_name), stored, mask_path, truth_label)
            remember_result(service, r)  # Case review then opens it without running a model (issue 16)
            case = replace(
                case,
                study_key=info.study_key,
                series_key=info.series_key,
                instance_key=s.place.instance_key,
                slice_order=s.place.order,
                extra=case.extra if source_path is None else {**case.extra, "source_path": str(source_path)},
            )
            status = "accepted" if worklist.add_case(case) else "already in worklist"
            out.append(
                SliceOutcome(
                    s.file_name,
                    status,
                    scan_id=r.scan_id,
                    label=r.prediction.label,
                    risk=round(float(r.risk), 3),
                    flags=r.flags,
                    series_key=info.series_key,
                )
            )
        if progress is not None:
            progress(min(start + SERIES_CHUNK, len(todo)), len(todo))
    for o in out:  # refused before analysis (size, orientation, UID clashes): one entry per file
        if o.status == "rejected" and o.reason not in rejected_reasons:
            worklist.log_rejection(o.file, o.reason, None)
    for reason, n in rejected_reasons.items():
        what = series.source_file[0] if series.source_file else info.description or "series"
        worklist.log_rejection(f"{what} ({n} slice{'s' if n != 1 else ''})", reason)
    return out


# ----- summaries ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesSummary:
    """One series of a study, as the worklist shows it."""

    series_key: str
    description: str
    modality: str
    source: str
    n_slices: int
    n_suspicious: int
    n_flagged: int
    risk: float
    key_scan_id: str
    key_position: int  # 1-based place of the key slice in the stack
    scan_ids: tuple[str, ...]  # stack order
    spacing_mm: float | None
    volume_ml: float | None
    missing: int


@dataclass(frozen=True)
class StudySummary:
    """One worklist row: a study ranked by its most suspicious slice."""

    study_key: str
    single: bool  # a one-slice study (a loose slice)
    description: str
    modality: str
    n_slices: int
    n_suspicious: int
    n_flagged: int
    risk: float
    key_case: Case
    received_at: str
    review_status: str  # a case status, or "partly_reviewed"
    volume_ml: float | None
    series: tuple[SeriesSummary, ...] = field(default_factory=tuple)

    @property
    def key_scan_id(self) -> str:
        return self.key_case.scan_id


def is_suspicious(case: Case) -> bool:
    """The worklist's tumour call for a stored case (:func:`triage.risk.suspected_tumor`)."""
    return suspected_tumor(case.label, case.flags)


def is_flagged(case: Case) -> bool:
    """A case with a flag that asks for a closer look (uncertain, ood, disagreement)."""
    return bool(ATTENTION_FLAGS & set(case.flags))


def _review_state(cases: Sequence[Case]) -> str:
    states = {c.review_status for c in cases}
    if len(states) == 1:
        return next(iter(states))
    return ReviewState.PARTLY_REVIEWED


def _key_case(cases: Sequence[Case]) -> Case:
    """The most suspicious slice: highest risk, the earliest in the stack on ties."""
    return max(enumerate(cases), key=lambda ic: (ic[1].risk, -ic[0]))[1]


def summarize_series(cases: Sequence[Case], record: dict | None) -> SeriesSummary:
    """A series from its cases (any order) and its stored record (None for a loose slice)."""
    stack = sorted(cases, key=lambda c: (c.slice_order is None, c.slice_order or 0.0, c.received_at))
    key = _key_case(stack)
    record = record or {}
    geometry = stack_geometry(
        [c.slice_order for c in stack if c.slice_order is not None],
        bool(record.get("positions_in_mm")),
        record.get("spacing_mm"),
    )
    tumour = [c for c in stack if c.tumor_area_px > 0 and not c.mask_rejected]
    volume = volume_ml([c.tumor_area_mm2 for c in tumour], geometry.spacing_mm) if record else None
    return SeriesSummary(
        series_key=stack[0].series_key or stack[0].scan_id,
        description=str(record.get("description") or ""),
        modality=str(record.get("modality") or ""),
        source=str(record.get("source") or SeriesSource.SINGLE),
        n_slices=len(stack),
        n_suspicious=sum(is_suspicious(c) for c in stack),
        n_flagged=sum(is_flagged(c) for c in stack),
        risk=key.risk,
        key_scan_id=key.scan_id,
        key_position=stack.index(key) + 1,
        scan_ids=tuple(c.scan_id for c in stack),
        spacing_mm=geometry.spacing_mm,
        volume_ml=volume,
        missing=geometry.missing,
    )


def ranked_risk(case: Case, settings: Settings | None = None) -> float:
    """The risk the worklist ranks a case by: the model's, or, once a reader corrected the class,
    the risk of the corrected class (its malignancy weight, as if certain). A slice corrected from
    glioma to no tumour sinks; one corrected to a tumour rises (issue 16)."""
    reviewed, label = case.reviewed_label, case.label
    if reviewed and reviewed != label and reviewed in CLASSES:
        one_hot = np.eye(len(CLASSES))[CLASSES.index(reviewed)]
        return float(risk_score(one_hot, (settings or get_settings()).risk_weights))
    return case.risk


def summarize_studies(cases: Iterable[Case], series_records: Sequence[dict] = ()) -> list[StudySummary]:
    """Group cases into studies, highest key-slice risk first (then the earliest received).

    The risk of a slice whose class a reader corrected is that of the corrected class
    (:func:`ranked_risk`); the cases' own ``risk`` (the model's) is not changed.
    ``series_records``: :meth:`Worklist.all_series` (descriptions, spacing)."""
    settings = get_settings()
    cases = list(cases)
    # Ranked by the corrected class's risk (the StudySummary shows it); the model's stays on the case. Only a
    # changed risk is copied: replace() re-runs every check of the Case, and this runs on each Worklist page run.
    ranked = {c.scan_id: r for c in cases if c.reviewed_label and (r := ranked_risk(c, settings)) != c.risk}
    cases = [replace(c, risk=ranked[c.scan_id]) if c.scan_id in ranked else c for c in cases]
    records = {r["series_key"]: r for r in series_records}
    by_study: dict[str, dict[str, list[Case]]] = defaultdict(lambda: defaultdict(list))
    for c in cases:
        by_study[c.study][c.series_key or f"case:{c.scan_id}"].append(c)
    studies = []
    for study_key, groups in by_study.items():
        series = sorted(
            (summarize_series(members, records.get(key)) for key, members in groups.items()),
            key=lambda s: -s.risk,
        )
        members = [c for g in groups.values() for c in g]
        key = _key_case(members)
        volumes = [s.volume_ml for s in series if s.volume_ml is not None]
        record = records.get(key.series_key or "", {})
        studies.append(
            StudySummary(
                study_key=study_key,
                single=study_key.startswith("case:"),
                description=str(record.get("study_description") or record.get("description") or ""),
                modality=str(record.get("modality") or ""),
                n_slices=len(members),
                n_suspicious=sum(is_suspicious(c) for c in members),
                n_flagged=sum(is_flagged(c) for c in members),
                risk=key.risk,
                key_case=key,
                received_at=min(c.received_at for c in members),
                review_status=_review_state(members),
                # The largest series volume: series of one study image the same tumour (T1, FLAIR...).
                volume_ml=max(volumes) if volumes else None,
                series=tuple(series),
            )
        )
    studies.sort(key=lambda s: (-s.risk, s.received_at, s.study_key))
    return studies


def list_studies(worklist: Worklist, **filters: object) -> list[StudySummary]:
    """The study worklist: every study with at least one slice matching ``filters``
    (:meth:`Worklist.list_cases` filters), counted over all its slices."""
    return filter_studies(worklist, summarize_studies(worklist.list_cases(), worklist.all_series()), **filters)


def filter_studies(worklist: Worklist, studies: Sequence[StudySummary], **filters: object) -> list[StudySummary]:
    """The studies of ``studies`` (all of :func:`list_studies`) with at least one slice matching ``filters``:
    a page that already holds the whole list narrows it without summarising every study again."""
    if not any(v for k, v in filters.items() if k != "search_in"):
        return list(studies)
    matching = {c.study for c in worklist.list_cases(**filters)}  # type: ignore[arg-type]
    return [s for s in studies if s.study_key in matching]


STUDY_EXPORT_COLUMNS = (
    "study",
    "description",
    "series",
    "slices",
    "suspicious",
    "flagged",
    "risk",
    "key_slice",
    "key_scan_id",
    "key_label",
    "tumor_volume_ml",
    "review_status",
    "reviewer",
    "signed_off_at",
    "note",
)


def export_studies_csv(worklist: Worklist, studies: Sequence[StudySummary], hide_names: bool = True) -> bytes:
    """UTF-8 CSV, one row per study (the worklist's order), with its sign-off when there is one.

    ``description``: the DICOM series/study description, or (names shown) the volume or folder
    name; with ``hide_names`` only DICOM descriptions, which name the sequence, not the patient."""
    from triage.export import csv_row

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=STUDY_EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for s in studies:
        review = None if s.single else worklist.study_review(s.study_key)
        first = s.series[0] if s.series else None
        if s.single:
            description = "" if hide_names else s.key_case.name
        elif first is not None and (first.source == "dicom" or not hide_names):
            description = s.description or first.description
        else:
            description = ""
        key_series = next((x for x in s.series if s.key_scan_id in x.scan_ids), None)
        row = {
            "study": s.study_key if not s.single else s.key_scan_id,
            "description": description,
            "series": len(s.series),
            "slices": s.n_slices,
            "suspicious": s.n_suspicious,
            "flagged": s.n_flagged,
            "risk": round(s.risk, 4),
            "key_slice": key_series.key_position if key_series else 1,
            "key_scan_id": s.key_scan_id,
            "key_label": s.key_case.effective_label,
            "tumor_volume_ml": "" if s.volume_ml is None else round(s.volume_ml, 3),
            "review_status": s.review_status,
            "reviewer": (review or {}).get("reviewer") or (s.key_case.reviewer if s.single else "") or "",
            "signed_off_at": (review or {}).get("reviewed_at")
            or (s.key_case.reviewed_at if s.single and s.review_status == "signed_off" else "")
            or "",
            "note": (review or {}).get("note") or (s.key_case.note if s.single else "") or "",
        }
        writer.writerow(csv_row(row, STUDY_EXPORT_COLUMNS))
    return buf.getvalue().encode("utf-8")


# ----- the command line's per-study CSV --------------------------------------------------------

STUDY_CSV_COLUMNS = (
    "study",
    "series",
    "slices",
    "suspicious",
    "flagged",
    "risk",
    "key_path",
    "key_frame",
    "key_slice",
    "spacing_mm",
    "tumor_volume_ml",
    "missing_slices",
    "description",
)


@dataclass(frozen=True)
class _Place:
    study: str
    series: str
    order: float
    in_mm: bool
    spacing: float | None
    description: str


def _place_file(path: str, cache: dict) -> tuple[str, dict]:
    """(series id, per-frame info) for a result file: NIfTI header, DICOM header, or its folder."""
    if path in cache:
        return cache[path]
    p = Path(path)
    info: dict = {"study": str(p.parent), "series": str(p.parent), "in_mm": False, "spacing": None, "desc": ""}
    if is_nifti(p.name, b""):
        try:
            import nibabel as nib

            img = nib.as_closest_canonical(nib.load(str(p)))
            info.update(study=str(p), series=str(p), in_mm=True, spacing=float(img.header.get_zooms()[2]))
            info["desc"] = p.name
        except Exception as exc:  # the per-slice CSV already says why the file was refused
            log.info("no geometry for %s: %s", p.name, exc)
    else:
        try:
            header = dicom_header(p.read_bytes())
        except OSError:
            header = None
        if header is not None:
            from triage.series import _normal

            normal = _normal(header.orientation)
            positions = [
                float(np.dot(normal, pos)) if (normal is not None and pos is not None) else None
                for pos in header.positions
            ]
            info.update(
                study=hashlib.sha256(header.study_uid.encode()).hexdigest()[:16],
                series=hashlib.sha256(header.series_uid.encode()).hexdigest()[:16],
                positions=positions,
                number=header.instance_number,
                in_mm=all(v is not None for v in positions),
                spacing=header.spacing_between or header.thickness,
                desc=header.description,
            )
    cache[path] = (info["series"], info)
    return cache[path]


def study_rows(rows: Iterable[dict]) -> list[dict]:
    """Per-study rows of ``analyze`` results (the per-slice CSV rows): studies are NIfTI files,
    DICOM StudyInstanceUIDs (hashed) or folders of images; risk and key slice from the highest-risk
    slice, volume from the tumour areas and the slice spacing. Highest risk first."""
    cache: dict = {}
    series: dict[tuple[str, str], list[tuple[float, dict]]] = defaultdict(list)
    meta: dict[tuple[str, str], dict] = {}
    for row in rows:
        if row.get("status") != "ok":
            continue
        path = str(row["path"])
        _, info = _place_file(path, cache)
        frame = int(row["frame"]) if str(row.get("frame") or "").strip() else None
        if "positions" in info:
            pos = info["positions"][frame or 0] if (frame or 0) < len(info["positions"]) else None
            order = pos if info["in_mm"] and pos is not None else float(info.get("number") or 0)
        elif info["in_mm"] and frame is not None:
            order = frame * float(info["spacing"])
        else:
            order = float(frame or 0)
        key = (info["study"], info["series"])
        series[key].append((order, row))
        meta[key] = info
    studies: dict[str, list[dict]] = defaultdict(list)
    for (study, _), members in series.items():
        members.sort(key=lambda m: (m[0], str(m[1]["path"])))
        info = meta[(study, _)]
        stack = [r for _, r in members]
        geo = stack_geometry([o for o, _ in members], bool(info["in_mm"]), info["spacing"])
        areas = [_number(r.get("tumor_area_mm2")) for r in stack if int(_number(r.get("tumor_area_px")) or 0) > 0]
        key_i = max(range(len(stack)), key=lambda i: (float(stack[i]["risk"] or 0), -i))
        studies[study].append(
            {
                "stack": stack,
                "key": key_i,
                "volume": volume_ml(areas, geo.spacing_mm),
                "spacing": geo.spacing_mm,
                "missing": geo.missing,
                "desc": info["desc"],
            }
        )
    out = []
    for study, parts in studies.items():
        best = max(parts, key=lambda p: float(p["stack"][p["key"]]["risk"] or 0))
        key_row = best["stack"][best["key"]]
        slices = [r for p in parts for r in p["stack"]]
        volumes = [p["volume"] for p in parts if p["volume"] is not None]
        out.append(
            {
                "study": study,
                "series": len(parts),
                "slices": len(slices),
                "suspicious": sum(str(r.get("suspected_tumor")) == "1" for r in slices),
                "flagged": sum(bool(ATTENTION_FLAGS & set(str(r.get("flags") or "").split(";"))) for r in slices),
                "risk": key_row["risk"],
                "key_path": key_row["path"],
                "key_frame": key_row.get("frame", ""),
                "key_slice": best["key"] + 1,
                "spacing_mm": "" if best["spacing"] is None else round(best["spacing"], 3),
                "tumor_volume_ml": round(max(volumes), 3) if volumes else "",
                "missing_slices": sum(p["missing"] for p in parts),
                "description": best["desc"],
            }
        )
    out.sort(key=lambda r: -float(r["risk"] or 0))
    return out


def _number(value: object) -> float | None:
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def write_study_csv(results_csv: Path, out: Path) -> int:
    """Read an ``analyze`` per-slice CSV and write the per-study CSV; returns the number of studies."""
    from triage.export import csv_row

    with Path(results_csv).open(newline="", encoding="utf-8") as fh:
        rows = study_rows(csv.DictReader(fh))
    with Path(out).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=STUDY_CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow(csv_row(r, STUDY_CSV_COLUMNS))
    return len(rows)


__all__ = [
    "STUDY_CSV_COLUMNS",
    "SeriesSummary",
    "SliceOutcome",
    "StudySummary",
    "export_studies_csv",
    "ingest_series",
    "list_studies",
    "study_rows",
    "summarize_studies",
    "write_study_csv",
]
