"""triage.folders: one rule set for junk, image files, masks and class folders, used by every caller."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.lifecycle.test_importer import synthetic_image
from triage import folders
from triage.errors import DatasetError

JUNK = (
    ".DS_Store",
    "glioma/.DS_Store",
    "Thumbs.db",
    "glioma/Thumbs.db",
    "glioma/desktop.ini",
    "__MACOSX/glioma/._a.png",
    "__MACOSX/glioma/b.png",
    "glioma/._a.png",
    ".hidden/glioma/c.png",
    "glioma/.c.png",
)


@pytest.mark.parametrize("name", JUNK)
def test_junk_names(name: str) -> None:
    assert folders.is_junk(name.split("/"))


@pytest.mark.parametrize("name", ["glioma/a.png", "a.png", "../../x.png", "./a.png", "x.y/a.png", "thumbs/a.png"])
def test_not_junk(name: str) -> None:
    assert not folders.is_junk(name.split("/"))


def test_image_names_mask_keys_classes_and_splits() -> None:
    assert folders.is_image_name("a.PNG") and folders.is_image_name("IM0001") and folders.is_image_name("x.dcm")
    assert not folders.is_image_name("notes.txt") and not folders.is_image_name("manifest.csv")
    assert {folders.stem_key(n) for n in ("X.png", "x_mask.png", "x-MASK.tif", "x mask.png", "a/x.jpg")} == {"x"}
    assert folders.is_mask(["masks", "x.png"]) and folders.is_mask(["Mask", "glioma", "x.png"])
    assert folders.is_mask(["glioma", "x_mask.png"]) and folders.is_mask(["glioma", "x-mask.png"])
    assert not folders.is_mask(["glioma", "x.png"]) and not folders.is_mask(["glioma", "mask.png"])
    assert folders.class_of(["Training", "glioma_tumor"]) == "glioma"
    assert folders.class_of(["notumor", "sub"]) == "no_tumor" and folders.class_of(["a", "b"]) is None
    assert folders.split_of(["Testing", "glioma"]) == "test" and folders.split_of(["training"]) == "train"
    assert folders.split_of(["glioma"]) == ""


def test_pair_masks_prefers_the_images_class_and_never_another() -> None:
    images = [("glioma/x.png", "glioma"), ("pituitary/y.png", "pituitary"), ("z.png", None), ("w.png", None)]
    masks = [
        ("masks/pituitary/x.png", "pituitary"),  # another class: never paired with glioma/x
        ("masks/x_mask.png", None),
        ("masks/glioma/x.png", "glioma"),
        ("masks/glioma/y.png", "glioma"),
        ("Z-mask.png", None),
        ("z.png", None),  # a second mask for z: the first one wins
    ]
    assert folders.pair_masks(images, masks) == [2, None, 4, None]


def _write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)


def _tree(root: Path) -> Path:
    """Two classes, masks beside (``_mask``, ``-mask``) and in masks/, every kind of junk, a note."""
    for i, folder in enumerate(["glioma", "notumor"]):
        for j in range(2):
            img, mask = synthetic_image(10 * i + j, tumor=folder == "glioma")
            _write(root / folder / f"{folder}{j}.png", img)
            if folder == "glioma":
                name = f"{folder}{j}_mask.png" if j == 0 else f"{folder}{j}-mask.png"
                _write(root / folder / name, mask.astype(np.uint8) * 255)
    _write(root / "masks" / "orphan.png", np.zeros((64, 64), np.uint8))
    for name in JUNK:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"junk")
    (root / "glioma" / "notes.txt").write_text("hello")
    (root / "loose.png").write_bytes(b"x")
    return root


def test_scan_class_folders(tmp_path: Path) -> None:
    found = folders.scan_class_folders(_tree(tmp_path))
    assert [(f.rel, f.label, f.mask.name if f.mask else None) for f in found.images] == [
        ("glioma/glioma0.png", "glioma", "glioma0_mask.png"),
        ("glioma/glioma1.png", "glioma", "glioma1-mask.png"),
        ("notumor/notumor0.png", "no_tumor", None),
        ("notumor/notumor1.png", "no_tumor", None),
    ]
    skipped = "\n".join(found.skipped)
    assert all(f"{name}: hidden or system file" in skipped for name in JUNK)
    assert "glioma/notes.txt: not an image file" in skipped and "loose.png: not inside a class folder" in skipped
    assert found.unpaired_masks == ["masks/orphan.png: mask without a matching image, dropped"]
    with pytest.raises(DatasetError, match="more than 5 files"):
        folders.scan_class_folders(tmp_path, max_files=5)


def _zip(root: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(root).as_posix())
    return buf.getvalue()


def test_every_caller_skips_the_same_junk_and_pairs_the_same_masks(tmp_path: Path) -> None:
    """The training data reader, the importer (folder and zip), the CLI's inputs and the uploads agree."""
    from triage.batch import iter_inputs
    from triage.config import get_settings
    from triage.datasets import scan_class_folders
    from triage.lifecycle import importer
    from triage.ui.uploads import expand_uploads, match_masks

    root = _tree(tmp_path / "src")
    junk = {(root / name).resolve() for name in JUNK}
    images = ["glioma/glioma0.png", "glioma/glioma1.png", "notumor/notumor0.png", "notumor/notumor1.png"]

    samples, notes = scan_class_folders(root)
    assert sorted(s.path.relative_to(root).as_posix() for s in samples) == images
    assert sum(s.mask_path is not None for s in samples) == 2
    assert sum("hidden or system file" in n for n in notes) == len(JUNK)

    settings = get_settings(data_dir=tmp_path / "data", import_roots=str(tmp_path))
    for summary in (importer.import_folder(root, "both", settings), importer.import_zip(_zip(root), "both", settings)):
        assert summary.counts["glioma"] == 2 and summary.counts["no_tumor"] == 2 and summary.masks == 2
        assert sum("hidden or system file" in n for n in summary.skipped) == len(JUNK)
        assert not summary.rejected  # no junk file reached the decoder

    everything = {p.resolve() for p in root.rglob("*") if p.is_file()}
    assert {p.resolve() for p in iter_inputs([str(root)])} == everything - junk

    files = [(p.relative_to(root).as_posix(), p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()]
    items, _ = expand_uploads(files)
    assert not {i.name for i in items} & set(JUNK)
    zipped, _ = expand_uploads([("src.zip", _zip(root))])
    assert not {i.name.removeprefix("src.zip/") for i in zipped} & set(JUNK) and len(zipped) == len(items)
    imgs = [i for i in items if i.name in images]
    masks = [i for i in items if folders.is_mask(i.name.split("/"))]
    assert sorted(match_masks(imgs, masks)) == images[:2]
