"""What a folder, an archive or a folder upload holds: one rule set for junk, image files, masks and class folders.

Every place that finds files by walking uses these rules: training data (:func:`triage.datasets.scan_class_folders`,
the importer's server folders and zip archives), the CLI's ``analyze`` inputs (:func:`files_under`) and the New
scans uploads (junk, labels from folder names, ground-truth masks matched to their images). The rules:

- **junk** (:func:`is_junk`): a path with a hidden component (a name starting with ``.``: ``.DS_Store``,
  ``._x.png``, ``.git/``), a ``__MACOSX`` folder, or a Windows system file (``Thumbs.db``, ``desktop.ini``).
  ``.`` and ``..`` are not hidden names (unsafe names are :mod:`triage.archive`'s and :mod:`triage.io`'s concern).
- **image file** (:func:`is_image_name`): a suffix in :data:`triage.io.IMAGE_SUFFIXES` (PNG, JPEG, TIFF, BMP,
  DICOM) or none (DICOM exports often have no extension); the decoder has the last word.
- **mask** (:func:`is_mask`): an image file inside a folder named ``masks`` or ``mask``, or whose stem ends with
  ``_mask``, ``-mask`` or `` mask`` (any case). An image and a mask pair when their :func:`stem_key` is the same
  (the case-folded stem without that ending); of several masks with the key, the one under the image's class
  folder wins, then one under no class folder; a mask under another class's folder never pairs.
- **manifest** (:func:`manifest_rows`): a ``manifest.csv`` with at least ``path`` and ``label`` columns
  (header names in any case, a UTF-8 BOM allowed), paths relative to its folder (:func:`manifest_path`).
- **class folder** (:func:`class_of`): the nearest parent folder whose name is a class or an alias
  (:func:`triage.records.normalize_label`: ``notumor``, ``glioma_tumor``...); a ``test``/``testing`` or
  ``train``/``training`` folder above it names the split (:func:`split_of`).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from triage.errors import DatasetError
from triage.io import IMAGE_SUFFIXES
from triage.records import normalize_label

JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})
SYSTEM_FOLDERS = frozenset({"__macosx"})
MASK_FOLDERS = frozenset({"masks", "mask"})
MASK_ENDINGS = ("_mask", "-mask", " mask")
MANIFEST = "manifest.csv"
TEST_FOLDERS = frozenset({"test", "testing"})
TRAIN_FOLDERS = frozenset({"train", "training"})


def is_junk(parts: Sequence[str]) -> bool:
    """True for system clutter: any hidden component, a ``__MACOSX`` folder, ``Thumbs.db`` / ``desktop.ini``.

    ``parts``: the path components (folders and file name) relative to what is being walked.
    """
    if not parts:
        return False
    hidden = any(p.startswith(".") and p not in (".", "..") for p in parts)
    return hidden or any(p.lower() in SYSTEM_FOLDERS for p in parts[:-1]) or parts[-1].lower() in JUNK_NAMES


def is_image_name(name: str) -> bool:
    """True when a file name's suffix is an image format the decoder reads (or there is none)."""
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def _mask_ending(stem: str) -> str:
    folded = stem.casefold()
    return next((e for e in MASK_ENDINGS if folded.endswith(e)), "")


def stem_key(name: str) -> str:
    """The pairing key of an image or mask file name: its case-folded stem without a mask ending."""
    stem = PurePosixPath(str(name).replace("\\", "/")).stem
    ending = _mask_ending(stem)
    return (stem[: -len(ending)] if ending else stem).casefold()


def is_mask(parts: Sequence[str]) -> bool:
    """True when the file at ``parts`` (folders + name) is a mask: under a ``masks``/``mask`` folder, or
    named ``<stem>_mask.*`` (``-mask``, `` mask``)."""
    if not parts:
        return False
    in_folder = any(p.lower() in MASK_FOLDERS for p in parts[:-1])
    return in_folder or bool(_mask_ending(PurePosixPath(parts[-1]).stem))


def class_of(folders: Sequence[str]) -> str | None:
    """The class named by the nearest of ``folders`` (outermost first) that names one, or None."""
    return next((label for f in reversed(folders) if (label := normalize_label(f)) is not None), None)


def split_of(folders: Sequence[str]) -> str:
    """``"test"`` under a test/testing folder, ``"train"`` under a train/training one, else ``""``."""
    lowered = {f.lower() for f in folders}
    if lowered & TEST_FOLDERS:
        return "test"
    return "train" if lowered & TRAIN_FOLDERS else ""


