"""Importing training data: safe archives, validation, masks, duplicates, problems and sources."""

from __future__ import annotations

import csv
import io
import os
import stat
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import draw_synthetic_slice
from tests.hostile_corpus import mask_specs
from triage.config import get_settings
from triage.datasets import load_manifest
from triage.errors import DatasetError
from triage.lifecycle import importer
from triage.lifecycle.training_run import MIN_IMAGES_PER_CLASS
from triage.records import Case

FOLDERS = {"no_tumor": "notumor", "glioma": "glioma_tumor", "meningioma": "meningioma", "pituitary": "pituitary_tumor"}


def synthetic_image(seed: int, tumor: bool = True, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A small fake slice whose head geometry varies with ``seed`` (so no two are near duplicates)."""
    rng = np.random.default_rng(seed)
    c = size / 2
    return draw_synthetic_slice(
        (size, size),
        center=(c + rng.uniform(-6, 6), c + rng.uniform(-6, 6)),
        axes=(rng.uniform(0.25, 0.44) * size, rng.uniform(0.2, 0.37) * size),
        skull=3,
        gap=1,
        tumor=tumor,
        tumor_radius=rng.uniform(3, 7),
        brain_level=int(rng.integers(70, 150)),
        seed=seed,
    )


def write_class_folders(
    root: Path, per_class: int = 6, classes: dict[str, str] | None = None, masks: bool = True, seed: int = 0
) -> Path:
    """``root/<folder>/<folder>_<i>.png`` per class (alias folder names) and ``root/masks/`` for tumors."""
    classes = FOLDERS if classes is None else classes
    for ci, (label, folder) in enumerate(classes.items()):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img, mask = synthetic_image(seed * 1000 + ci * 100 + i, tumor=label != "no_tumor")
            cv2.imwrite(str(root / folder / f"{folder}_{i}.png"), img)
            if masks and label != "no_tumor":
                (root / "masks").mkdir(exist_ok=True)
                cv2.imwrite(str(root / "masks" / f"{folder}_{i}.png"), mask.astype(np.uint8) * 255)
    return root


def zip_folder(root: Path, extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(root).as_posix())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def settings(tmp_path):
    return get_settings(data_dir=tmp_path / "data", weights_dir=tmp_path / "weights", import_roots=str(tmp_path))


def _staging_empty(settings) -> bool:
    root = importer.staging_root(settings)
    return not root.exists() or not any(root.iterdir())


def test_class_folders_with_aliases_masks_and_layout(tmp_path, settings):
    src = write_class_folders(tmp_path / "src")
    (src / "README.txt").write_text("notes")
    s = importer.import_folder(src, "both", settings)
    assert s.counts == {"no_tumor": 6, "glioma": 6, "meningioma": 6, "pituitary": 6}
    assert s.masks_per_class == {"no_tumor": 0, "glioma": 6, "meningioma": 6, "pituitary": 6}
    assert s.ok and s.problems == []
    assert any("README.txt" in x and "not an image" in x for x in s.skipped)
    out = Path(s.dataset_dir)
    assert out.parent == importer.staging_root(settings)
    samples = load_manifest(out)
    assert len(samples) == 24 and sum(x.mask_path is not None for x in samples) == 18
    assert {p.name for p in out.iterdir()} == {
        "glioma",
        "meningioma",
        "no_tumor",
        "pituitary",
        "masks",
        "manifest.csv",
        "summary.json",
    }
    assert importer.load_summary(out).counts == s.counts
    # no leftovers of the temporary build folder
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_zip_source_skips_and_lists_non_image_members(tmp_path, settings):
    data = zip_folder(
        write_class_folders(tmp_path / "src", masks=False),
        extra={
            "notes.txt": b"hello",
            "glioma_tumor/info.json": b"{}",
            "__MACOSX/._x.png": b"x",
            "glioma_tumor/broken.png": b"\x89PNG\r\n\x1a\nnot really",
        },
    )
    s = importer.import_zip(data, "classifier", settings)
    assert s.total == 24 and s.ok
    skipped = "\n".join(s.skipped)
    assert "notes.txt" in skipped and "info.json" in skipped and "__MACOSX" in skipped
    assert [r[0] for r in s.rejected] == ["glioma_tumor/broken.png"]
    assert s.rejected[0][1]  # the reason from triage.io


@pytest.mark.parametrize(
    "name",
    [
        "../evil.png",
        "glioma/../../evil.png",
        "/tmp/evil.png",
        "C:/evil.png",
        "C:\\evil.png",
        "\\\\server\\share\\evil.png",
    ],
)
def test_unsafe_member_paths_are_rejected(tmp_path, settings, name):
    buf = io.BytesIO()
    img, _ = synthetic_image(1)
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("glioma/ok.png", cv2.imencode(".png", img)[1].tobytes())
        zf.writestr(name, cv2.imencode(".png", img)[1].tobytes())
    with pytest.raises(DatasetError, match="unsafe archive"):
        importer.import_zip(buf.getvalue(), "classifier", settings)
    assert _staging_empty(settings)
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "data" / "evil.png").exists()


def test_symlink_member_is_rejected(settings):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("glioma/link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DatasetError, match="symbolic link"):
        importer.import_zip(buf.getvalue(), "classifier", settings)
    assert _staging_empty(settings)


def test_zip_bomb_is_rejected_by_the_compression_ratio(tmp_path, settings):
    path = tmp_path / "bomb.zip"
    chunk = bytes(1024 * 1024)
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf,
        zf.open("glioma/bomb.png", "w", force_zip64=True) as fh,
    ):
        for _ in range(200):
            fh.write(chunk)
    assert path.stat().st_size < 2 * 1024 * 1024
    with pytest.raises(DatasetError, match="compression ratio"):
        importer.import_zip(path, "classifier", settings)
    assert _staging_empty(settings)


def test_too_many_members_and_not_a_zip(settings, monkeypatch):
    monkeypatch.setattr(importer, "MAX_MEMBERS", 3)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(4):
            zf.writestr(f"glioma/{i}.png", b"x")
    with pytest.raises(DatasetError, match="members"):
        importer.import_zip(buf.getvalue(), "classifier", settings)
    with pytest.raises(DatasetError, match="zip"):
        importer.import_zip(b"this is not a zip", "classifier", settings)
    assert _staging_empty(settings)


def test_single_class_and_too_few_images_are_problems(tmp_path, settings):
    one = write_class_folders(tmp_path / "one", classes={"glioma": "glioma"}, masks=False)
    s = importer.import_folder(one, "classifier", settings)
    assert not s.ok and any("only one class" in p for p in s.problems)
    few = write_class_folders(
        tmp_path / "few",
        per_class=MIN_IMAGES_PER_CLASS - 2,
        classes={"glioma": "glioma", "no_tumor": "no_tumor"},
        masks=False,
        seed=3,
    )
    s = importer.import_folder(few, "classifier", settings)
    assert any("too few images" in p and "glioma" in p for p in s.problems)
    assert any("pituitary" in w for w in s.warnings)  # missing classes are a warning, not a problem


def test_segmenter_without_masks_is_a_problem(tmp_path, settings):
    src = write_class_folders(tmp_path / "src", masks=False)
    assert importer.import_folder(src, "classifier", settings).ok
    s = importer.import_folder(src, "segmenter", settings)
    assert any("no tumor masks" in p for p in s.problems)
    assert importer.recheck(s, "classifier").ok


def test_mismatched_and_orphan_masks_are_listed_and_dropped(tmp_path, settings):
    src = write_class_folders(tmp_path / "src")
    cv2.imwrite(str(src / "masks" / "glioma_tumor_0.png"), np.zeros((32, 40), np.uint8))
    cv2.imwrite(str(src / "masks" / "nobody.png"), np.zeros((64, 64), np.uint8))
    s = importer.import_folder(src, "both", settings)
    text = "\n".join(s.mask_mismatches)
    assert "glioma_tumor_0" in text and "dropped" in text
    assert "nobody.png" in text and "without a matching image" in text
    assert s.masks_per_class["glioma"] == 5 and s.counts["glioma"] == 6
    assert not (Path(s.dataset_dir) / "masks" / "glioma_tumor_0.png").exists()


def test_exact_and_near_duplicates_are_removed(tmp_path, settings):
    src = write_class_folders(tmp_path / "src", masks=False)
    img = cv2.imread(str(src / "glioma_tumor" / "glioma_tumor_0.png"), cv2.IMREAD_GRAYSCALE)
    (src / "glioma_tumor" / "zz_copy.png").write_bytes((src / "glioma_tumor" / "glioma_tumor_0.png").read_bytes())
    noisy = np.clip(img.astype(np.int16) + np.random.default_rng(0).integers(-2, 3, img.shape), 0, 255)
    cv2.imwrite(str(src / "meningioma" / "zz_near.png"), noisy.astype(np.uint8))
    s = importer.import_folder(src, "classifier", settings)
    assert s.exact_duplicates == 1 and s.near_duplicates == 1
    assert s.counts == {"no_tumor": 6, "glioma": 6, "meningioma": 6, "pituitary": 6}
    text = "\n".join(s.duplicates)
    assert "zz_copy.png" in text and "exact" in text
    assert "zz_near.png" in text and "labelled meningioma vs glioma" in text


def test_manifest_csv_source_relative_paths_and_test_split(tmp_path, settings):
    src = write_class_folders(tmp_path / "ds")
    rows = []
    for label, folder in FOLDERS.items():
        for i in range(6):
            mask = f"masks/{folder}_{i}.png" if label != "no_tumor" else ""
            rows.append(
                {
                    "path": f"{folder}/{folder}_{i}.png",
                    "label": folder,
                    "split": "test" if i == 5 else "train",
                    "mask_path": mask,
                }
            )
    rows.append({"path": "missing.png", "label": "glioma", "split": "train", "mask_path": ""})
    rows.append({"path": f"{FOLDERS['glioma']}/glioma_tumor_0.png", "label": "yes", "split": "", "mask_path": ""})
    with (src / "list.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "split", "mask_path"])
        w.writeheader()
        w.writerows(rows)
    s = importer.import_manifest(src / "list.csv", "both", settings)
    assert s.counts == dict.fromkeys(FOLDERS, 5)
    assert s.masks == 15 and s.ok
    assert ["missing.png", "file not found"] in s.rejected
    assert any("4 rows of the test split" in x for x in s.skipped)
    assert any("binary" in x for x in s.skipped)
    s_all = importer.import_manifest(src / "list.csv", "both", settings, include_test=True)
    assert s_all.total == 24


def test_zip_with_manifest_cannot_point_outside_the_archive(tmp_path, settings):
    src = write_class_folders(tmp_path / "ds", masks=False)
    lines = ["path,label"] + [f"{f}/{f}_{i}.png,{f}" for f in FOLDERS.values() for i in range(6)]
    lines.append(f"{tmp_path / 'ds' / 'notumor' / 'notumor_0.png'},glioma")  # absolute path outside
    data = zip_folder(src, extra={"manifest.csv": "\n".join(lines).encode()})
    s = importer.import_zip(data, "classifier", settings)
    assert s.total == 24
    assert any("outside" in reason for _, reason in s.rejected)


def _reviewed(scan_id: str, name: str, reviewed_label: str | None, stored_path: str) -> Case:
    """A worklist case the model called glioma, with the reviewer's label."""
    status = "unreviewed" if reviewed_label is None else "confirmed"
    return Case(
        scan_id=scan_id,
        name=name,
        label="glioma",
        probs=(0.1, 0.7, 0.1, 0.1),
        risk=0.5,
        stored_path=stored_path,
        reviewed_label=reviewed_label,
        review_status=status,
    )


def test_reviewed_worklist_cases(tmp_path, settings):
    src = write_class_folders(tmp_path / "src", masks=False)
    cases = []
    for label, folder in FOLDERS.items():
        for i in range(6):
            cases.append(
                _reviewed(f"{label}{i:02d}abcdef", f"{folder}_{i}.png", label, str(src / folder / f"{folder}_{i}.png"))
            )
    cases.append(_reviewed("gone", "gone.png", "glioma", "/nope.png"))
    cases.append(_reviewed("nolabel", "x.png", None, "/nope.png"))
    s = importer.import_reviewed(cases, "classifier", settings)
    assert s.counts == dict.fromkeys(FOLDERS, 6) and s.ok
    assert any(r[1] == "the stored scan file is missing" for r in s.rejected)
    assert any("no reviewed class label" in x for x in s.skipped)


def test_failure_midway_leaves_nothing_behind(tmp_path, settings, monkeypatch):
    src = write_class_folders(tmp_path / "src", masks=False)
    calls = {"n": 0}
    real = importer.read_path

    def flaky(path, settings=None):
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("disk on fire")
        return real(path, settings)

    monkeypatch.setattr(importer, "read_path", flaky)
    with pytest.raises(RuntimeError):
        importer.import_zip(zip_folder(src), "classifier", settings)
    assert _staging_empty(settings)


def test_missing_folder_is_a_clear_error(tmp_path, settings):
    with pytest.raises(DatasetError, match="folder not found"):
        importer.import_folder(tmp_path / "nope", "classifier", settings)
    with pytest.raises(DatasetError, match="manifest not found"):
        importer.import_manifest(tmp_path / "nope.csv", "classifier", settings)


def test_discard_only_deletes_imported_datasets(tmp_path, settings, monkeypatch):
    s = importer.import_folder(write_class_folders(tmp_path / "src", masks=False), "classifier", settings)
    assert not importer.discard(tmp_path / "src", settings)  # not in the staging folder: refused
    assert (tmp_path / "src").is_dir()
    assert importer.discard(s.dataset_dir, settings)
    assert _staging_empty(settings)
    monkeypatch.setattr(importer, "MAX_FOLDER_FILES", 10)
    with pytest.raises(DatasetError, match="more than 10 files"):
        importer.import_folder(tmp_path / "src", "classifier", settings)


# ----- issue 22: hostile masks (item 7), name clashes and blank images (item 17) ---------------

HOSTILE_MASKS = [s for s in mask_specs() if s.expectation == "rejected"]


def _fake_gs(tmp_path: Path, monkeypatch) -> Path:
    """A stand-in ``gs`` on PATH that records being run (Pillow's EPS plugin calls Ghostscript)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "gs-was-run"
    gs = bin_dir / "gs"
    gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    gs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ.get('PATH', '')}")
    return marker


def test_hostile_masks_are_dropped_with_a_reason_and_the_import_goes_on(tmp_path, settings, monkeypatch):
    """EPS / PCX / TGA / SPIDER / bombs named .png: each mask is refused, never decoded, the images stay."""
    marker = _fake_gs(tmp_path, monkeypatch)
    src = write_class_folders(tmp_path / "src", per_class=MIN_IMAGES_PER_CLASS + len(HOSTILE_MASKS))
    stems = sorted(p.stem for p in (src / "glioma_tumor").iterdir())
    for stem, spec in zip(stems, HOSTILE_MASKS):
        (src / "masks" / f"{stem}.png").write_bytes(spec.make())
    s = importer.import_folder(src, "both", settings)
    assert not marker.exists(), "Ghostscript was run on an uploaded mask"
    assert s.counts["glioma"] == len(stems)  # every image kept
    assert s.masks_per_class["glioma"] == len(stems) - len(HOSTILE_MASKS)
    text = "\n".join(s.mask_mismatches)
    for stem in stems[: len(HOSTILE_MASKS)]:
        assert f"mask {stem}.png:" in text and "mask dropped" in text, stem
    assert "a mask must be a PNG, JPEG, TIFF or BMP image" in text
    assert "over the limit" in text
    assert str(tmp_path) not in text  # no server path in what the page shows


def test_a_mask_bomb_is_refused_in_a_zip_import(tmp_path, settings):
    src = write_class_folders(tmp_path / "src")
    (src / "masks" / "glioma_tumor_0.png").unlink()
    bomb = next(s for s in HOSTILE_MASKS if s.name == "bomb_30000x30000.png").make()
    s = importer.import_zip(zip_folder(src, {"masks/glioma_tumor_0.png": bomb}), "both", settings)
    assert any("glioma_tumor_0.png" in m and "over the limit" in m for m in s.mask_mismatches)
    assert s.counts["glioma"] == 6 and s.masks_per_class["glioma"] == 5


def test_a_member_named_like_a_folder_is_skipped_with_a_reason(tmp_path, settings):
    """``glioma/a.png`` and ``glioma/a.png/b.png`` once raised FileExistsError with a server path."""
    src = write_class_folders(tmp_path / "src", masks=False)
    png = cv2.imencode(".png", synthetic_image(999)[0])[1].tobytes()
    for members in (
        {"glioma/a.png": png, "glioma/a.png/b.png": png},
        {"glioma/a.png/b.png": png, "glioma/a.png": png},
    ):
        s = importer.import_zip(zip_folder(src, members), "classifier", settings)
        notes = [x for x in s.skipped if "another file or folder of this name" in x]
        assert len(notes) == 1, s.skipped
        assert str(settings.data_dir) not in notes[0] and ".unzip-" not in notes[0]
        assert s.counts["glioma"] == 7  # six class-folder images + the member that was written


def test_blank_images_do_not_enter_the_training_set(tmp_path, settings):
    src = write_class_folders(tmp_path / "src", masks=False)
    for i, value in enumerate((0, 255, 37)):
        cv2.imwrite(str(src / "glioma_tumor" / f"blank_{i}.png"), np.full((64, 64), value, np.uint8))
    cv2.imwrite(str(src / "notumor" / "blank_jpeg.jpg"), np.full((64, 64), 90, np.uint8))
    s = importer.import_folder(src, "classifier", settings)
    blank = [r for r in s.rejected if "blank image" in r[1]]
    assert sorted(r[0].split("/")[-1] for r in blank) == ["blank_0.png", "blank_1.png", "blank_2.png", "blank_jpeg.jpg"]
    assert s.counts["glioma"] == 6 and s.counts["no_tumor"] == 6
    assert not any("blank" in x.path.name for x in load_manifest(s.dataset_dir))
