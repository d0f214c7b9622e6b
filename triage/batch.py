"""Analysing many files, and the batch runs of ``python -m triage analyze``.

:func:`analyze_many` is the one loop that decodes many files and analyses them in model batches
through :class:`~triage.service.TriageService` (the CLI's local and Ray engines and the evaluation
reports call it), yielding each file's results or its rejection. Around it: the per-file
result rows (their columns, :data:`RESULT_COLUMNS`, are defined here once), the output writer
(CSV file or a folder of Parquet parts, resumable) and the local engine; plus ``import-results``,
which puts a batch run's rows into the worklist without analysing again.

The Ray engine (:mod:`triage.batch_ray`) calls the same :func:`read_input` and
:func:`analyze_inputs` inside its read tasks and actors, so a row is built by one piece of code
whichever engine ran it. Nothing here imports Ray.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from triage import atomic
from triage.config import Settings
from triage.errors import TriageError
from triage.export import csv_cell, csv_text

if TYPE_CHECKING:
    from triage.records import Case

log = logging.getLogger(__name__)

# The per-file result columns, in their order: the one definition for the CSV and Parquet writers, the
# resume check, the Ray engine's batches, `import-results` and the README. The first 17 are the historical
# order of `analyze`; the last four were added for `import-results` (the worklist needs the content id,
# the OOD score and the model versions).
PROB_COLUMNS: tuple[str, ...] = ("p_no_tumor", "p_glioma", "p_meningioma", "p_pituitary")  # records.CLASSES order
RESULT_COLUMNS: tuple[str, ...] = (
    "path",
    "status",
    "error",
    "label",
    "suspected_tumor",
    *PROB_COLUMNS,
    "risk",
    "ood",
    "flags",
    "tumor_area_px",
    "tumor_area_mm2",
    "mask_path",
    "frame",
    "ms",
    "scan_id",
    "ood_score",
    "classifier_version",
    "segmenter_version",
)
# Parquet column types (everything else is a string); "" in a row is a null there.
FLOAT_COLUMNS = frozenset({*PROB_COLUMNS, "risk", "ood_score", "tumor_area_mm2", "ms"})
INT_COLUMNS = frozenset({"suspected_tumor", "ood", "tumor_area_px", "frame"})
# The columns `import-results` needs in a row (a file written by an older version may lack some).
IMPORT_COLUMNS = ("path", "status", "scan_id", "label", "risk", "flags", "classifier_version", "segmenter_version")
# Rows buffered before a Parquet part is written: few, large files rather than one per batch.
PARQUET_PART_ROWS = 5000


class ResultsError(TriageError):
    """An output that cannot be resumed, or a results file that cannot be imported."""


@dataclass(frozen=True)
class BatchJob:
    """What one ``analyze`` run does, whichever engine runs it."""

    out: Path
    masks_dir: Path | None = None
    explain: bool = False
    batch_size: int = 16
    resume: bool = False
    parquet: bool = False
    quiet: bool = False


@dataclass(frozen=True)
class FileInput:
    """One input file as read from disk: its bytes, or why it could not be read."""

    path: str
    data: bytes | None = None
    error: str = ""


@dataclass(frozen=True)
class OutputRow:
    """One CSV row (``RESULT_COLUMNS`` -> value) and, with ``--masks-dir``, the mask PNG to write
    beside it (the writer writes it, so masks land where the output is, whichever machine analysed)."""

    values: dict
    mask: bytes | None = None

    @property
    def path(self) -> str:
        return str(self.values["path"])


@dataclass
class RunSummary:
    """Counts of one run, for the closing line and the exit code."""

    files: int = 0
    skipped: int = 0  # already in the partial output (--resume)
    ok: int = 0
    rejected: int = 0
    missing: list[str] = field(default_factory=list)  # files that got no row (should never happen)
    duplicates: int = 0  # rows dropped because their file already had rows
    out: str = ""

    def line(self) -> str:
        """The one line ``analyze`` prints at the end."""
        text = f"{self.files} files: {self.ok} scans analysed, {self.rejected} rejected -> {self.out}"
        if self.skipped:
            text += f" ({self.skipped} files already there, skipped)"
        if self.missing:
            text += f"; {len(self.missing)} files got no row, run again with --resume"
        return text


def iter_inputs(paths: Iterable[str]) -> Iterator[Path]:
    """Files given directly, and every file under given folders (recursive, sorted, junk skipped by the
    rules of :func:`triage.folders.is_junk`: hidden files and folders, ``__MACOSX``, ``Thumbs.db``...).
    A file named directly is always read: it was asked for."""
    from triage.folders import files_under  # lazily: the CLI starts without numpy

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            yield from files_under(p)
        else:
            yield p


def read_input(path: str | Path, settings: Settings) -> FileInput:
    """Read one file the way :func:`triage.io.read_path` does (size checked before reading)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > settings.max_file_bytes:
            return FileInput(
                str(p), error=f"file is {size / 1e6:.1f} MB, over the {settings.max_file_bytes / 1e6:.0f} MB limit"
            )
        return FileInput(str(p), data=p.read_bytes())
    except OSError as exc:
        return FileInput(str(p), error=f"cannot read file: {exc.strerror or exc}")