def pair_masks(images: Sequence[tuple[str, str | None]], masks: Sequence[tuple[str, str | None]]) -> list[int | None]:
    """For each image ``(name, class or None)``, the index in ``masks`` (same form) of its mask, or None.

    Paired by :func:`stem_key`: a mask of the image's class first, then one of no class, the first of
    those in ``masks``' order; a mask of another class never pairs.
    """
    by_key: dict[str, list[int]] = {}
    for j, (name, _) in enumerate(masks):
        by_key.setdefault(stem_key(name), []).append(j)
    out: list[int | None] = []
    for name, label in images:
        choices = by_key.get(stem_key(name), [])
        same = [j for j in choices if masks[j][1] == label and label is not None]
        none = [j for j in choices if masks[j][1] is None]
        out.append((same or none or [None])[0])
    return out


def all_files(root: Path, max_files: int | None = None) -> list[Path]:
    """Every file under ``root`` (recursive, sorted, junk included). Raises :class:`DatasetError` past ``max_files``."""
    files = []
    for p in Path(root).rglob("*"):
        if p.is_file():
            files.append(p)
            if max_files is not None and len(files) > max_files:
                raise DatasetError(f"{root} holds more than {max_files} files; choose the dataset folder itself")
    return sorted(files)


def files_under(root: Path) -> Iterator[Path]:
    """The files under ``root`` that are not junk (recursive, sorted): what ``analyze <folder>`` reads."""
    root = Path(root)
    for p in all_files(root):
        if not is_junk(p.relative_to(root).parts):
            yield p


@dataclass(frozen=True)
class FoundImage:
    """An image found in a class folder: its file, path relative to the root (POSIX), class, split and mask."""

    path: Path
    rel: str
    label: str
    split: str = ""
    mask: Path | None = None


@dataclass
class FolderScan:
    """What :func:`scan_class_folders` found: images, and notes on files skipped and masks left unpaired."""

    images: list[FoundImage] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unpaired_masks: list[str] = field(default_factory=list)


def scan_class_folders(root: str | Path, max_files: int | None = None) -> FolderScan:
    """Walk a class-folder tree (``glioma/ meningioma/ no_tumor/ pituitary/`` with aliases, masks beside the
    images or in ``masks/``) by the rules of this module. Every file is an image, a mask, the manifest, or
    named in :attr:`FolderScan.skipped` with the reason."""
    root = Path(root)
    images: list[tuple[Path, str, list[str], str]] = []  # file, relative name, its folders, its class
    masks: list[tuple[Path, str]] = []
    out = FolderScan()
    for p in all_files(root, max_files):
        rel = p.relative_to(root)
        parts, name = list(rel.parts), rel.as_posix()
        if is_junk(parts):
            out.skipped.append(f"{name}: hidden or system file, skipped")
        elif not is_image_name(p.name):
            if p.name.lower() != MANIFEST:
                out.skipped.append(f"{name}: not an image file, skipped")
        elif is_mask(parts):
            masks.append((p, name))
        elif (label := class_of(parts[:-1])) is None:
            out.skipped.append(f"{name}: not inside a class folder, skipped")
        else:
            images.append((p, name, parts[:-1], label))
    mask_classes = [(name, class_of(Path(name).parts[:-1])) for _, name in masks]
    picks = pair_masks([(name, label) for _, name, _, label in images], mask_classes)
    for (p, name, folders, label), j in zip(images, picks):
        mask = masks[j][0] if j is not None else None
        out.images.append(FoundImage(p, name, label, split_of(folders), mask))
    used = {j for j in picks if j is not None}
    out.unpaired_masks = [
        f"{name}: mask without a matching image, dropped" for j, (_, name) in enumerate(masks) if j not in used
    ]
    return out


def manifest_rows(csv_path: str | Path) -> list[dict[str, str]]:
    """The rows of a manifest CSV: header names stripped and lower-cased, values stripped.

    Raises :class:`DatasetError` (naming the file, not its folder) when it is not a readable UTF-8 CSV or
    lacks the ``path`` and ``label`` columns.
    """
    csv_path = Path(csv_path)
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = [c.strip().lower() for c in (reader.fieldnames or [])]
            if "path" not in cols or "label" not in cols:
                raise DatasetError(f"{csv_path.name} needs at least the columns 'path' and 'label'")
            return [
                {(k or "").strip().lower(): (v or "").strip() for k, v in row.items() if isinstance(v, str)}
                for row in reader
            ]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{csv_path.name} is not a readable CSV file ({exc})") from exc


def manifest_path(base: Path, rel: str) -> Path:
    """A manifest's relative path (backslashes as slashes) resolved against its folder ``base``."""
    return (Path(base) / rel.replace("\\", "/")).resolve()
