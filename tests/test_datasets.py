import cv2
import numpy as np
import pytest

from tests.conftest import draw_synthetic_slice
from triage.datasets import (
    build_cache,
    dedup_groups,
    load_manifest,
    near_duplicate_of,
    scan_class_folders,
    stratified_split,
    thumbnail_vector,
)
from triage.errors import DatasetError


def _write(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)


def test_class_folders_with_aliases_and_masks(tmp_path):
    for i, folder in enumerate(["notumor", "glioma_tumor", "meningioma", "pituitary_tumor"]):
        img, mask = draw_synthetic_slice(seed=i, tumor=folder != "notumor")
        _write(tmp_path / "Training" / folder / f"im{i}.png", img)
        if folder != "notumor":
            _write(tmp_path / "masks" / f"im{i}.png", mask.astype(np.uint8) * 255)
    (tmp_path / "Training" / "glioma_tumor" / "readme.txt").write_text("x")
    samples, notes = scan_class_folders(tmp_path)
    labels = sorted(s.label for s in samples)
    assert labels == ["glioma", "meningioma", "no_tumor", "pituitary"]
    assert all(s.split == "train" for s in samples)
    assert sum(s.mask_path is not None for s in samples) == 3
    assert any("readme.txt" in n for n in notes)


def test_manifest_loading_and_unknown_label(tmp_path):
    img, _ = draw_synthetic_slice()
    _write(tmp_path / "a.png", img)
    (tmp_path / "manifest.csv").write_text("path,label\na.png,glioma_tumor\n")
    s = load_manifest(tmp_path)
    assert s[0].label == "glioma" and s[0].path.is_file()
    (tmp_path / "manifest.csv").write_text("path,label\na.png,cat\n")
    with pytest.raises(DatasetError, match="unknown label"):
        load_manifest(tmp_path)


def test_near_duplicates_found_but_different_slices_kept():
    a, _ = draw_synthetic_slice(seed=1)
    noisy = np.clip(a.astype(int) + 3, 0, 255).astype(np.uint8)
    other, _ = draw_synthetic_slice(seed=2, axes=(60, 100), tumor_center=(180, 90))
    va, vn, vo = (thumbnail_vector(x) for x in (a, noisy, other))
    assert near_duplicate_of(np.stack([vn, vo]), np.stack([va])).tolist() == [True, False]
    keep = dedup_groups(np.stack([va, vn, vo]), ["s1", "s2", "s3"])
    assert keep.tolist() == [True, False, True]
    keep = dedup_groups(np.stack([va, vo]), ["same", "same"])
    assert keep.tolist() == [True, False]


def test_stratified_split_is_deterministic_and_balanced():
    labels = ["a"] * 50 + ["b"] * 30
    s1 = stratified_split(labels, 0.2, seed=3)
    assert s1.sum() == 16 and s1[:50].sum() == 10
    assert (s1 == stratified_split(labels, 0.2, seed=3)).all()


def test_build_cache_crops_and_rejects(tmp_path):
    img, mask = draw_synthetic_slice(shape=(300, 260))
    _write(tmp_path / "glioma" / "x.png", img)
    _write(tmp_path / "masks" / "x.png", mask.astype(np.uint8) * 255)
    (tmp_path / "glioma" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    samples, _ = scan_class_folders(tmp_path)
    c = build_cache(samples, 64, cache_dir=tmp_path / "cache")
    assert c.images.shape == (1, 64, 64) and c.masks.shape == (1, 64, 64)
    assert c.masks[0].any()
    assert len(c.rejected) == 1 and "broken" in c.rejected[0][0]
    again = build_cache(samples, 64, cache_dir=tmp_path / "cache")
    assert (again.images == c.images).all()
    assert not list((tmp_path / "cache").glob("*.tmp*"))  # written under a temporary name, then renamed


def test_build_cache_removes_its_temporary_file_when_the_write_fails(tmp_path, monkeypatch):
    img, _ = draw_synthetic_slice(shape=(200, 200))
    _write(tmp_path / "glioma" / "x.png", img)
    samples, _ = scan_class_folders(tmp_path)

    def disk_full(path, **arrays):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match="No space"):
        build_cache(samples, 64, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())  # neither a temporary file nor a half-written cache


def test_dedup_groups_in_chunks_matches_the_whole_matrix() -> None:
    import numpy as np

    from triage.datasets import dedup_groups

    rng = np.random.default_rng(0)
    base = rng.normal(size=(60, 32)).astype(np.float32)
    vectors = np.concatenate([base, base[:20] + 0.001, base[10:15] + 0.002])  # planted near-duplicates
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sha = [f"s{i}" for i in range(len(vectors))]
    sha[3] = sha[4] = "same"

    def whole(v, s, thr=0.99):  # the earlier N x N version, as reference
        keep = np.ones(len(v), bool)
        seen = set()
        for i, x in enumerate(s):
            if x in seen:
                keep[i] = False
            seen.add(x)
        sims = v @ v.T
        for i in range(len(v)):
            if keep[i]:
                keep[np.nonzero(sims[i, i + 1 :] >= thr)[0] + i + 1] = False
        return keep

    expected = whole(vectors, sha)
    assert expected.sum() == 60  # 85 - 25 near copies; "same" drops slice 4, whose copy 64 then stays
    for chunk in (1, 7, 256):
        assert np.array_equal(dedup_groups(vectors, sha, chunk=chunk), expected)


def test_read_mask_refuses_hostile_masks_with_a_dataset_error(tmp_path):
    """Issue 22 item 7: masks get the scans' allow-list and header size checks (DatasetError only)."""
    from tests.hostile_corpus import mask_specs
    from triage.datasets import read_mask

    specs = mask_specs()
    for spec in specs:
        path = tmp_path / spec.name
        path.write_bytes(spec.make())
        if spec.expectation == "ok":
            assert read_mask(path, (64, 64)).sum() == 16 * 16, spec.name
            continue
        with pytest.raises(DatasetError) as err:
            read_mask(path, (64, 64))
        assert str(err.value).startswith(f"mask {spec.name}: "), (spec.name, str(err.value))
    assert sum(s.expectation == "rejected" for s in specs) >= 19


def test_build_cache_leaves_blank_images_out(tmp_path):
    img, _ = draw_synthetic_slice(shape=(200, 200))
    _write(tmp_path / "glioma" / "x.png", img)
    _write(tmp_path / "glioma" / "blank.png", np.zeros((200, 200), np.uint8))
    _write(tmp_path / "no_tumor" / "white.png", np.full((200, 200), 255, np.uint8))
    samples, _ = scan_class_folders(tmp_path)
    c = build_cache(samples, 64)
    assert [s.path.name for s in c.samples] == ["x.png"]
    assert sorted((p.split("/")[-1], why) for p, why in c.rejected) == [
        ("blank.png", "blank image"),
        ("white.png", "blank image"),
    ]