def mask_file_name(path: str, scan_id: str, frame: int | None) -> str:
    """``<stem>_<first 8 of the scan id>[_f<frame>]_mask.png``: unique per slice, readable."""
    suffix = f"_f{frame}" if frame is not None else ""
    return f"{Path(path).stem}_{scan_id[:8]}{suffix}_mask.png"


@dataclass(frozen=True)
class FileResults:
    """One input file analysed: a result per frame or slice, or one rejected result saying why it could
    not be read or decoded. ``ms``: the file's share of its batch's time (decode and analysis)."""

    file: FileInput
    results: tuple  # of triage.records.CaseResult
    ms: float = 0.0


def decode_input(f: FileInput, settings: Settings) -> list:
    """The scans of a read file (a NIfTI volume: its axial slices, ``frame`` = slice index), or a list
    holding one rejected :class:`~triage.records.CaseResult` with the reason."""
    from triage.errors import InvalidScanError
    from triage.io import content_id, read_scans
    from triage.records import CaseResult
    from triage.series import is_nifti, read_nifti

    name = Path(f.path).name
    if f.data is None:
        return [CaseResult(name=name, status="rejected", error=f.error)]
    try:
        if is_nifti(name, f.data):
            return [s.scan for s in read_nifti(f.data, name, settings).slices]
        return read_scans(f.data, name, settings)
    except InvalidScanError as exc:
        sid = content_id(f.data) if f.data else ""
        return [CaseResult(name=name, status="rejected", scan_id=sid, error=str(exc))]


def analyze_many(
    service,
    inputs: Iterable[FileInput],
    batch_size: int = 16,
    explain: bool = False,
    prepare: Callable | None = None,
) -> Iterator[FileResults]:
    """Decode and analyse many files, ``batch_size`` files per batch through ``service.analyze_scans``
    (which bounds each network call at :data:`triage.service.MAX_BATCH` scans), yielding each file's
    :class:`FileResults` in input order once its batch is done. ``inputs`` is read lazily, one batch at
    a time, so a generator of :func:`read_input` keeps one batch of files in memory. One bad file is
    its own rejected result; the others go on. ``prepare(scan) -> scan``: applied to every decoded scan
    before the analysis (an evaluation that degrades its inputs)."""
    from triage.records import CaseResult

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    it = iter(inputs)
    while batch := list(itertools.islice(it, batch_size)):
        t0 = time.perf_counter()
        decoded = [(f, decode_input(f, service.settings)) for f in batch]
        if prepare is not None:
            decoded = [(f, [s if isinstance(s, CaseResult) else prepare(s) for s in items]) for f, items in decoded]
        scans = [s for _, items in decoded for s in items if not isinstance(s, CaseResult)]
        analysed = iter(service.analyze_scans(scans, explain=explain))
        ms = round((time.perf_counter() - t0) * 1000 / len(batch), 1)
        for f, items in decoded:
            results = tuple(item if isinstance(item, CaseResult) else next(analysed) for item in items)
            yield FileResults(f, results, ms)


def file_rows(done: FileResults, masks_dir: Path | None) -> list[OutputRow]:
    """The CSV rows of an analysed file (one per frame), with its mask PNGs when ``masks_dir`` is given."""
    from triage.service import case_row, mask_png

    path = done.file.path
    rows = []
    for result in done.results:
        frame = None if result.scan is None else result.scan.frame
        values = case_row(result)
        values.update(
            path=path,
            ms=done.ms,
            frame="" if frame is None else frame,
            mask_path="",
            classifier_version=result.model_versions.get("classifier", ""),
            segmenter_version=result.model_versions.get("segmenter", ""),
        )
        seg, mask = result.segmentation, None
        if masks_dir and result.ok and seg is not None and seg.area_px > 0:
            mask = mask_png(seg.mask)
            values["mask_path"] = str(Path(masks_dir) / mask_file_name(path, result.scan_id, frame))
        rows.append(OutputRow({c: values.get(c, "") for c in RESULT_COLUMNS}, mask))
    return rows


