"""Put analysed uploads into the worklist: content-addressed storage + one case row per scan.

Uploaded bytes are written under ``<data_dir>/scans/<sha256>.<ext>``; the user's file name is
kept only as display text and never used to build a path.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from pathlib import Path, PurePosixPath, PureWindowsPath

from triage import atomic
from triage.analysis_store import remember_result
from triage.errors import InvalidScanError
from triage.overlay import thumbnail_png
from triage.records import CLASSES, Case, CaseResult
from triage.service import TriageService, case_row, mask_png
from triage.worklist import Worklist

log = logging.getLogger(__name__)

_SAFE_EXT = {
    "png": ".png",
    "jpeg": ".jpg",
    "tiff": ".tif",
    "bmp": ".bmp",
    "dicom": ".dcm",
    "mpo": ".jpg",
    "nifti": ".nii",
    "nifti-gz": ".nii.gz",
}


def display_name(name: str) -> str:
    """Last path component of an uploaded name, with control characters removed (display only)."""
    base = PureWindowsPath(PurePosixPath(str(name)).name).name or "upload"
    return "".join(ch for ch in base if ch.isprintable())[:200] or "upload"


def _atomic_write(path: Path, data: bytes) -> None:
    if path.exists():
        return
    # Disk full, read-only folder...: no temporary file is left behind (issue 22, item 15).
    atomic.write_bytes(path, data)


def store_upload(data: bytes, fmt: str, scans_dir: Path, digest: str | None = None) -> Path:
    """Write bytes under their SHA-256 name and return the path. Content-addressed, so a file that is
    already there (written atomically, hence complete) is not written again. ``digest``: the bytes'
    SHA-256 when the caller has it (one hash per upload, not one per frame)."""
    digest = digest or hashlib.sha256(data).hexdigest()
    path = upload_path(digest, fmt, scans_dir)
    if not path.is_file():
        _atomic_write(path, data)
    return path


def upload_path(digest: str, fmt: str, scans_dir: Path) -> Path:
    """Where :func:`store_upload` keeps bytes of this digest and format."""
    return Path(scans_dir) / f"{digest}{_SAFE_EXT.get(fmt, '.bin')}"


def _note_new(fresh: list[Path], path: Path | None, existed: bool) -> None:
    """Remember ``path`` as written by this upload when it was not there before."""
    if path is not None and not existed and path not in fresh:
        fresh.append(path)


def _referenced(worklist: Worklist, paths: list[Path]) -> set[Path]:
    """Those of ``paths`` a stored case points at (an earlier frame of the same upload, say)."""
    if not paths:
        return set()
    try:
        return worklist.referenced_paths([str(p) for p in paths])
    except Exception:  # the database cannot be read either: keep the files rather than guess
        log.exception("could not check which stored files the worklist still uses")
        return set(paths)


def storable_bytes(data: bytes, fmt: str, settings) -> bytes:
    """What may be written to disk for an upload: DICOM de-identified unless PHI is allowed
    (:mod:`triage.deid`); other formats carry no header identifiers and are stored as sent.
    Raises InvalidScanError when a DICOM cannot be de-identified (then nothing is stored)."""
    if fmt != "dicom" or settings.allow_phi:
        return data
    from triage.deid import deid_secret, deidentify_dicom

    return deidentify_dicom(data, deid_secret(settings.data_dir))


def case_record(
    r: CaseResult,
    shown: str,
    stored: Path,
    mask_path: Path | None,
    truth_label: str | None = None,
    truth_path: Path | None = None,
) -> Case:
    """The worklist case of an analysed, stored slice (``ok`` results only)."""
    row = case_row(r)  # the probabilities as the CSV has them (rounded)
    return Case(
        scan_id=r.scan_id,
        name=shown,
        stored_path=str(stored),
        label=row["label"],
        probs=tuple(row[f"p_{c}"] for c in CLASSES),
        risk=r.risk,
        flags=r.flags,
        ood=bool(r.prediction.ood),
        tumor_area_px=r.segmentation.area_px if r.segmentation else 0,
        tumor_area_mm2=r.segmentation.area_mm2 if r.segmentation else None,
        mask_path=str(mask_path) if mask_path else None,
        thumbnail=thumbnail_png(r.scan.pixels),
        classifier_version=r.model_versions.get("classifier", ""),
        segmenter_version=r.model_versions.get("segmenter", ""),
        truth_label=truth_label,
        truth_mask_path=str(truth_path) if truth_path else None,
        extra={
            "frame": r.scan.frame,
            "ood_score": r.prediction.ood_score,
            "pixel_spacing": list(r.scan.pixel_spacing) if r.scan.pixel_spacing else None,
            "dicom": r.scan.meta,
        },
    )


def write_mask(r: CaseResult, scans_dir: Path) -> Path | None:
    """Store a result's predicted mask (0/255 PNG) beside the scans; None when it is empty."""
    if r.segmentation is None or r.segmentation.area_px == 0:
        return None
    path = Path(scans_dir) / f"{r.scan_id}_mask.png"
    _atomic_write(path, mask_png(r.segmentation.mask))
    return path


