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
import gzip
import hashlib
import io
import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from triage import archive, folders
from triage.errors import InvalidScanError
from triage.housekeeping import free_bytes
from triage.intake import display_name, ingest
from triage.io import content_id, declared_pixels, read_mask_bytes
from triage.pending import BatchOptions, claim_orphans, pending_count, save_batch
from triage.privacy import case_ref, shown_name
from triage.records import CLASSES
from triage.series import NamedFile, SeriesInfo, SeriesInput, group_files, is_nifti
from triage.service import TriageService
from triage.studies import ingest_series
from triage.worklist import StorageError, Worklist, disk_full_message, waiting_for_database

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


Progress = Callable[[int, int, str], None]
Notice = Callable[[str], None]
# Received bytes are written twice (the pending copy, then the stored scan): refuse a batch when
# the disk has less than twice its size plus this margin free.
FREE_MARGIN_BYTES = 8 * 1024 * 1024
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
            if not parts or folders.is_junk(parts):  # system clutter, skipped silently
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
        if folders.is_junk(parts):
            continue
        if is_zip(name, data):
            got, refused = expand_zip(name, data, **zip_limits)
            items.extend(got)
            skipped.extend(refused)
        else:
            items.append(UploadItem(name="/".join(parts), data=bytes(data), folders=tuple(parts[:-1])))
    return items, skipped


def match_masks(images: Sequence[UploadItem], masks: Sequence[UploadItem]) -> dict[str, bytes]:
    """Ground-truth mask bytes per image name, paired by :func:`triage.folders.pair_masks` (the file
    stem without a ``_mask`` / ``-mask`` ending, any case: ``x.jpg`` pairs with ``x_mask.png`` or
    ``X.png``; a mask under another class's folder does not pair). Images without a mask are left out."""
    picks = folders.pair_masks(
        [(i.name, folders.class_of(i.folders)) for i in images], [(m.name, folders.class_of(m.folders)) for m in masks]
    )
    return {img.name: masks[j].data for img, j in zip(images, picks) if j is not None}


def label_from_folders(item: UploadItem) -> str | None:
    """The class named by the nearest parent folder ('glioma/', 'notumor/', ...), or None."""
    return folders.class_of(item.folders)