def analyze_inputs(service, inputs: list[FileInput], masks_dir: Path | None, explain: bool = False) -> list[OutputRow]:
    """The rows of one batch of read files (:func:`analyze_many` as one batch, :func:`file_rows`): one row
    per frame, one ``rejected`` row for a file that cannot be read or decoded, in input order. What a Ray
    actor runs on each batch it is given."""
    done = analyze_many(service, inputs, batch_size=max(1, len(inputs)), explain=explain)
    return [row for f in done for row in file_rows(f, masks_dir)]


# ----- output ------------------------------------------------------------------------------


def _cell(value: object) -> str:
    """A value as the CSV writer writes it, formula-like text defused (:func:`triage.export.csv_cell`),
    as a string (so rows that crossed a Ray dataset as strings compare equal)."""
    return str(csv_cell(value))


def _typed(column: str, value: object) -> object:
    if value is None or value == "":
        return None
    if column in FLOAT_COLUMNS:
        return float(value)
    if column in INT_COLUMNS:
        return int(value)
    return str(value)


class ResultWriter:
    """Appends rows to the output (a CSV file, or a folder of Parquet parts) and writes their masks.

    With ``resume`` the rows already in a partial output are kept and :attr:`done` names their
    files. The last file of a partial CSV is dropped and analysed again: a run killed while it was
    writing may have left only some of its rows. Parquet parts are written whole and renamed into
    place, so every part present is complete.
    """

    def __init__(self, out: Path, parquet: bool = False, resume: bool = False, masks_dir: Path | None = None):
        self.out = Path(out)
        self.parquet = parquet
        self.masks_dir = Path(masks_dir) if masks_dir else None
        self.done: set[str] = set()
        self._buffer: list[dict] = []
        self._part = 0
        if self.masks_dir:
            self.masks_dir.mkdir(parents=True, exist_ok=True)
        if parquet:
            self._open_parquet(resume)
        else:
            self._open_csv(resume)

    # -- CSV --
    def _open_csv(self, resume: bool) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if resume and self.out.is_file() and self.out.stat().st_size > 0:
            keep, self.done = _csv_resume_point(self.out)
            with self.out.open("r+b") as fh:
                fh.truncate(keep)
            self._fh = self.out.open("a", newline="", encoding="utf-8")
            self._csv = csv.writer(self._fh)
            if keep == 0:
                self._csv.writerow(RESULT_COLUMNS)
        else:
            self._fh = self.out.open("w", newline="", encoding="utf-8")
            self._csv = csv.writer(self._fh)
            self._csv.writerow(RESULT_COLUMNS)
        self._fh.flush()

    # -- Parquet --
    def _open_parquet(self, resume: bool) -> None:
        import pyarrow.parquet as pq

        if self.out.exists() and not self.out.is_dir():
            raise ResultsError(f"{self.out} exists and is not a folder of Parquet parts")
        self.out.mkdir(parents=True, exist_ok=True)
        for tmp in [*self.out.glob(".part-*.tmp"), *self.out.glob(f"{atomic.TEMP_PREFIX}part-*")]:
            tmp.unlink()  # an interrupted part write; its rows are analysed again
        parts = sorted(self.out.glob("part-*.parquet"))
        if not resume:
            for p in parts:
                p.unlink()
            return
        for p in parts:
            self.done.update(str(v) for v in pq.read_table(p, columns=["path"]).column("path").to_pylist())
            self._part = max(self._part, int(p.stem.split("-")[1]) + 1)

    def _flush_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._buffer:
            return
        schema = pa.schema(
            [
                (c, pa.float64() if c in FLOAT_COLUMNS else pa.int64() if c in INT_COLUMNS else pa.string())
                for c in RESULT_COLUMNS
            ]
        )
        table = pa.Table.from_pylist(
            [{c: _typed(c, r[c]) for c in RESULT_COLUMNS} for r in self._buffer], schema=schema
        )
        final = self.out / f"part-{self._part:05d}.parquet"
        with atomic.atomic_path(final) as tmp:  # a part is there whole or not at all
            pq.write_table(table, tmp)
        self._part += 1
        self._buffer = []

    # -- both --
    def write(self, rows: list[OutputRow]) -> None:
        """Write the masks, then the rows (so a row in the output always has its mask on disk)."""
        for r in rows:
            if r.mask is not None and r.values.get("mask_path"):
                Path(r.values["mask_path"]).write_bytes(r.mask)
        if self.parquet:
            self._buffer.extend(r.values for r in rows)
            if len(self._buffer) >= PARQUET_PART_ROWS:
                self._flush_parquet()
        else:
            self._csv.writerows([[_cell(r.values.get(c)) for c in RESULT_COLUMNS] for r in rows])
            self._fh.flush()
        self.done.update(r.path for r in rows)

    def close(self) -> None:
        """Write what is buffered and close the file."""
        if self.parquet:
            self._flush_parquet()
        else:
            self._fh.close()