def ingest(
    service: TriageService,
    worklist: Worklist,
    data: bytes,
    name: str,
    truth_label: str | None = None,
    truth_mask: bytes | None = None,
    added: set[str] | None = None,
) -> list[CaseResult]:
    """Analyse one upload and record it: cases for good scans, a rejection entry otherwise.

    Returns the analysis results (one per frame). A scan already in the worklist is not added
    twice. Truth labels/masks, when given, are attached to the new cases, and to an existing case
    when its slice is uploaded again with them. ``added``, when given, receives the scan ids this
    call added as new cases: the worklist's own answer, for callers that report "already there".
    """
    shown = display_name(name)
    # A decode that overruns the limit is stopped and this upload rejected; the batch goes on.
    results = service.analyze_bytes(data, shown, time_limit_s=service.settings.upload_time_limit_s)
    scans_dir = service.settings.scans_dir
    digest = hashlib.sha256(data).hexdigest() if data else None  # once per upload, whatever its frames
    to_store: bytes | None = None
    results = list(results)
    for i, r in enumerate(results):
        if not r.ok:
            worklist.log_rejection(shown, r.error, digest)
            continue
        try:
            # Named by the sent bytes' digest (a re-sent file is found again), holding the de-identified ones.
            to_store = to_store or storable_bytes(data, r.scan.source_format, service.settings)
        except InvalidScanError as exc:
            results[i] = replace(r, status="rejected", error=str(exc))
            worklist.log_rejection(shown, str(exc), digest)
            continue
        # Files first written by this upload: removed again when its case cannot be recorded (a
        # full disk, a read-only or locked database), so no stored file is left without a case.
        fresh: list[Path] = []
        try:
            stored = upload_path(digest, r.scan.source_format, scans_dir)
            existed = stored.is_file()
            _note_new(fresh, store_upload(to_store, r.scan.source_format, scans_dir, digest), existed)
            mask_target = Path(scans_dir) / f"{r.scan_id}_mask.png"
            existed = mask_target.is_file()
            mask_path = write_mask(r, scans_dir)
            _note_new(fresh, mask_path, existed)
            truth_path = None
            if truth_mask is not None:
                truth_digest = hashlib.sha256(truth_mask).hexdigest()
                truth_target = upload_path(truth_digest, "png", scans_dir / "truth")
                existed = truth_target.is_file()
                truth_path = store_upload(truth_mask, "png", scans_dir / "truth", truth_digest)
                _note_new(fresh, truth_path, existed)
            case = case_record(r, shown, stored, mask_path, truth_label, truth_path)
            remember_result(service, r)  # Case review then opens it without running a model (issue 16)
            if worklist.add_case(case):
                if added is not None:
                    added.add(r.scan_id)
            elif truth_label or truth_path:
                # The slice is already a case: its new ground truth is attached (and audited), not dropped.
                worklist.set_truth(r.scan_id, truth_label, truth_path, actor="upload")
        except BaseException:
            referenced = _referenced(worklist, fresh)
            for path in fresh:
                if path not in referenced:
                    path.unlink(missing_ok=True)
            raise
    return results