def _row(name: str, status: str, **kw: object) -> dict:
    return {
        "file": name,
        "status": status,
        "label": kw.get("label", ""),
        "risk": kw.get("risk"),
        "flags": [str(f) for f in kw.get("flags", ())],  # plain text (a Case's flags are Flag members)
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
    notice: Notice | None = None,
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
    no usable model, or the worklist cannot store anything (read-only, damaged, full disk), so
    nothing was analysed or recorded (the files can be uploaded again later). ``notice(text)`` is
    told when a write waits for a database locked by another program.
    """
    if truth_label is not None and truth_label not in CLASSES:
        raise ValueError(f"truth_label must be one of {CLASSES}, got {truth_label!r}")
    problem = service.model_problem() or storage_refusal(worklist, service.settings, [*files, *(masks or [])])
    if problem is not None:
        return [_row(name, "refused", reason=f"not analysed: {problem}") for name, _ in files]

    def waited(seconds: float) -> None:
        if notice is not None:
            notice(f"Waiting for the database: another program is writing to it ({seconds:.0f} s so far)…")

    with waiting_for_database(waited):
        return _process(files, service, worklist, truth_label, masks, label_from_folder, progress)


def storage_refusal(worklist: Worklist, settings, files: Sequence[tuple[str, bytes]] = ()) -> str | None:
    """Why the worklist cannot take uploads now (read-only folder, damaged database, a disk too
    full for ``files``), or None."""
    problem = worklist.storage_problem()
    if problem is not None:
        return str(problem)
    free = free_bytes(settings)
    needed = 2 * sum(len(d) for _, d in files) + FREE_MARGIN_BYTES
    if free is not None and files and free < needed:
        return disk_full_message(worklist.db_path) + f" ({free / 1e6:.1f} MB free, {needed / 1e6:.1f} MB needed)"
    return None


def _process(
    files: Sequence[tuple[str, bytes]],
    service: TriageService,
    worklist: Worklist,
    truth_label: str | None,
    masks: Sequence[tuple[str, bytes]] | None,
    label_from_folder: bool,
    progress: Progress | None,
) -> list[dict]:
    items, rows = expand_uploads(files)
    mask_items, mask_rows = expand_uploads(masks or [])
    rows.extend({**r, "reason": f"mask: {r['reason']}"} for r in mask_rows)
    mask_for = match_masks(items, mask_items)
    for r in rows:
        if r["status"] == "rejected":
            _log_rejection(worklist, r["file"], r["reason"])
    hide = service.settings.file_names_hidden
    # Decoded pixels the whole batch may cost, single files and series alike (issue 22, item 6),
    # added up from the headers before anything is decoded: files past the budget are listed as
    # not analysed, nothing of them decoded or recorded.
    # The same bytes twice in one upload (a zip of copies) are decoded and analysed once: the
    # copies get the first one's outcome (40 copies of a 40 MP slice in one folder cost 5.3 GB
    # and 716 s as an image series, each copy decoded).
    first_of: dict[str, str] = {}
    copies: list[dict] = []
    unique: list[UploadItem] = []
    for item in items:
        sid = content_id(item.data)
        if sid in first_of:
            copies.append(_row(item.name, "copy", scan_id=sid))
            continue
        first_of[sid] = item.name
        unique.append(item)
    items = unique
    budget = MAX_BATCH_PIXELS
    kept: list[UploadItem] = []
    for item in items:
        declared = _declared(item, service.settings)
        if declared > budget:
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
            continue
        budget -= declared
        kept.append(item)
    items = kept
    # Series (DICOM UIDs, NIfTI volumes, image folders) go in as one stack each; the rest as single
    # slices. Folders are not series when they carry class labels or masks (a training-data layout).
    singles, series = _split_series(items, service, folder_series=not label_from_folder and not mask_for)
    total = len(singles) + sum(len(s.slices) for s in series)
    done = 0
    for item in singles:
        if progress is not None:
            progress(done, total, case_ref(content_id(item.data)) if hide else item.name)
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
    rows.extend(_copy_outcome(c, rows) for c in copies)
    if hide:  # names stay in the database only; every row shown says which case it is
        rows = [{**r, "file": _hidden_file(r)} for r in rows]
    return rows


def _copy_outcome(copy: dict, rows: Sequence[dict]) -> dict:
    """The row of a file whose bytes came earlier in the same upload: the first one's outcome."""
    first = next((r for r in rows if r["scan_id"] == copy["scan_id"]), None)
    if first is None:
        return {**copy, "status": "skipped", "reason": "the same file appears earlier in this upload"}
    known = first["status"] in ("accepted", "already in worklist")
    return {
        **first,
        "file": copy["file"],
        "status": "already in worklist" if known else first["status"],
        "reason": "the same file appears earlier in this upload; it was analysed once"
        + ("" if known else f": {first['reason']}"),
    }


def _declared(item: UploadItem, settings) -> int:
    """Decoded pixels a file will cost, from its header only (a NIfTI volume: all its voxels)."""
    if not is_nifti(item.name, item.data):
        return declared_pixels(item.data, settings)
    try:  # the header is the first 348 (NIfTI-1) or 540 (NIfTI-2) bytes, also inside a .nii.gz
        import nibabel as nib

        raw = item.data
        head = gzip.GzipFile(fileobj=io.BytesIO(raw)).read(540) if raw[:2] == b"\x1f\x8b" else raw[:540]
        kind = nib.Nifti2Header if int.from_bytes(head[:4], "little") == 540 else nib.Nifti1Header
        return math.prod(max(1, int(d)) for d in kind.from_fileobj(io.BytesIO(head)).get_data_shape())
    except Exception:  # not a readable header: the reader refuses the volume with the reason
        return 0


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
    if truth is None and mask is None:
        # The same bytes are already a case: nothing new to record, so they are not decoded and
        # analysed again (40 copies of a 40 MP slice in one zip took 182 s, issue 22, item 6).
        sid = content_id(item.data)
        case = worklist.get(sid)
        if case is not None and Path(case.stored_path).is_file():  # else: stored again
            return [
                _row(
                    item.name,
                    "already in worklist",
                    label=case.label,
                    risk=round(case.risk, 3),
                    flags=case.flags,
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
        added: set[str] = set()
        results = ingest(service, worklist, item.data, item.name, truth_label=truth, truth_mask=mask, added=added)
    except Exception as exc:  # one broken file must not stop the batch; the details go to the log only
        sid = content_id(item.data)
        if isinstance(exc, StorageError):  # read-only, damaged, full or locked: said as it is
            log.error("upload %r not stored: %s", shown_name(item.name, sid, service.settings), exc)
            return [_row(item.name, "error", reason=f"not stored: {exc}", scan_id=sid)]
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
        # add_case's own answer (issue 24: it was re-derived from timestamps, wrong when the earlier
        # case's received_at is not before this upload's clock, e.g. a case imported from another machine).
        earlier = r.scan_id not in added
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


# ----- received batches survive a crash (issue 22, item 16) ---------------------------------


def _storage_reason(exc: OSError) -> str:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    why = "the server's disk is full" if full else "the data folder cannot be written"
    return f"not analysed: {why}, so the upload could not be kept safe; nothing was stored, upload it again later"


def receive_and_process(
    files: Sequence[tuple[str, bytes]],
    service: TriageService,
    worklist: Worklist,
    truth_label: str | None = None,
    masks: Sequence[tuple[str, bytes]] | None = None,
    label_from_folder: bool = False,
    progress: Progress | None = None,
    notice: Notice | None = None,
) -> list[dict]:
    """:func:`process_uploads`, with the batch first stored durably in the data folder's pending
    queue (:mod:`triage.pending`) and removed once analysed: a server killed halfway finishes the
    batch at its next start (:func:`recover_pending`). Same rows as :func:`process_uploads`."""
    masks = list(masks or [])
    problem = service.model_problem() or storage_refusal(worklist, service.settings, [*files, *masks])
    if problem is not None:
        return [_row(name, "refused", reason=f"not analysed: {problem}") for name, _ in files]
    try:
        batch = save_batch(service.settings.data_dir, files, masks, BatchOptions(truth_label, label_from_folder))
    except OSError as exc:
        log.error("a batch of %d files could not be kept for analysis: %s", len(files), exc.strerror or exc)
        return [_row(name, "refused", reason=_storage_reason(exc)) for name, _ in files]
    try:
        rows = process_uploads(
            files,
            service,
            worklist,
            truth_label=truth_label,
            masks=masks,
            label_from_folder=label_from_folder,
            progress=progress,
            notice=notice,
        )
    except BaseException:
        batch.close()  # kept on disk: the next start analyses it
        raise
    batch.finish()
    return rows


@dataclass(frozen=True)
class RecoveryReport:
    """What :func:`recover_pending` did: batches and files received before a restart, their rows."""

    batches: int = 0
    files: int = 0
    rows: tuple[dict, ...] = ()
    kept: int = 0  # batches left for a later start (no usable model, storage refused)

    @property
    def accepted(self) -> int:
        return sum(r["status"] == "accepted" for r in self.rows)

    @property
    def known(self) -> int:
        return sum(r["status"] == "already in worklist" for r in self.rows)

    @property
    def not_added(self) -> int:
        return sum(r["status"] not in ("accepted", "already in worklist") for r in self.rows)

    def message(self) -> str:
        """One sentence for the reader ('' when nothing was pending)."""
        if not self.files:
            return ""
        text = (
            f"{self.files} upload{'s' if self.files != 1 else ''} from before the restart "
            f"{'were' if self.files != 1 else 'was'} analysed: {self.accepted} added to the worklist"
        )
        if self.known:
            text += f", {self.known} already there (analysed before the restart)"
        if self.not_added:
            text += f", {self.not_added} not added (see the rejected uploads on the Worklist page)"
        if self.kept:
            text += f"; {self.kept} batch(es) wait for the next start"
        return text + "."


def recover_pending(service: TriageService, worklist: Worklist) -> RecoveryReport:
    """Analyse the batches received before the server stopped (a crash, SIGKILL, power loss) and
    not finished: the files already analysed then are found in the worklist and not added twice.
    A batch that cannot be analysed now (no usable model, storage refused) stays for the next start."""
    batches = claim_orphans(service.settings.data_dir)
    files, rows, kept = 0, [], 0
    for batch in batches:
        try:
            got = process_uploads(
                batch.files(),
                service,
                worklist,
                truth_label=batch.options.truth_label,
                masks=batch.masks(),
                label_from_folder=batch.options.label_from_folder,
            )
        except Exception:
            log.exception("pending batch %s could not be analysed; it is kept for the next start", batch.batch_id)
            batch.close()
            kept += 1
            continue
        if got and all(r["status"] == "refused" for r in got):
            log.warning(
                "pending batch %s not analysed now (%s); kept for the next start", batch.batch_id, got[0]["reason"]
            )
            batch.close()
            kept += 1
            continue
        files += len(batch.names)
        rows.extend(got)
        batch.finish()
        log.info("pending batch %s (%d files) from before the restart analysed", batch.batch_id, len(batch.names))
    return RecoveryReport(batches=len(batches), files=files, rows=tuple(rows), kept=kept)


class RecoveryRun:
    """:func:`recover_pending` in a background thread (once per server start); ``report`` when done."""

    def __init__(self, service: TriageService, worklist: Worklist) -> None:
        self.waiting = pending_count(service.settings.data_dir)  # batches on disk at the start
        self.report: RecoveryReport | None = None
        self._service, self._worklist = service, worklist
        self._thread = threading.Thread(target=self._run, name="pending-recovery", daemon=True)

    def start(self) -> RecoveryRun:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> RecoveryReport | None:
        """The report once the run is over (None when still running after ``timeout``)."""
        self._thread.join(timeout)
        return self.report

    def _run(self) -> None:
        try:
            self.report = recover_pending(self._service, self._worklist)
        except Exception:  # never kills the server; the batches stay on disk for the next start
            log.exception("analysing the uploads received before the restart failed")
            self.report = RecoveryReport(kept=self.waiting)