def _csv_resume_point(out: Path) -> tuple[int, set[str]]:
    """(byte offset to keep, files whose rows are complete) of a partial CSV output."""
    raw = out.read_bytes()
    offsets: list[int] = []  # byte offset after each complete record
    pos = 0

    def lines() -> Iterator[str]:
        nonlocal pos
        for line in io.BytesIO(raw):
            if not line.endswith(b"\n"):
                return  # the cut last line of a killed run
            pos += len(line)
            yield line.decode("utf-8")

    records = []
    for rec in csv.reader(lines()):
        records.append(rec)
        offsets.append(pos)
    if not records:
        return 0, set()
    if tuple(records[0]) != RESULT_COLUMNS:
        raise ResultsError(
            f"cannot resume {out}: its columns are not this version's ({len(records[0])} columns); "
            "write to a new file instead"
        )
    rows = records[1:]
    if not rows:
        return offsets[0], set()
    # Rows of one file are written together: drop the last file's rows, they may be incomplete.
    last = rows[-1][0]
    n = len(rows)
    while n and rows[n - 1][0] == last:  # the raw cells: the same file wrote the same text
        n -= 1
    return offsets[n], {csv_text(r[0]) for r in rows[:n]}


def count_rows(rows: list[OutputRow], summary: RunSummary) -> None:
    """Add a batch's rows to the run's counts."""
    for r in rows:
        if r.values["status"] == "ok":
            summary.ok += 1
        else:
            summary.rejected += 1


def pending_files(files: list[Path], writer: ResultWriter, summary: RunSummary) -> list[Path]:
    """The files still to analyse (those without rows in a partial output), noting how many were skipped."""
    todo = [f for f in files if str(f) not in writer.done]
    summary.files = len(files)
    summary.skipped = len(files) - len(todo)
    return todo


# ----- the local engine ------------------------------------------------------------------


def run_local(job: BatchJob, files: list[Path]) -> RunSummary:
    """Analyse ``files`` in this process, ``job.batch_size`` files per model batch."""
    from tqdm import tqdm

    from triage.service import TriageService

    service = TriageService()
    service.models()  # load once, fail early with a clear message
    writer = ResultWriter(job.out, job.parquet, job.resume, job.masks_dir)
    summary = RunSummary(out=str(job.out))
    todo = pending_files(files, writer, summary)
    bar = tqdm(total=len(todo), unit="file", desc="analyze", disable=job.quiet)
    inputs = (read_input(f, service.settings) for f in todo)  # read one batch at a time
    try:
        for done in analyze_many(service, inputs, job.batch_size, job.explain):
            rows = file_rows(done, job.masks_dir)
            writer.write(rows)
            count_rows(rows, summary)
            bar.update(1)
    finally:
        bar.close()
        writer.close()
    return summary


# ----- import-results --------------------------------------------------------------------


@dataclass
class ImportSummary:
    """What ``import-results`` did with each row."""

    added: int = 0
    already: int = 0  # the scan is already a case (same content hash)
    rejected: int = 0  # rejected rows never become cases
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of rows not imported

    def line(self) -> str:
        text = f"{self.added} cases added, {self.already} already in the worklist, {self.rejected} rejected rows"
        if self.skipped:
            text += f", {len(self.skipped)} rows not imported"
        return text


