"""Turn training data from the browser into a clean dataset folder and a summary of what was found.

Sources: a zip archive (bytes or path) or a server folder laid out one folder per class
(``glioma/ meningioma/ no_tumor/ pituitary/``, aliases such as ``notumor`` or ``glioma_tumor``,
optional ``masks/`` with the same file stems), a manifest CSV (``path,label[,mask_path]``
relative to its folder, as in ``../shared/data``), or reviewed worklist cases.

Every source ends in the same layout under a staging folder of the app's data dir::

    <staging>/<dataset id>/
        manifest.csv        path,label,mask_path,sha1,source  (read by triage.datasets.load_manifest)
        glioma/ meningioma/ no_tumor/ pituitary/   validated images
        masks/              binary 0/255 PNG masks, same stem as their image
        summary.json        the :class:`ImportSummary`

Every image is decoded with :func:`triage.io.read_path` (rejects are listed with the reason),
masks must match their image's size, exact and near duplicates (the rule of
:func:`triage.datasets.dedup_groups`) are removed, and ``problems`` lists what would stop a
training run. A dataset is built in a hidden temporary folder and renamed into place at the
end, so a failure (e.g. an unsafe archive, which raises :class:`DatasetError`) leaves nothing.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np

from triage import archive, atomic, folders
from triage.brain_check import is_blank
from triage.clock import utc_now
from triage.config import Settings, get_settings
from triage.datasets import dedup_sources, file_sha1, read_mask, thumbnail_u8
from triage.errors import DatasetError, InvalidScanError
from triage.export import csv_row
from triage.io import declared_pixels, read_path
from triage.lifecycle.training_run import MIN_IMAGES_PER_CLASS
from triage.privacy import shown_name
from triage.records import CLASSES, Case, SourceKind, normalize_label

log = logging.getLogger(__name__)

# Zip-bomb guards (checked on the declared sizes before anything is written, and again on
# the bytes actually inflated while extracting).
MAX_MEMBERS = 50_000
MAX_MEMBER_BYTES = 256 * 1024 * 1024
MAX_TOTAL_BYTES = 2 * 1024 * 1024 * 1024
MAX_RATIO = 100.0
RATIO_MIN_BYTES = 1024 * 1024  # the ratio cap applies to members that inflate beyond this

# Decoded pixels one import may cost, added up from the headers before each image is decoded: 50,000
# slices of 512^2 fit 1.5 times; 2000 blank 40 MP PNGs (a 0.6 MB zip) would need 80 G.
MAX_IMPORT_PIXELS = 20_000_000_000

MAX_FOLDER_FILES = 200_000  # a server folder with more files is refused (e.g. "/" typed by mistake)

TASKS = ("classifier", "segmenter", "both")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")

Progress = Callable[[int, int], None]


@dataclass
class ImportSummary:
    """What an import found. ``problems`` block training; ``warnings`` do not."""

    dataset_dir: str
    source: str
    task: str
    counts: dict[str, int]
    masks_per_class: dict[str, int]
    mask_mismatches: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    exact_duplicates: int = 0
    near_duplicates: int = 0
    rejected: list[list[str]] = field(default_factory=list)  # [name, reason]
    skipped: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    created: str = ""

    @property
    def total(self) -> int:
        return int(sum(self.counts.values()))

    @property
    def masks(self) -> int:
        return int(sum(self.masks_per_class.values()))

    @property
    def ok(self) -> bool:
        return not self.problems

    def table(self) -> list[dict]:
        """One row per class: images and masks kept."""
        return [{"class": c, "images": self.counts.get(c, 0), "masks": self.masks_per_class.get(c, 0)} for c in CLASSES]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ImportSummary:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class _Item:
    """A candidate training image found in a source."""

    path: Path
    label: str
    name: str  # shown in the summary
    mask: Path | None = None
    frame: int | None = None
    stem: str = ""  # file-name stem for the dataset copy (default: from ``name``)


def staging_root(settings: Settings | None = None) -> Path:
    """Folder holding imported datasets (``<data dir>/datasets``)."""
    return (settings or get_settings()).data_dir / "datasets"


def find_problems(counts: dict[str, int], masks: int, task: str) -> list[str]:
    """Reasons a dataset cannot train ``task`` (classifier / segmenter / both)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    present = {k: v for k, v in counts.items() if v > 0}
    problems = []
    if not present:
        return ["no usable images were found"]
    if len(present) < 2:
        problems.append(f"only one class present ({', '.join(present)}); at least two classes are needed")
    small = {k: v for k, v in present.items() if v < MIN_IMAGES_PER_CLASS}
    if small:
        listed = ", ".join(f"{k}: {v}" for k, v in small.items())
        problems.append(f"too few images ({listed}); at least {MIN_IMAGES_PER_CLASS} per class are needed")
    if task in ("segmenter", "both") and masks == 0:
        problems.append(
            "no tumor masks found: the segmenter needs a masks/ folder with files named like "
            "their images (or a mask_path column)"
        )
    return problems


