"""Turn a batch of uploaded files (loose files, folders, .zip archives) into worklist cases.

No streamlit here: the New scans page passes plain ``(name, bytes)`` pairs and a progress
callback, so the logic is tested without a browser. Each file goes through
:func:`triage.intake.ingest` on its own; one bad file never stops the others, and every
file ends as one or more result rows (accepted, already in the worklist, rejected, skipped
or error) with a reason.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from triage import archive
from triage.errors import InvalidScanError
from triage.intake import display_name, ingest
from triage.io import content_id, declared_pixels, read_mask_bytes
from triage.privacy import case_ref, shown_name
from triage.records import CLASSES, normalize_label
from triage.series import NamedFile, SeriesInfo, SeriesInput, group_files
from triage.service import TriageService
from triage.studies import ingest_series
from triage.worklist import Worklist

log = logging.getLogger(__name__)

# Archive limits: members beyond MAX_ZIP_MEMBERS are not extracted, and extraction stops once
# MAX_ZIP_TOTAL_BYTES of uncompressed data has been read (a zip bomb cannot exhaust memory).
MAX_ZIP_MEMBERS = 2000
MAX_ZIP_TOTAL_BYTES = 512 * 1024 * 1024
MAX_MEMBER_BYTES = 64 * 1024 * 1024
# More slices of one series refused for the same reason than this are shown as one result row.
COLLAPSE_REFUSED = 3
# Decoded pixels one batch of uploads may cost, added up from the headers before each file is
# decoded (issue 22, item 6): 2000 slices of 512^2 use 0.5 G; a 0.6 MB zip of 2000 blank 40 MP
# PNGs (80 G, 20 minutes of CPU) stops after 100 of them, the rest listed as not analysed.
MAX_BATCH_PIXELS = 4_000_000_000

# System clutter skipped silently inside folders and archives.
_JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
_MASK_SUFFIXES = ("_mask", "-mask", " mask")

Progress = Callable[[int, int, str], None]
# Storage failures reported as such (disk full, quota, read-only or unwritable data folder).
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES})


@dataclass(frozen=True)
class UploadItem:
    """One file to analyse. name: display path ('scans.zip/glioma/x.png'); folders: its parent folders."""

    name: str
    data: bytes
    folders: tuple[str, ...] = ()


def _parts(name: str) -> list[str]:
    return archive.member_parts(str(name))


def _is_junk(parts: Sequence[str]) -> bool:
    return (
        any(p.startswith("__MACOSX") for p in parts) or parts[-1].lower() in _JUNK_NAMES or parts[-1].startswith("._")
    )


def is_zip(name: str, data: bytes) -> bool:
    """A file is treated as an archive when it is named ``*.zip`` and starts like one."""
    return str(name).lower().endswith(".zip") and data[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def expand_zip(
    name: str,
    data: bytes,
    max_members: int = MAX_ZIP_MEMBERS,
    max_total_bytes: int = MAX_ZIP_TOTAL_BYTES,
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> tuple[list[UploadItem], list[dict]]:
    """Extract an archive in memory. Returns (files, skipped rows with a reason).

    Members refused by :mod:`triage.archive`'s rules (absolute paths, '..', symlinks, encrypted
    members, members larger than ``max_member_bytes``) are skipped with the reason; members after
    the first ``max_members`` files and everything after ``max_total_bytes`` of uncompressed data
    are not extracted (one summary row says so). Nested archives are passed on as files (and then
    refused by the decoder).
    """
    limits = archive.ArchiveLimits(max_members, max_member_bytes, max_total_bytes)
    items: list[UploadItem] = []
    skipped: list[dict] = []
    shown_archive = display_name(name)
    try:
        zf = archive.open_zip(data)
    except archive.OPEN_ERRORS as exc:
        log.info("zip %s unreadable: %s: %s", shown_name(shown_archive, content_id(data)), type(exc).__name__, exc)
        return [], [
            _row(shown_archive, "rejected", reason="not a readable zip archive (corrupt, truncated or not a zip)")
        ]
    with zf:
        members = archive.files(zf)
        total = 0
        for count, info in enumerate(members):
            shown = f"{shown_archive}/{info.filename}"
            if count >= max_members:
                skipped.append(
                    _row(
                        shown_archive,
                        "skipped",
                        reason=(
                            f"{len(members) - max_members} more files not extracted: the limit is {max_members} "
                            "files per archive"
                        ),
                    )
                )
                break
            unsafe = archive.name_problem(info.filename)
            if unsafe:
                skipped.append(_row(shown, "rejected", reason=unsafe))
                continue
            parts = _parts(info.filename)
            if not parts or _is_junk(parts):
                continue
            problem = archive.member_problem(info, limits)
            if problem:
                skipped.append(_row(shown, "rejected", reason=problem))
                continue
            budget = min(max_member_bytes, max_total_bytes - total)
            try:
                content = archive.read_member(zf, info, budget)
            except archive.READ_ERRORS as exc:
                log.info("zip member not extracted: %s: %s", type(exc).__name__, exc)
                skipped.append(
                    _row(shown, "rejected", reason="cannot be extracted (corrupt member or unsupported compression)")
                )
                continue
            if len(content) > budget:
                if budget < max_member_bytes:
                    skipped.append(
                        _row(
                            shown_archive,
                            "skipped",
                            reason=(
                                f"extraction stopped at {max_total_bytes / 1e6:.0f} MB of uncompressed data; "
                                f"{len(members) - count} files not extracted"
                            ),
                        )
                    )
                    break
                skipped.append(
                    _row(
                        shown, "rejected", reason=(f"over the {max_member_bytes / 1e6:.0f} MB limit once uncompressed")
                    )
                )
                continue
            total += len(content)
            items.append(UploadItem(name=shown, data=content, folders=(shown_archive, *parts[:-1])))
    return items, skipped


def expand_uploads(files: Sequence[tuple[str, bytes]], **zip_limits: int) -> tuple[list[UploadItem], list[dict]]:
    """Loose files stay as they are, ``.zip`` archives are extracted; hidden system files dropped.

    ``files`` are (name, bytes) pairs; a name may be a relative path (folder uploads).
    Returns (files to analyse, rows for archive members that were refused or not extracted).
    """
    items: list[UploadItem] = []
    skipped: list[dict] = []
    for name, data in files:
        parts = _parts(name) or ["upload"]
        if _is_junk(parts):
            continue
        if is_zip(name, data):
            got, refused = expand_zip(name, data, **zip_limits)
            items.extend(got)
            skipped.extend(refused)
        else:
            items.append(UploadItem(name="/".join(parts), data=bytes(data), folders=tuple(parts[:-1])))
    return items, skipped


def _stem_key(name: str) -> str:
    stem = PurePosixPath(_parts(name)[-1] if _parts(name) else name).stem.casefold()
    for suffix in _MASK_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def match_masks(images: Sequence[UploadItem], masks: Sequence[UploadItem]) -> dict[str, bytes]:
    """Ground-truth mask bytes per image name, matched by file stem.

    Image ``x.jpg`` matches mask ``x_mask.png`` (or ``x-mask.png``) or ``x.png``; folders and
    case are ignored. Images without a mask are left out.
    """
    by_stem = {_stem_key(m.name): m.data for m in masks}
    return {img.name: by_stem[_stem_key(img.name)] for img in images if _stem_key(img.name) in by_stem}


def label_from_folders(item: UploadItem) -> str | None:
    """The class named by the nearest parent folder ('glioma/', 'notumor/', ...), or None."""
    for folder in reversed(item.folders):
        label = normalize_label(folder)
        if label is not None:
            return label
    return None


def _row(name: str, status: str, **kw: object) -> dict:
    return {
        "file": name,
        "status": status,
        "label": kw.get("label", ""),
        "risk": kw.get("risk"),
        "flags": list(kw.get("flags", ())),
        "truth": kw.get("truth", ""),
        "reason": kw.get("reason", ""),
        "scan_id": kw.get("scan_id", ""),
    }


def process_uploads(
    files: Sequence[tuple[str, bytes]],
    service: TriageService,
    worklist: Worklist,
    truth_label: str | None = None,
    masks: Sequence[tuple[str, bytes]] | None = None,
    label_from_folder: bool = False,
    progress: Progress | None = None,
) -> list[dict]:
    """Analyse every uploaded file and add the good ones to the worklist.

    files/masks: (name, bytes) pairs (.zip archives are extracted). truth_label: a class
    attached to every case; label_from_folder: take it from the file's folder name instead
    (falls back to ``truth_label``). masks are matched to images by stem (:func:`match_masks`).
    progress(done, total, name) is called before each file and once at the end. With
    :attr:`Settings.file_names_hidden` the rows, the progress text and the logs name a file
    ``case <id>`` (its content id) instead of its file name.

    Returns one row per result: file, status ('accepted' | 'already in worklist' | 'rejected'
    | 'skipped' | 'error' | 'refused'), label, risk, flags, truth, reason, scan_id. 'refused':
    no usable model, so nothing was analysed or recorded (the files can be uploaded again later).
    """
    if truth_label is not None and truth_label not in CLASSES:
        raise ValueError(f"truth_label must be one of {CLASSES}, got {truth_label!r}")
    problem = service.model_problem()
    if problem is not None:
        return [_row(name, "refused", reason=f"not analysed: {problem}") for name, _ in files]
    items, rows = expand_uploads(files)
    mask_items, mask_rows = expand_uploads(masks or [])
    rows.extend({**r, "reason": f"mask: {r['reason']}"} for r in mask_rows)
    mask_for = match_masks(items, mask_items)
    for r in rows:
        if r["status"] == "rejected":
            _log_rejection(worklist, r["file"], r["reason"])
    hide = service.settings.file_names_hidden
    # Series (DICOM UIDs, NIfTI volumes, image folders) go in as one stack each; the rest as single
    # slices. Folders are not series when they carry class labels or masks (a training-data layout).
    singles, series = _split_series(items, service, folder_series=not label_from_folder and not mask_for)
    total = len(singles) + sum(len(s.slices) for s in series)
    done = 0
    budget = MAX_BATCH_PIXELS
    for item in singles:
        if progress is not None:
            progress(done, total, case_ref(content_id(item.data)) if hide else item.name)
        declared = declared_pixels(item.data, service.settings)
        if declared > budget:  # from the header: nothing decoded, nothing recorded, nothing lost
            rows.append(
                _row(
                    item.name,
                    "skipped",
                    reason=(
                        f"not analysed: this batch's budget of {MAX_BATCH_PIXELS:,} decoded pixels is spent; "
                        "upload this file again in a smaller batch"
                    ),
                    scan_id=content_id(item.data),
                )
            )
            done += 1
            continue
        budget -= declared
        truth = (label_from_folders(item) if label_from_folder else None) or truth_label
        rows.extend(_ingest_one(service, worklist, item, truth, mask_for.get(item.name)))
        done += 1
    for one in series:
        start = done
        title = case_ref(one.info.series_key) if hide else (one.info.description or "series")

        def report(n: int, of: int, start: int = start, title: str = title) -> None:
            if progress is not None:
                progress(start + n, total, f"{title}: slice {n}/{of}")

        rows.extend(_ingest_series(service, worklist, one, truth_label, report))
        done = start + len(one.slices)
    if progress is not None:
        progress(total, total, "")
    if hide:  # names stay in the database only; every row shown says which case it is
        rows = [{**r, "file": _hidden_file(r)} for r in rows]
    return rows


def _split_series(
    items: Sequence[UploadItem], service: TriageService, folder_series: bool
) -> tuple[list[UploadItem], list[SeriesInput]]:
    """(single files, series) of an upload (:func:`triage.series.group_files`)."""
    try:
        grouped = group_files(
            [NamedFile(i.name, i.data, i.folders) for i in items], service.settings, folder_series=folder_series
        )
    except Exception:  # grouping must never lose an upload: fall back to one case per file
        log.exception("grouping %d uploaded files into series failed; analysing them one by one", len(items))
        return list(items), []
    by_name = {i.name: i for i in items}
    singles = [by_name[f.name] for f in grouped.singles]
    if grouped.refused:  # NIfTI volumes refused as a whole: a result row and a rejection entry each
        refused = SeriesInput(
            info=SeriesInfo(series_key="refused", study_key="refused", patient_key="", source="nifti"),
            slices=[],
            refused=grouped.refused,
        )
        grouped.series.insert(0, refused)
    return singles, grouped.series


def _ingest_series(
    service: TriageService, worklist: Worklist, series: SeriesInput, truth: str | None, progress
) -> list[dict]:
    try:
        outcomes = ingest_series(service, worklist, series, truth_label=truth, progress=progress)
    except Exception:  # one broken series must not stop the batch; the details go to the log only
        log.exception("series %s failed", series.info.series_key)
        reason = "internal error while analysing this series (the details are in the server log)"
        names = [s.file_name for s in series.slices] or [n for n, _ in series.refused]
        _log_rejection(worklist, f"series of {len(names)} files", reason)
        return [_row(n, "error", reason=reason) for n in names]
    # Many slices refused for one reason (the empty slices above a head) are one row, not dozens.
    refused = collections.Counter(o.reason for o in outcomes if o.status == "rejected")
    rows, summarised = [], set()
    for o in outcomes:
        if o.status == "rejected" and refused[o.reason] > COLLAPSE_REFUSED:
            if o.reason in summarised:
                continue
            summarised.add(o.reason)
            rows.append(
                _row(f"{o.file} and {refused[o.reason] - 1} more slices", o.status, reason=o.reason, scan_id=o.scan_id)
            )
            continue
        rows.append(
            _row(
                o.file,
                o.status,
                label=o.label,
                risk=o.risk,
                flags=o.flags,
                truth=(truth or "") if o.status != "rejected" else "",
                reason=o.reason,
                scan_id=o.scan_id,
            )
        )
    return rows


def _hidden_file(row: dict) -> str:
    """``case <id>`` (and the frame) for a result row whose file name must not be shown."""
    frame = row["file"].rsplit(" [frame ", 1)[1] if " [frame " in row["file"] else ""
    return case_ref(row["scan_id"]) + (f" [frame {frame}" if frame else "")


def _ingest_one(
    service: TriageService, worklist: Worklist, item: UploadItem, truth: str | None, mask: bytes | None
) -> list[dict]:
    started = datetime.now(UTC).isoformat(timespec="microseconds")
    if truth is None and mask is None:
        # The same bytes are already a case: nothing new to record, so they are not decoded and
        # analysed again (40 copies of a 40 MP slice in one zip took 182 s, issue 22, item 6).
        sid = content_id(item.data)
        case = worklist.get(sid)
        if case is not None and Path(str(case.get("stored_path") or "")).is_file():  # else: stored again
            return [
                _row(
                    item.name,
                    "already in worklist",
                    label=case.get("label") or "",
                    risk=round(float(case.get("risk") or 0.0), 3),
                    flags=case.get("flags") or (),
                    reason="the same file was analysed before; the earlier case is kept",
                    scan_id=sid,
                )
            ]
    mask_refused = ""
    if mask is not None:
        try:  # the scans' allow-listed, size-checked decoder: a mask is untrusted input too
            read_mask_bytes(mask)
        except InvalidScanError as exc:
            mask, mask_refused = None, f"ground-truth mask refused: {exc}"
    try:
        results = ingest(service, worklist, item.data, item.name, truth_label=truth, truth_mask=mask)
    except Exception as exc:  # one broken file must not stop the batch; the details go to the log only
        sid = content_id(item.data)
        if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:  # a clear reason, no traceback
            log.error("upload %r not stored: %s", shown_name(item.name, sid, service.settings), exc.strerror)
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            why = "the server's disk is full" if full else "the data folder cannot be written"
            return [
                _row(
                    item.name,
                    "error",
                    reason=f"not stored: {why}; nothing was added to the worklist, upload it again later",
                    scan_id=sid,
                )
            ]
        log.exception("upload %r failed", shown_name(item.name, sid, service.settings))
        # No exception text on screen: it can hold server paths and internals.
        reason = "internal error while analysing this file (the details are in the server log)"
        _log_rejection(worklist, item.name, reason, hashlib.sha256(item.data).hexdigest())
        return [_row(item.name, "error", reason=reason, scan_id=sid)]
    out = []
    for r in results:
        shown = item.name if r.scan is None or r.scan.frame is None else f"{item.name} [frame {r.scan.frame}]"
        if not r.ok:
            out.append(_row(shown, "rejected", reason=r.error, scan_id=r.scan_id))
            continue
        case = worklist.get(r.scan_id)
        earlier = case is not None and str(case.get("received_at", "")) < started
        out.append(
            _row(
                shown,
                "already in worklist" if earlier else "accepted",
                label=r.prediction.label,
                risk=round(float(r.risk), 3),
                flags=r.flags,
                truth=truth or "",
                reason="; ".join(
                    t
                    for t in (
                        "the same file was analysed before; the earlier case is kept" if earlier else "",
                        "ground-truth mask attached" if mask is not None and not earlier else "",
                        mask_refused,
                    )
                    if t
                ),
                scan_id=r.scan_id,
            )
        )
    return out


def _log_rejection(worklist: Worklist, name: str, reason: str, sha256: str | None = None) -> None:
    try:
        worklist.log_rejection(name, reason, sha256)
    except Exception:  # the result table still shows the reason
        log.exception("could not log the rejection of %r", shown_name(name, sha256 and sha256[:32]))