def read_results(path: Path) -> Iterator[dict]:
    """The rows of a results CSV file, or of a Parquet file or folder of parts, as dicts."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".parquet":
        import pyarrow.parquet as pq

        parts = sorted(path.glob("part-*.parquet")) if path.is_dir() else [path]
        for p in parts:
            yield from pq.read_table(p).to_pylist()
        return
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            yield {k: csv_text(v) if isinstance(v, str) else v for k, v in row.items()}


def _number(value: object, cast=float):
    return None if value is None or value == "" else cast(value)


def _case_from_row(row: dict, results: Path, settings: Settings) -> tuple[Case | None, str]:
    """The worklist case of an ``ok`` row (as :func:`triage.intake.case_record` builds it), or
    (None, why). The file is read again: it must still be the bytes that were analysed."""
    from triage.errors import InvalidScanError
    from triage.intake import display_name, storable_bytes, store_upload
    from triage.io import read_scans
    from triage.overlay import thumbnail_png
    from triage.records import Case
    from triage.series import is_nifti

    if is_nifti(str(row["path"]), b""):
        return None, "NIfTI slices are not imported from results; upload the volume on New scans (one study)"
    src = read_input(row["path"], settings)
    if src.data is None:
        return None, src.error
    digest = hashlib.sha256(src.data).hexdigest()
    if str(row["scan_id"]).split("-f")[0] != digest[:32]:
        return None, "the file changed since it was analysed (its content hash differs)"
    frame = _number(row.get("frame"), int)
    scans = read_scans(src.data, display_name(row["path"]), settings)
    scan = next((s for s in scans if s.frame == frame), None)
    if scan is None:
        return None, f"frame {frame} is not in the file"
    scans_dir = settings.scans_dir
    try:
        to_store = storable_bytes(src.data, scan.source_format, settings)
    except InvalidScanError as exc:
        return None, str(exc)
    stored = store_upload(to_store, scan.source_format, scans_dir, digest)
    mask_path = None
    if row.get("mask_path") and Path(row["mask_path"]).is_file():
        mask_path = store_upload(Path(row["mask_path"]).read_bytes(), "png", scans_dir / "masks")
    flags = [f for f in str(row.get("flags") or "").split(";") if f]
    case = Case(
        scan_id=str(row["scan_id"]),
        name=scan.name,
        stored_path=str(stored),
        label=row["label"],
        probs=tuple(float(row[c]) for c in PROB_COLUMNS),  # RESULT_COLUMNS order = records.CLASSES
        risk=float(row["risk"]),
        flags=tuple(flags),
        ood=bool(_number(row.get("ood"), int)),
        tumor_area_px=_number(row.get("tumor_area_px"), int) or 0,
        tumor_area_mm2=_number(row.get("tumor_area_mm2")),
        mask_path=str(mask_path) if mask_path else None,
        thumbnail=thumbnail_png(scan.pixels),
        classifier_version=row.get("classifier_version") or "",
        segmenter_version=row.get("segmenter_version") or "",
        extra={
            "frame": scan.frame,
            "ood_score": _number(row.get("ood_score")),
            "pixel_spacing": list(scan.pixel_spacing) if scan.pixel_spacing else None,
            "dicom": scan.meta,
            "batch_results": str(results),  # where the case came from
        },
    )
    return case, ""


def import_results(results: list[Path], settings: Settings) -> ImportSummary:
    """Add the ``ok`` rows of batch results to the worklist in ``settings.data_dir``.

    A scan already in the worklist (same content hash, so the same ``scan_id``) is not added
    again, so importing the same results twice, or results that overlap uploads, adds nothing
    twice. Rows whose file is gone or changed are reported, not imported.
    """
    from triage.worklist import Worklist

    worklist = Worklist(settings.db_path)
    summary = ImportSummary()
    for res in results:
        for row in read_results(res):
            missing = [c for c in IMPORT_COLUMNS if c not in row]
            if missing:
                raise ResultsError(
                    f"{res} lacks the columns {', '.join(missing)}: it was written by an older version; "
                    "analyse again to import it"
                )
            if row["status"] != "ok":
                summary.rejected += 1
                continue
            if worklist.get(str(row["scan_id"])) is not None:
                summary.already += 1  # no need to read the file again
                continue
            case, why = _case_from_row(row, Path(res), settings)
            if case is None:
                summary.skipped.append((str(row["path"]), why))
                continue
            if worklist.add_case(case, actor="import-results"):
                summary.added += 1
            else:
                summary.already += 1
    return summary