# ----- sources --------------------------------------------------------------------------------


def confine(path: str | Path, settings: Settings) -> tuple[Path, Path]:
    """(resolved path, the allowed root holding it) for a server path a browser user typed.

    Relative paths are taken inside the first allowed root; the path is resolved (symlinks and
    ``..`` followed) before the check, so neither an absolute path, ``../`` nor a link can leave
    :attr:`Settings.allowed_import_roots` (issue 22, item 11). Raises :class:`DatasetError`
    naming the allowed folders, and says nothing about whether the path exists outside them.
    """
    roots = settings.allowed_import_roots
    raw = Path(str(path).strip()).expanduser()
    candidates = [raw] if raw.is_absolute() else [r / raw for r in roots]
    for cand in candidates:
        resolved = cand.resolve()
        for root in roots:
            if resolved.is_relative_to(root):
                return resolved, root
    names = ", ".join(r.name or str(r) for r in roots) or "none configured"
    raise DatasetError(
        f"{raw.name or 'this path'}: only folders inside the server's data folders ({names}) can be imported; "
        "set TRIAGE_IMPORT_ROOTS to allow another folder"
    )


def import_folder(
    folder: str | Path, task: str = "classifier", settings: Settings | None = None, progress: Progress | None = None
) -> ImportSummary:
    """Import a server folder (inside :attr:`Settings.allowed_import_roots`): class folders
    (+ masks/), or a folder holding a manifest.csv."""
    settings = settings or get_settings()
    folder, root = confine(folder, settings)
    if not folder.is_dir():
        raise DatasetError(f"folder not found: {folder.name}")
    if (folder / "manifest.csv").is_file():
        items, skipped, rejected, mismatches = _collect_manifest(folder / "manifest.csv", root)
    else:
        items, skipped, mismatches = _collect_class_folders(folder)
        rejected = []
        items, refused = _inside(items, root)
        rejected += refused
    return _build(items, f"folder {folder}", task, settings, skipped, rejected, mismatches, progress)


def import_manifest(
    csv_path: str | Path,
    task: str = "classifier",
    settings: Settings | None = None,
    progress: Progress | None = None,
    include_test: bool = False,
) -> ImportSummary:
    """Import the rows of a manifest CSV (paths relative to its folder). Test-split rows are left out
    unless ``include_test`` (they stay available for an honest evaluation)."""
    settings = settings or get_settings()
    csv_path, root = confine(csv_path, settings)
    if not csv_path.is_file():
        raise DatasetError(f"manifest not found: {csv_path.name}")
    items, skipped, rejected, mismatches = _collect_manifest(csv_path, root, include_test)
    return _build(items, f"manifest {csv_path}", task, settings, skipped, rejected, mismatches, progress)


def import_reviewed(
    cases: list[Case], task: str = "classifier", settings: Settings | None = None, progress: Progress | None = None
) -> ImportSummary:
    """Import reviewed worklist cases: the reviewer's label and the stored scan (and truth mask)."""
    settings = settings or get_settings()
    items, skipped, rejected = [], [], []
    for case in cases:
        name = shown_name(case.name, case.scan_id, settings)
        label = normalize_label(case.reviewed_label or "")
        if label is None:
            skipped.append(f"{name}: no reviewed class label")
            continue
        stored = case.stored_path
        if not stored or not Path(stored).is_file():
            rejected.append([name, "the stored scan file is missing"])
            continue
        frame = case.extra.get("frame")
        mask = case.truth_mask_path
        sid = case.scan_id[:12]
        items.append(
            _Item(
                path=Path(stored),
                label=label,
                name=name if settings.file_names_hidden else f"{name} ({sid})",
                stem=f"case_{sid}" if settings.file_names_hidden else f"{Path(name).stem}_{sid}",
                mask=Path(mask) if mask else None,
                frame=int(frame) if frame is not None else None,
            )
        )
    if not cases:
        skipped.append("the worklist has no reviewed cases")
    return _build(items, "reviewed worklist cases", task, settings, skipped, rejected, [], progress)


