"""Issue 22, second round: resource bombs (items 1-6), corrupt headers (8), implausible values (9)
and server folders (11). Each test builds its hostile input (``tests/hostile_corpus.py``), checks
that it is refused early with a clear reason, and keeps its own footprint small: memory is checked
with ``tracemalloc`` (NumPy and zlib buffers are traced) on scaled-down inputs or lowered limits.
Full-size figures: ``bench/hostile_memory.py``.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests import hostile_corpus as hc
from tests.model_fixtures import make_tiny_weights
from triage import datasets, transforms
from triage.config import get_settings
from triage.errors import DatasetError, InvalidScanError
from triage.io import declared_pixels, read_scans
from triage.lifecycle import importer
from triage.service import TriageService

SPECS = {s.name: s for s in hc.corpus_specs()}
MB = 1 << 20


def _peak(fn, *args, **kwargs) -> tuple[object, float]:
    """(result or raised InvalidScanError, peak traced MB) of one call."""
    tracemalloc.start()
    try:
        try:
            out: object = fn(*args, **kwargs)
        except (InvalidScanError, DatasetError) as exc:
            out = exc
        return out, tracemalloc.get_traced_memory()[1] / MB
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> TriageService:
    root = tmp_path_factory.mktemp("bombs")
    make_tiny_weights(root / "weights")
    return TriageService(get_settings(data_dir=root / "data", weights_dir=root / "weights"))


# ----- item 1: aspect-ratio bomb -------------------------------------------------------------


def test_a_strip_is_refused_from_the_header_with_almost_no_memory() -> None:
    out, peak = _peak(read_scans, SPECS["strip_32x60000.png"].make(), "strip.png")
    assert isinstance(out, InvalidScanError) and "aspect ratio of 1875:1" in str(out)
    assert peak < 5


def test_the_padded_square_is_bounded_for_big_crops(monkeypatch) -> None:
    """Crops longer than MAX_PAD_SIDE are shrunk before padding; the map back skips the square."""
    seen = []
    real_pad = transforms.pad_to_square
    monkeypatch.setattr(transforms, "pad_to_square", lambda img: seen.append(img.shape) or real_pad(img))
    monkeypatch.setattr(transforms, "MAX_PAD_SIDE", 256)
    crop = cv2.resize(hc.fake_brain(128), (300, 1200), interpolation=cv2.INTER_LINEAR)  # 4:1
    sq = transforms.square(crop)
    assert sq.shape == (256, 256) and max(seen[0]) == 256  # not 1200 x 1200
    monkeypatch.setattr(transforms, "MAX_PAD_SIDE", 4096)
    exact = transforms.square(crop)
    assert np.abs(sq.astype(int) - exact.astype(int)).mean() < 2.0  # the same picture
    prob = cv2.GaussianBlur(np.random.default_rng(0).random((224, 224)).astype(np.float32), (15, 15), 0)
    ref = transforms.from_model_output(prob, (1200, 300))
    monkeypatch.setattr(transforms, "MAX_PAD_SIDE", 256)
    direct = transforms.from_model_output(prob, (1200, 300))
    assert direct.shape == (1200, 300) and float(np.abs(direct - ref).max()) < 1e-4


# ----- item 2: deflated DICOM ----------------------------------------------------------------


def test_a_deflated_dicom_still_decodes() -> None:
    scans = read_scans(SPECS["mr_deflated.dcm"].make(), "mr.dcm")
    assert scans[0].shape == (64, 64) and scans[0].pixel_spacing is not None


def test_a_deflate_bomb_is_refused_while_inflating_with_bounded_memory() -> None:
    settings = get_settings(max_pixels=1_000_000)  # inflation limit 2 x 2 MP x 2 B + 16 MiB = 21 MB
    bomb = hc.deflated_dicom(200 * MB)  # a 200 kB file; pydicom alone would inflate all 200 MB
    assert len(bomb) < 300_000
    out, peak = _peak(read_scans, bomb, "bomb.dcm", settings)
    assert isinstance(out, InvalidScanError), out
    assert "inflates to more than 21 MB" in str(out) and "decompression bomb" in str(out)
    assert peak < 60, peak


# ----- item 4: compressed frame larger than the header ---------------------------------------


def test_a_compressed_frame_larger_than_the_header_is_refused_before_decoding() -> None:
    out, peak = _peak(read_scans, SPECS["dicom_jpeg_12000_in_64.dcm"].make(), "x.dcm")
    assert isinstance(out, InvalidScanError)
    assert "header says 64x64 px but compressed frame 0 is 12000x12000 px" in str(out)
    assert "transfer syntax" not in str(out) and "compressed as" not in str(out)  # the right reason
    assert peak < 10


# ----- item 3 and 5: importer memory, decoded-size budget, de-duplication ---------------------


def _gradient_png(seed: int, side: int = 1500) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    img = (60 + 40 * np.sin(xx / rng.uniform(40, 90)) + 40 * np.cos(yy / rng.uniform(40, 90))).astype(np.uint8)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def test_the_importer_keeps_no_decoded_image_in_memory(tmp_path) -> None:
    """12 distinct 1500^2 slices (2.25 MB each decoded): the peak stays near one image, not twelve."""
    files = {
        f"{c}/{c}_{i}.png": _gradient_png(10 * k + i) for k, c in enumerate(("glioma", "no_tumor")) for i in range(6)
    }
    zipped = hc.zip_of(files)
    settings = get_settings(data_dir=tmp_path / "data")
    summary, peak = _peak(importer.import_zip, zipped, "classifier", settings)
    assert summary.total == 12, summary
    assert peak < 8 * 2.25, peak  # before: every accepted slice (12 x 2.25 MB) plus its PNG copy
    assert not list(Path(summary.dataset_dir).rglob(".pending"))


def test_the_importer_stops_decoding_when_its_pixel_budget_is_spent(tmp_path, monkeypatch) -> None:
    files = {f"glioma/{i}.png": _gradient_png(i, 200) for i in range(5)}
    monkeypatch.setattr(importer, "MAX_IMPORT_PIXELS", 3 * 200 * 200)
    summary = importer.import_zip(hc.zip_of(files), "classifier", get_settings(data_dir=tmp_path / "data"))
    assert summary.total == 3
    assert [r[1] for r in summary.rejected] == [
        "not decoded: the import's budget of 120,000 decoded pixels is spent"
    ] * 2


def test_declared_pixels_read_headers_only() -> None:
    tmp = Path(__import__("tempfile").mkdtemp())
    for name, expected in (("strip_32x60000.png", 32 * 60000), ("mr_deflated.dcm", 64 * 64)):
        (tmp / name).write_bytes(SPECS[name].make())
        assert declared_pixels(tmp / name) == expected
    (tmp / "bomb.dcm").write_bytes(hc.deflated_dicom(200 * MB))
    assert declared_pixels(tmp / "bomb.dcm", get_settings(max_pixels=1_000_000)) == 0  # refused, not inflated


def _brute_force(v: np.ndarray, sha: list[str], thr: float = 0.99) -> np.ndarray:
    keep = np.ones(len(v), bool)
    seen: set[str] = set()
    for i, s in enumerate(sha):
        if s in seen:
            keep[i] = False
        seen.add(s)
    sims = v @ v.T
    for i in range(len(v)):
        if keep[i]:
            keep[np.nonzero(sims[i, i + 1 :] >= thr)[0] + i + 1] = False
    return keep


def test_screened_dedup_equals_comparing_every_pair() -> None:
    rng = np.random.default_rng(3)
    base = cv2.resize(hc.fake_brain(128), (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32)
    fields = np.stack([cv2.resize(f, (64, 64)) for f in rng.normal(0, 25, (600, 8, 8)).astype(np.float32)])
    thumbs = np.clip(base + fields, 0, 255).astype(np.uint8)
    thumbs[300:400] = np.clip(thumbs[:100].astype(int) + rng.integers(-2, 3, (100, 64, 64)), 0, 255)
    sha = [str(i) for i in range(len(thumbs))]
    sha[5] = sha[6] = "same"
    unit = thumbs.reshape(len(thumbs), -1).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    expected = _brute_force(unit, sha)
    assert 50 < (~expected).sum() < 500  # planted and chance near-duplicates
    for chunk in (1, 64, 1024):
        assert np.array_equal(datasets.dedup_groups(unit, sha, chunk=chunk), expected)
        assert np.array_equal(datasets.dedup_groups(thumbs, sha, chunk=chunk), expected)  # raw uint8 too
    src = datasets.dedup_sources(thumbs, sha)
    assert all(src[src[i]] == -1 and src[i] < i for i in np.flatnonzero(src >= 0))  # the one kept earlier


# ----- item 6: unbounded work per upload -----------------------------------------------------


def test_a_50000_page_tiff_is_refused_without_walking_it() -> None:
    data = SPECS["tiff_50000_pages.tif"].make()
    t = time.perf_counter()
    with pytest.raises(InvalidScanError, match="more than 256 frames"):
        read_scans(data, "pages.tif")
    assert time.perf_counter() - t < 0.5  # 257 pages looked at, not 50,000


def test_frames_are_analysed_in_bounded_batches_and_case_review_decodes_one(service, monkeypatch) -> None:
    import triage.service as svc

    data = hc.dicom_frames(40, 96)
    sizes = []
    clf = service.models().classifier
    real = clf.predict
    monkeypatch.setattr(clf, "predict", lambda crops: sizes.append(len(crops)) or real(crops))
    results = service.analyze_bytes(data, "series.dcm")
    assert len(results) == 40 and max(sizes) <= svc.MAX_BATCH
    sizes.clear()
    one = service.analyze_bytes(data, "series.dcm", frame=7)
    assert [r.scan.frame for r in one] == [7] and sizes == [1]
    assert one[0].scan_id == results[7].scan_id
    assert "frame 40 not found" in service.analyze_bytes(data, "series.dcm", frame=40)[0].error


# ----- item 8: corrupt headers ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["dicom_columns_63.dcm", "dicom_rows_48.dcm"])
def test_a_pixel_length_mismatch_is_a_rejection(name: str) -> None:
    with pytest.raises(InvalidScanError, match=r"header does not match its pixel data.*8,192"):
        read_scans(SPECS[name].make(), name)


def test_a_seg_object_is_not_an_image() -> None:
    with pytest.raises(InvalidScanError, match="segmentation object"):
        read_scans(SPECS["dicom_seg.dcm"].make(), "seg.dcm")


# ----- item 9: implausible values ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("dicom_spacing_1e200.dcm", "PixelSpacing 1e+200"),
        ("dicom_spacing_1e6.dcm", "PixelSpacing 1e+06"),
        ("dicom_slope_minus1.dcm", "contrast is inverted"),
        ("dicom_slope_1e30.dcm", "RescaleSlope 1e+30 is implausible"),
        ("dicom_window_1e30.dcm", "VOI window 1e+30 / 1e+30 is implausible"),
    ],
)
def test_an_implausible_header_value_is_dropped_and_the_case_flagged(service, tmp_path, name, text) -> None:
    from triage.intake import ingest
    from triage.worklist import Worklist

    data = SPECS[name].make()
    scan = read_scans(data, name)[0]
    assert any(text in w for w in scan.meta["header_warnings"])
    if "Spacing" in name:
        assert scan.pixel_spacing is None
    wl = Worklist(tmp_path / "wl.sqlite3")
    (r,) = ingest(service, wl, data, name)
    assert r.ok and "suspect_header" in r.flags, (r.status, r.error, r.flags)
    case = wl.get(r.scan_id)
    assert case is not None
    if "Spacing" in name:
        assert case.tumor_area_mm2 is None  # never an infinite or absurd area
    assert r.risk >= service.settings.review_risk_floor  # a flagged case never sinks


# ----- item 11: server folders ---------------------------------------------------------------


def test_server_folders_are_confined_to_the_data_folders(tmp_path) -> None:
    data = tmp_path / "data"
    outside = tmp_path / "outside"
    hc_png = hc.encode(hc.Image.fromarray(hc.fake_brain(64)), "PNG")
    for c in ("glioma", "no_tumor"):
        (outside / c).mkdir(parents=True)
        (outside / c / "a.png").write_bytes(hc_png)
    settings = get_settings(data_dir=data, shared_data_dir=tmp_path / "no-shared")
    for typed in (str(outside), "/etc", "../outside", str(data / ".." / "outside"), "~"):
        with pytest.raises(DatasetError, match="only folders inside the server's data folders"):
            importer.import_folder(typed, "classifier", settings)
    with pytest.raises(DatasetError, match="only folders inside"):
        importer.import_manifest("/etc/passwd", "classifier", settings)
    # inside the data folder: a manifest row or a link pointing out gets the same answer whether
    # or not its target exists (no existence oracle), and the rest is imported
    inside = data / "mine"
    (inside / "glioma").mkdir(parents=True)
    (inside / "glioma" / "b.png").write_bytes(hc_png)
    (inside / "glioma" / "link.png").symlink_to(outside / "glioma" / "a.png")
    s = importer.import_folder(inside, "classifier", settings)
    assert (
        s.counts["glioma"] == 1
        and ["glioma/link.png", "a link pointing outside the allowed folders; not read"] in s.rejected
    )
    (inside / "manifest.csv").write_text(
        f"path,label\nglioma/b.png,glioma\n{outside}/glioma/a.png,glioma\n/etc/hostname,glioma\n"
        f"../../outside/glioma/nope.png,glioma\n",
        encoding="utf-8",
    )
    s = importer.import_manifest(inside / "manifest.csv", "classifier", settings)
    reasons = dict(s.rejected)
    assert len(reasons) == 3 and set(reasons.values()) == {"path is empty or points outside the dataset folder"}
    assert s.counts["glioma"] == 1
    allowed = get_settings(data_dir=data, import_roots=str(outside))
    assert importer.import_folder(outside, "classifier", allowed).counts["glioma"] == 1


def test_an_upload_batch_stops_decoding_when_its_pixel_budget_is_spent(service, tmp_path, monkeypatch) -> None:
    from triage.ui import uploads
    from triage.worklist import Worklist

    files = [(f"s{i}.png", hc.encode(hc.Image.fromarray(hc.fake_brain(128, seed=i)), "PNG")) for i in range(4)]
    monkeypatch.setattr(uploads, "MAX_BATCH_PIXELS", 2 * 128 * 128)
    seen = []
    real = service.analyze_bytes
    monkeypatch.setattr(service, "analyze_bytes", lambda data, name, **kw: seen.append(name) or real(data, name, **kw))
    rows = uploads.process_uploads(files, service, Worklist(tmp_path / "wl.sqlite3"))
    assert len(seen) == 2  # the other two were never decoded
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert len(skipped) == 2 and all("budget of 32,768 decoded pixels is spent" in r["reason"] for r in skipped)
    assert all(r["scan_id"] for r in skipped)


# ----- item 15 (part): disk full ---------------------------------------------------------------


def test_a_full_disk_gives_a_clear_reason_and_leaves_no_temporary_file(service, tmp_path, monkeypatch) -> None:
    import errno
    import os

    from triage.ui import uploads
    from triage.worklist import Worklist

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", full)  # every atomic write (triage.atomic) fsyncs through os
    wl = Worklist(tmp_path / "wl.sqlite3")
    files = [(f"s{i}.png", hc.encode(hc.Image.fromarray(hc.fake_brain(128, seed=100 + i)), "PNG")) for i in range(2)]
    rows = uploads.process_uploads(files, service, wl)
    assert [r["status"] for r in rows] == ["error", "error"]
    assert all("the server's disk is full" in r["reason"] for r in rows)
    scans = service.settings.scans_dir
    assert not list(scans.rglob(".tmp-*"))  # before: one zero-byte temporary file per failed write
    assert wl.list_cases() == []
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert [r["status"] for r in uploads.process_uploads(files, service, wl)] == ["accepted", "accepted"]


def test_the_same_bytes_are_not_analysed_again(service, tmp_path, monkeypatch) -> None:
    from triage.ui import uploads
    from triage.worklist import Worklist

    png = hc.encode(hc.Image.fromarray(hc.fake_brain(128, seed=5)), "PNG")
    seen = []
    real = service.analyze_bytes
    monkeypatch.setattr(service, "analyze_bytes", lambda data, name, **kw: seen.append(name) or real(data, name, **kw))
    wl = Worklist(tmp_path / "wl.sqlite3")
    rows = uploads.process_uploads([(f"copy{i}.png", png) for i in range(5)], service, wl)
    assert [r["status"] for r in rows] == ["accepted"] + ["already in worklist"] * 4
    assert len(seen) == 1 and wl.count() == 1
    assert len({(r["label"], r["risk"]) for r in rows}) == 1  # the stored case's result, shown for each copy


def test_zero_padding_under_a_row_is_not_a_length_mismatch() -> None:
    from pydicom.data import get_testdata_file

    (scan,) = read_scans(Path(get_testdata_file("MR_small_padded.dcm")).read_bytes(), "padded.dcm")
    assert scan.shape == (64, 64)