def import_zip(
    source: bytes | str | Path,
    task: str = "classifier",
    settings: Settings | None = None,
    progress: Progress | None = None,
) -> ImportSummary:
    """Import a zip archive holding class folders (+ masks/) or a manifest.csv.

    The archive is checked before anything is written (:mod:`triage.archive`'s rules): absolute
    paths, drive letters, any ``..`` component, symlinks, encrypted members, too many members,
    members or a total too large, or a compression ratio above ``MAX_RATIO`` raise :class:`DatasetError`.
    """
    settings = settings or get_settings()
    root = staging_root(settings)
    root.mkdir(parents=True, exist_ok=True)
    try:
        zf = archive.open_zip(source)
    except archive.OPEN_ERRORS as exc:
        raise DatasetError(f"not a readable zip archive ({exc})") from exc
    with zf:
        plan, skipped = _check_archive(zf)
        raw = Path(tempfile.mkdtemp(dir=root, prefix=".unzip-"))
        try:
            skipped += _extract(zf, plan, raw)
            manifests = sorted(raw.rglob(folders.MANIFEST), key=lambda p: len(p.parts))
            if manifests:
                items, more, rejected, mismatches = _collect_manifest(manifests[0], raw)
            else:
                items, more, mismatches = _collect_class_folders(raw)
                rejected = []
            return _build(items, "zip archive", task, settings, skipped + more, rejected, mismatches, progress)
        finally:
            shutil.rmtree(raw, ignore_errors=True)


SOURCES: tuple[str, ...] = tuple(k.value for k in SourceKind)


def import_source(
    kind: str, value: object, task: str = "classifier", settings: Settings | None = None, report: Progress | None = None
) -> ImportSummary:
    """Dispatch to an importer: ``kind`` in :data:`SOURCES`; ``value`` is the folder path, the zip
    (bytes or path), the manifest path, or the list of reviewed worklist cases."""
    if kind == SourceKind.FOLDER:
        return import_folder(str(value), task, settings, report)
    if kind == SourceKind.ZIP:
        return import_zip(value, task, settings, report)
    if kind == SourceKind.MANIFEST:
        return import_manifest(str(value), task, settings, report)
    if kind == SourceKind.WORKLIST:
        return import_reviewed(list(value), task, settings, report)
    raise ValueError(f"source must be one of {SOURCES}, got {kind!r}")


# ----- zip safety ----------------------------------------------------------------------------


def _limits() -> archive.ArchiveLimits:
    """The importer's archive limits (read at call time, so a test or a deployment can lower them)."""
    return archive.ArchiveLimits(MAX_MEMBERS, MAX_MEMBER_BYTES, MAX_TOTAL_BYTES, MAX_RATIO, RATIO_MIN_BYTES)


def _check_archive(zf: zipfile.ZipFile) -> tuple[list[tuple[zipfile.ZipInfo, str]], list[str]]:
    """Validate every member by :mod:`triage.archive`'s rules (any refused member refuses the whole
    archive, before anything is written); return (members to extract with their names, skipped notes)."""
    limits = _limits()
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise DatasetError(f"archive has {len(infos)} members, more than the {limits.max_members} allowed")
    total = 0
    plan, skipped = [], []
    for info in infos:
        problem = archive.member_problem(info, limits)
        if problem:
            raise DatasetError(f"unsafe archive: member {info.filename!r}: {problem}")
        if info.is_dir():
            continue
        total += info.file_size
        if total > limits.max_total_bytes:
            raise DatasetError(f"archive inflates to more than {limits.max_total_bytes / 1e9:.0f} GB")
        parts = archive.member_parts(info.filename)
        clean = "/".join(parts)
        if folders.is_junk(parts):  # the rules of triage.folders, as for a server folder
            skipped.append(f"{clean}: hidden or system file, skipped")
            continue
        if not folders.is_image_name(parts[-1]) and parts[-1].lower() != folders.MANIFEST:
            skipped.append(f"{clean}: not an image file, skipped")
            continue
        plan.append((info, clean))
    return plan, skipped


def _extract(zf: zipfile.ZipFile, plan: list[tuple[zipfile.ZipInfo, str]], target: Path) -> list[str]:
    """Stream members into ``target``, enforcing the declared sizes and the total cap on real bytes.

    Returns notes on members that were not written because another member already took their
    name (``a.png`` twice, or both ``a.png`` and ``a.png/b.png``): that member is skipped with a
    reason naming only the member, never a server path.
    """
    limits = _limits()
    base = target.resolve()
    total = 0
    notes: list[str] = []
    for info, clean in plan:
        dest = (base / clean).resolve()
        if not dest.is_relative_to(base):  # belt and braces: the names were checked already
            raise DatasetError(f"unsafe archive: member {info.filename!r} would be written outside the target")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            total = archive.extract_member(zf, info, dest, limits, total)
        except (FileExistsError, IsADirectoryError, NotADirectoryError):
            # The name is taken by an earlier member, as a file or as a folder.
            notes.append(f"{clean}: the archive holds another file or folder of this name; skipped")
        except archive.ArchiveLimitError as exc:
            raise DatasetError(str(exc)) from exc
        except archive.READ_ERRORS as exc:
            raise DatasetError(f"archive member {info.filename!r} cannot be extracted ({exc})") from exc
    return notes


# ----- collecting items ----------------------------------------------------------------------


def _inside(items: list[_Item], root: Path) -> tuple[list[_Item], list[list[str]]]:
    """Items whose file (and mask) resolve inside ``root``; a symlink pointing out is refused."""
    kept, refused = [], []
    for it in items:
        if not it.path.resolve().is_relative_to(root):
            refused.append([it.name, "a link pointing outside the allowed folders; not read"])
            continue
        if it.mask is not None and not it.mask.resolve().is_relative_to(root):
            it = _Item(path=it.path, label=it.label, name=it.name, mask=None, frame=it.frame, stem=it.stem)
        kept.append(it)
    return kept, refused


def _collect_class_folders(root: Path) -> tuple[list[_Item], list[str], list[str]]:
    """Images under class folders and their masks (:func:`triage.folders.scan_class_folders`).
    Returns items, skipped, mask notes."""
    found = folders.scan_class_folders(root, max_files=MAX_FOLDER_FILES)
    items = [_Item(path=f.path, label=f.label, name=f.rel, mask=f.mask) for f in found.images]
    return items, found.skipped, found.unpaired_masks


def _collect_manifest(
    csv_path: Path, confine: Path | None, include_test: bool = True
) -> tuple[list[_Item], list[str], list[list[str]], list[str]]:
    """Rows of a manifest CSV. ``confine``: paths must stay inside this folder (archives)."""
    base = csv_path.parent
    items, skipped, rejected, mismatches = [], [], [], []
    n_test = 0
    for i, row in enumerate(folders.manifest_rows(csv_path), start=2):
        rel = row.get("path", "")
        name = rel or f"row {i}"
        if not include_test and row.get("split", "").lower() in folders.TEST_FOLDERS:
            n_test += 1
            continue
        raw_label = row.get("label", "")
        label = normalize_label(raw_label)
        if label is None:
            why = (
                "binary tumor/no label cannot train the 4-class model"
                if raw_label.lower() in {"yes", "tumor"}
                else f"unknown label {raw_label!r}"
            )
            skipped.append(f"{name}: {why}, skipped")
            continue
        path = _manifest_path(base, rel, confine)
        if path is None:
            rejected.append([name, "path is empty or points outside the dataset folder"])
            continue
        if not path.is_file():
            rejected.append([name, "file not found"])
            continue
        mask = None
        if row.get("mask_path"):
            mask = _manifest_path(base, row["mask_path"], confine)
            if mask is None or not mask.is_file():
                mismatches.append(f"{row['mask_path']}: mask file not found, dropped")
                mask = None
        items.append(_Item(path=path, label=label, name=name, mask=mask))
    if n_test:
        skipped.append(f"{n_test} rows of the test split left out (kept for evaluation)")
    return items, skipped, rejected, mismatches


def _manifest_path(base: Path, rel: str, confine: Path | None) -> Path | None:
    if not rel:
        return None
    p = folders.manifest_path(base, rel)
    if confine is not None and not p.is_relative_to(confine.resolve()):
        return None
    return p


# ----- building the dataset ------------------------------------------------------------------


def _sha1_file(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _unique_stem(stem: str, used: set[str]) -> str:
    stem = _UNSAFE_CHARS.sub("_", stem).strip("._")[:80] or "image"
    candidate, n = stem, 1
    while candidate.lower() in used:
        n += 1
        candidate = f"{stem}_{n}"
    used.add(candidate.lower())
    return candidate


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise DatasetError("PNG encoding failed")
    return buf.tobytes()


def _dataset_id(source: str) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    kind = source.split(" ")[0]
    return f"{stamp}-{kind}-{hashlib.sha1(os.urandom(8)).hexdigest()[:6]}"


def _build(
    items: list[_Item],
    source: str,
    task: str,
    settings: Settings,
    skipped: list[str],
    rejected: list[list[str]],
    mismatches: list[str],
    progress: Progress | None,
) -> ImportSummary:
    """Validate, de-duplicate and write ``items`` as a dataset folder; return its summary."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    root = staging_root(settings)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".import-"))
    try:
        summary = _write_dataset(
            items, source, task, settings, skipped, list(rejected), list(mismatches), tmp, progress
        )
        final = root / _dataset_id(source)
        summary.dataset_dir = str(final)
        (tmp / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2), encoding="utf-8")
        atomic.replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("imported %d images from %s into %s", summary.total, source, final)
    return summary


def _write_dataset(
    items: list[_Item],
    source: str,
    task: str,
    settings: Settings,
    skipped: list[str],
    rejected: list[list[str]],
    mismatches: list[str],
    out: Path,
    progress: Progress | None,
) -> ImportSummary:
    # Nothing decoded stays in memory (issue 22, item 3: a 10 kB zip of 40 blank 40 MP PNGs
    # peaked at 2.3 GB): each accepted image's PNG copy and mask go straight to a pending file,
    # and only its 4 kB thumbnail is kept for the de-duplication.
    pending = out / ".pending"
    pending.mkdir()
    accepted: list[tuple[_Item, Path | None, Path | None]] = []
    thumbs: list[np.ndarray] = []
    sha1s: list[str] = []
    budget = MAX_IMPORT_PIXELS
    for i, item in enumerate(items):
        if progress is not None:
            progress(i, len(items))
        declared = declared_pixels(item.path, settings)
        if declared > budget:  # checked on the header, before decoding
            rejected.append(
                [item.name, f"not decoded: the import's budget of {MAX_IMPORT_PIXELS:,} decoded pixels is spent"]
            )
            continue
        try:
            scans = read_path(item.path, settings) if item.frame is None else read_path(item.path, settings, item.frame)
        except InvalidScanError as exc:
            rejected.append([item.name, str(exc)])
            continue
        budget -= declared
        if item.frame is not None:
            scan = scans[0]
        elif len(scans) > 1:
            rejected.append([item.name, f"has {len(scans)} frames; training needs one slice per file"])
            continue
        else:
            scan = scans[0]
        del scans
        if is_blank(scan.pixels):
            rejected.append([item.name, "blank image (every pixel has the same value): nothing to train on"])
            continue
        # DICOM (which may carry patient data) and single frames are re-written as PNG.
        png_path = None
        if item.frame is not None or scan.source_format == "dicom":
            png_path = pending / f"{len(accepted)}.png"
            png_path.write_bytes(_png(scan.pixels))
        mask_path = None
        if item.mask is not None:
            try:
                mask = read_mask(item.mask, scan.shape)  # allow-listed, size-checked; DatasetError only
                mask_path = pending / f"{len(accepted)}_mask.png"
                mask_path.write_bytes(_png(mask.astype(np.uint8) * 255))
                del mask
            except DatasetError as exc:
                mismatches.append(f"{exc}; mask dropped")
            except Exception:  # never expected; one bad mask must not fail the import
                log.exception("mask %s could not be read", item.mask)
                mismatches.append(f"mask {item.mask.name}: unreadable mask; mask dropped")
        accepted.append((item, png_path, mask_path))
        thumbs.append(thumbnail_u8(scan.pixels))
        sha1s.append(_sha1_file(png_path) if png_path is not None else file_sha1(item.path))
        del scan
    if progress is not None:
        progress(len(items), len(items))
    sources = dedup_sources(np.stack(thumbs), sha1s) if thumbs else np.zeros(0, np.int64)
    del thumbs
    keep = sources < 0
    duplicates, exact, near = [], 0, 0
    kept_idx = np.nonzero(keep)[0]
    for i in np.nonzero(~keep)[0]:
        j = int(sources[i])
        if sha1s[j] == sha1s[i]:
            exact += 1
            kind = "exact copy"
        else:
            near += 1
            kind = "near duplicate"
        a, b = accepted[i][0], accepted[j][0]
        clash = f" (labelled {a.label} vs {b.label})" if a.label != b.label else ""
        duplicates.append(f"{a.name}: {kind} of {b.name}{clash}, removed")
    counts: Counter = Counter()
    mask_counts: Counter = Counter()
    used: set[str] = set()
    rows = []
    for i in kept_idx:
        item, png_path, mask_path = accepted[i]
        stem = _unique_stem(item.stem or Path(item.name).stem, used)
        suffix = ".png" if png_path is not None else (item.path.suffix.lower() or ".dcm")
        rel = f"{item.label}/{stem}{suffix}"
        (out / item.label).mkdir(exist_ok=True)
        if png_path is not None:
            os.replace(png_path, out / rel)
        else:
            shutil.copyfile(item.path, out / rel)
        mask_rel = ""
        if mask_path is not None:
            (out / "masks").mkdir(exist_ok=True)
            mask_rel = f"masks/{stem}.png"
            os.replace(mask_path, out / mask_rel)
            mask_counts[item.label] += 1
        counts[item.label] += 1
        rows.append({"path": rel, "label": item.label, "mask_path": mask_rel, "sha1": sha1s[i], "source": item.name})
    shutil.rmtree(pending)  # the duplicates' copies
    with (out / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "mask_path", "sha1", "source"])
        writer.writeheader()
        writer.writerows(csv_row(r, writer.fieldnames) for r in rows)  # "source" is a user's file name
    counts_d = {c: int(counts.get(c, 0)) for c in CLASSES}
    masks_d = {c: int(mask_counts.get(c, 0)) for c in CLASSES}
    warnings = [
        f"no images for {c}: the new classifier will never predict it"
        for c in CLASSES
        if counts_d[c] == 0 and sum(counts_d.values()) > 0
    ]
    n_test = sum(1 for i in kept_idx if folders.split_of(Path(accepted[i][0].name).parts[:-1]) == "test")
    if n_test:
        warnings.append(f"{n_test} images come from a test/Testing folder and will be used for training")
    if task in ("segmenter", "both") and sum(masks_d.values()) and counts_d["no_tumor"] == 0:
        warnings.append("no tumor-free images: the segmenter will not learn to leave healthy slices empty")
    return ImportSummary(
        dataset_dir=str(out),
        source=source,
        task=task,
        counts=counts_d,
        masks_per_class=masks_d,
        mask_mismatches=mismatches,
        duplicates=duplicates,
        exact_duplicates=exact,
        near_duplicates=near,
        rejected=rejected,
        skipped=skipped,
        problems=find_problems(counts_d, sum(masks_d.values()), task),
        warnings=warnings,
        created=utc_now("seconds"),
    )


def load_summary(dataset_dir: str | Path) -> ImportSummary:
    """The summary saved beside an imported dataset."""
    f = Path(dataset_dir) / "summary.json"
    if not f.is_file():
        raise DatasetError(f"{dataset_dir} is not an imported dataset (no summary.json)")
    return ImportSummary.from_dict(json.loads(f.read_text(encoding="utf-8")))


def discard(dataset_dir: str | Path, settings: Settings | None = None) -> bool:
    """Delete an imported dataset folder (only ever one inside the staging folder). True if deleted."""
    root = staging_root(settings).resolve()
    d = Path(dataset_dir).resolve()
    if d.parent != root or not (d / "summary.json").is_file():
        return False
    shutil.rmtree(d)
    return True


def recheck(summary: ImportSummary, task: str) -> ImportSummary:
    """The same dataset judged for another task (problems recomputed)."""
    data = summary.to_dict()
    data.update(task=task, problems=find_problems(summary.counts, summary.masks, task))
    return ImportSummary.from_dict(data)
