"""Scan decoding: the hostile corpus, every supported flavour, DICOM semantics, ids and real data."""

from __future__ import annotations

import csv
import hashlib
import io
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.hostile_corpus import (
    EITHER,
    NOT_BRAIN,
    OK,
    REJECTED,
    corpus_specs,
    dicom_bytes,
    encode,
    fake_brain,
    mask_specs,
    monochrome1_dicom,
    mr_small,
    multiframe_dicom,
)
from triage.config import Settings
from triage.errors import InvalidScanError
from triage.io import (
    content_id,
    read_mask_bytes,
    read_mask_path,
    read_path,
    read_scan,
    read_scans,
    safe_name,
    to_uint8,
)

SPECS = {s.name: s for s in corpus_specs()}
PHI_VALUES = ("CompressedSamples^MR1", "4MR1")  # PatientName / PatientID of MR_small.dcm


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str, str]]:
    from tests.hostile_corpus import build_corpus

    items = build_corpus(tmp_path_factory.mktemp("hostile"))
    return {item.path.name: item for item in items}


def decode(data: bytes, name: str = "x", settings: Settings | None = None) -> list | InvalidScanError:
    """read_scans, with InvalidScanError returned instead of raised (anything else propagates)."""
    try:
        return read_scans(data, name, settings)
    except InvalidScanError as exc:
        return exc


# --------------------------------------------------------------------------- the hostile corpus


def test_corpus_is_big_and_well_formed(corpus: dict) -> None:
    assert len(corpus) >= 40
    assert len(SPECS) == len(corpus_specs())  # names are unique
    expectations = {item.expectation for item in corpus.values()}
    assert {OK, NOT_BRAIN, REJECTED} <= expectations
    assert sum(item.expectation == REJECTED for item in corpus.values()) >= 25
    for item in corpus.values():
        assert item.path.is_file()
        assert item.path.parent.name.startswith("hostile")  # written inside dest, never elsewhere
    assert corpus["..%2F..%2Fx.png"].upload_name == "../../x.png"


@pytest.mark.parametrize("name", list(SPECS))
def test_corpus_item(corpus: dict, name: str) -> None:
    path, expectation, upload_name = corpus[name]
    data = path.read_bytes()
    result = decode(data, upload_name)
    if expectation in (OK, NOT_BRAIN) or (expectation == EITHER and not isinstance(result, InvalidScanError)):
        assert not isinstance(result, InvalidScanError), f"{name} should decode: {result}"
        assert result, name
        base = content_id(data)
        for scan in result:
            assert scan.pixels.dtype == np.uint8 and scan.pixels.ndim == 2
            assert min(scan.shape) >= Settings().min_side
            assert scan.pixels.flags.c_contiguous
            assert scan.scan_id.startswith(base)
            assert scan.name == safe_name(upload_name)
            assert "/" not in scan.name and "\\" not in scan.name and ".." != scan.name
    else:
        assert isinstance(result, InvalidScanError), f"{name} should be rejected, got {len(result)} scans"
        message = str(result)
        assert message.strip(), name
        assert len(message) < 400 and "Traceback" not in message and "\n" not in message
    # reading from disk behaves the same way
    from_disk = decode_path(path)
    assert isinstance(from_disk, InvalidScanError) == isinstance(result, InvalidScanError)


def decode_path(path: Path) -> list | InvalidScanError:
    try:
        return read_path(path)
    except InvalidScanError as exc:
        return exc


def test_traversal_and_unicode_names_are_safe(corpus: dict) -> None:
    (scan,) = read_scans(corpus["..%2F..%2Fx.png"].path.read_bytes(), "../../x.png")
    assert scan.name == "x.png"
    (scan,) = read_scans(corpus["säule_脑.png"].path.read_bytes(), "säule_脑.png")
    assert scan.name == "säule_脑.png"
    (scan,) = read_path(corpus["säule_脑.png"].path)
    assert scan.name == "säule_脑.png"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../x.png", "x.png"),
        ("..\\..\\windows\\x.dcm", "x.dcm"),
        ("C:\\Users\\dr\\scan.jpg", "scan.jpg"),
        ("/etc/passwd", "passwd"),
        ("a\nb\x00c.png", "abc.png"),
        ("", "upload"),
        ("..", "upload"),
        ("dir/", "upload"),
        (None, "upload"),
    ],
)
def test_safe_name(raw: str | None, expected: str) -> None:
    assert safe_name(raw) == expected


def test_safe_name_shortens_but_keeps_extension() -> None:
    name = safe_name("x" * 1000 + ".dcm")
    assert len(name) <= 200 and name.endswith(".dcm")


def test_size_limits_have_clear_messages(corpus: dict) -> None:
    with pytest.raises(InvalidScanError, match=r"10000x10000 pixels, over the limit of 40,000,000"):
        read_scans(corpus["huge_10000x10000.png"].path.read_bytes(), "huge.png")
    for name in (
        "bomb_100000x100000_ihdr.png",
        "bomb_65500x65500.jpg",
        "bomb_100000x100000.tif",
        "bomb_65535x65535.dcm",
        "bomb_7000x7000_ihdr.png",
    ):
        with pytest.raises(InvalidScanError, match="decompression bomb"):
            read_scans(corpus[name].path.read_bytes(), name)
    with pytest.raises(InvalidScanError, match="1x1 pixels; at least 32"):
        read_scans(corpus["one_pixel.png"].path.read_bytes())
    with pytest.raises(InvalidScanError, match=r"over the 0 MB limit|MB limit"):
        read_scans(corpus["grey8.png"].path.read_bytes(), settings=Settings(max_file_bytes=100))
    with pytest.raises(InvalidScanError, match="MB limit"):
        read_path(corpus["grey8.png"].path, settings=Settings(max_file_bytes=100))
    big = encode(Image.fromarray(fake_brain(128)), "PNG")
    with pytest.raises(InvalidScanError, match="over the limit of 10,000 pixels"):
        read_scans(big, settings=Settings(max_pixels=10_000))


def test_multiframe_total_pixel_budget() -> None:
    ds = multiframe_dicom(8)
    ds.Rows, ds.Columns = 4000, 4000  # 8 x 16 MP = 128 MP > 2 x 40 MP; refused before decoding
    with pytest.raises(InvalidScanError, match="frames totalling"):
        read_scans(dicom_bytes(ds), "big_series.dcm")


def test_multipage_tiff_total_pixel_budget() -> None:
    page = Image.fromarray(fake_brain(90))  # 8100 px per page; budget = 2 x max_pixels = 20000
    buf = io.BytesIO()
    page.save(buf, format="TIFF", save_all=True, append_images=[page] * 3)
    with pytest.raises(InvalidScanError, match="frames totalling"):
        read_scans(buf.getvalue(), "stack.tif", settings=Settings(max_pixels=10_000))
    assert len(read_scans(buf.getvalue(), "stack.tif")) == 4


def test_plugin_allow_list_refuses_eps_and_gif(corpus: dict) -> None:
    with pytest.raises(InvalidScanError, match="not a readable image"):
        read_scans(corpus["eps_binary_named.png"].path.read_bytes(), "x.png")
    with pytest.raises(InvalidScanError, match="GIF images are not supported"):
        read_scans(corpus["animated.gif"].path.read_bytes(), "x.gif")


def test_non_bytes_and_missing_files() -> None:
    with pytest.raises(InvalidScanError):
        read_scans("not bytes", "x.png")  # type: ignore[arg-type]
    with pytest.raises(InvalidScanError, match="cannot read file"):
        read_path("/nonexistent/dir/scan.png")


def test_bytearray_and_memoryview_accepted() -> None:
    png = encode(Image.fromarray(fake_brain(64)), "PNG")
    assert read_scan(bytearray(png)).shape == (64, 64)
    assert read_scan(memoryview(png)).shape == (64, 64)


@pytest.mark.parametrize("fmt", ["png", "jpg", "tif", "dcm"])
def test_fuzzed_bytes_only_raise_invalid_scan(fmt: str) -> None:
    """Random truncations and byte flips of valid files: scans or InvalidScanError, nothing else."""
    grey = Image.fromarray(fake_brain(64), "L")
    base = {
        "png": lambda: encode(grey, "PNG"),
        "jpg": lambda: encode(grey, "JPEG"),
        "tif": lambda: encode(grey, "TIFF", compression="tiff_adobe_deflate"),
        "dcm": lambda: dicom_bytes(mr_small()),
    }[fmt]()
    rng = np.random.default_rng(zlib.crc32(fmt.encode()))
    for _ in range(40):
        data = bytearray(base)
        if rng.random() < 0.3:
            data = data[: int(rng.integers(1, len(data)))]
        for i in rng.integers(0, len(data), int(rng.integers(1, 12))):
            data[int(i)] = int(rng.integers(0, 256))
        result = decode(bytes(data), f"fuzz.{fmt}")
        if isinstance(result, InvalidScanError):
            assert str(result)
        else:
            assert all(s.pixels.dtype == np.uint8 and s.pixels.ndim == 2 for s in result)


def test_pydicom_bundled_files_never_crash() -> None:
    """pydicom's own test files (compressed syntaxes, big endian, palette, YBR, SR, DICOMDIR...)."""
    import pydicom.data

    root = Path(pydicom.data.__file__).parent / "test_files"
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix in (".dcm", "") and p.stat().st_size < 400_000]
    assert len(files) > 20
    decoded = 0
    for p in files:
        result = decode(p.read_bytes(), p.name)
        if isinstance(result, InvalidScanError):
            assert str(result) and "\n" not in str(result)
        else:
            decoded += 1
    assert decoded >= 20
    jpeg_ls = decode((root / "MR_small_jpeg_ls_lossless.dcm").read_bytes())
    if isinstance(jpeg_ls, InvalidScanError):  # no JPEG-LS codec installed: say so, actionably
        assert "compressed as 'JPEG-LS Lossless" in str(jpeg_ls) and "export the series uncompressed" in str(jpeg_ls)


# --------------------------------------------------------------------------- formats


@pytest.fixture(scope="module")
def brain() -> np.ndarray:
    return fake_brain(128)


def test_png_and_tiff_8bit_grey_are_lossless(brain: np.ndarray) -> None:
    for fmt in ("PNG", "TIFF", "BMP"):
        scan = read_scan(encode(Image.fromarray(brain, "L"), fmt), f"x.{fmt.lower()}")
        assert scan.pixels.dtype == np.uint8
        np.testing.assert_array_equal(scan.pixels, brain)
        assert scan.source_format == fmt.lower()
        assert scan.pixel_spacing is None and scan.frame is None


def test_jpeg_grey_and_rgb(brain: np.ndarray) -> None:
    grey = read_scan(encode(Image.fromarray(brain, "L"), "JPEG", quality=95), "x.jpg")
    assert np.abs(grey.pixels.astype(int) - brain).mean() < 3
    rgb = np.dstack([brain, brain, brain])
    col = read_scan(encode(Image.fromarray(rgb, "RGB"), "JPEG", quality=95), "x.jpg")
    assert col.pixels.shape == brain.shape
    assert np.abs(col.pixels.astype(int) - brain).mean() < 3


def test_rgb_png_uses_luma(brain: np.ndarray) -> None:
    rgb = np.dstack([brain, brain // 2, brain // 3])
    scan = read_scan(encode(Image.fromarray(rgb, "RGB"), "PNG"))
    np.testing.assert_array_equal(scan.pixels, np.asarray(Image.fromarray(rgb, "RGB").convert("L")))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_grey_stretched_to_uint8(brain: np.ndarray, fmt: str) -> None:
    arr16 = brain.astype(np.uint16) * 200 + 1000
    scan = read_scan(encode(Image.fromarray(arr16), fmt), f"x16.{fmt.lower()}")
    assert scan.pixels.dtype == np.uint8 and scan.shape == brain.shape
    assert scan.pixels.max() == 255 and scan.pixels.min() == 0
    assert np.corrcoef(scan.pixels.ravel().astype(float), arr16.ravel().astype(float))[0, 1] > 0.99


def test_signed_16bit_and_float32_tiff(brain: np.ndarray) -> None:
    signed = brain.astype(np.int16) * 10 - 900
    flt = brain.astype(np.float32) / 100.0 - 0.7
    flt[0, 0] = np.nan  # must not poison the stretch
    for arr in (signed, flt):
        scan = read_scan(encode(Image.fromarray(arr), "TIFF"), "x.tif")
        assert scan.pixels.dtype == np.uint8 and scan.shape == brain.shape
        good = np.isfinite(arr)
        assert np.corrcoef(scan.pixels[good].astype(float), arr[good].astype(float))[0, 1] > 0.99


def test_rgba_composited_over_black(brain: np.ndarray) -> None:
    alpha = np.full_like(brain, 255)
    alpha[:, :20] = 0
    rgba = np.dstack([brain, brain, brain, alpha])
    scan = read_scan(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (scan.pixels[:, :20] == 0).all()  # transparent -> background, not white
    assert np.abs(scan.pixels[:, 20:].astype(int) - brain[:, 20:]).max() <= 1


def test_colorfulness_recorded_for_colour_sources(brain: np.ndarray) -> None:
    """``meta['colorfulness']`` feeds the pipeline's brain check (photos are rejected there)."""
    from skimage import data as skdata

    assert "colorfulness" not in read_scan(encode(Image.fromarray(brain), "PNG")).meta  # grey source
    grey_rgb = read_scan(encode(Image.fromarray(np.dstack([brain] * 3)), "PNG"))
    assert grey_rgb.meta["colorfulness"] == 0.0
    photo = read_scan(encode(Image.fromarray(skdata.astronaut()), "JPEG"), "astronaut.jpg")
    assert photo.meta["colorfulness"] > 40
    rgba = np.dstack([skdata.astronaut(), np.full((512, 512), 255, np.uint8)])
    assert read_scan(encode(Image.fromarray(rgba, "RGBA"), "PNG")).meta["colorfulness"] > 40
    import pydicom.data

    rgb_dcm = Path(pydicom.data.__file__).parent / "test_files" / "SC_rgb_rle.dcm"
    assert read_scan(rgb_dcm.read_bytes()).meta["colorfulness"] > 40
    assert "colorfulness" not in read_scan(dicom_bytes(mr_small())).meta


def test_palette_png(brain: np.ndarray) -> None:
    pal = Image.fromarray(brain, "L").convert("P")
    scan = read_scan(encode(pal, "PNG"))
    assert np.abs(scan.pixels.astype(int) - brain).mean() < 2


def test_multipage_tiff_gives_one_scan_per_page() -> None:
    pages = [Image.fromarray(fake_brain(64, seed=s)) for s in range(3)]
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    scans = read_scans(buf.getvalue(), "stack.tif")
    assert [s.frame for s in scans] == [0, 1, 2]
    assert len({s.scan_id for s in scans}) == 3
    for s, page in zip(scans, pages, strict=True):
        np.testing.assert_array_equal(s.pixels, np.asarray(page))
    with pytest.raises(InvalidScanError, match="3 frames"):
        read_scan(buf.getvalue(), "stack.tif")


def test_content_is_sniffed_not_trusted_from_extension(brain: np.ndarray) -> None:
    png = encode(Image.fromarray(brain), "PNG")
    for name in ("scan.dcm", "scan.tif", "scan.jpg", "scan", "SCAN.DCM"):
        scan = read_scan(png, name)
        assert scan.source_format == "png"
        np.testing.assert_array_equal(scan.pixels, brain)
    assert read_scan(dicom_bytes(mr_small()), "scan.png").source_format == "dicom"


def test_to_uint8_contract() -> None:
    u8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert to_uint8(u8) is u8  # uint8 passes through untouched
    ramp = np.linspace(-1000, 3000, 64 * 64, dtype=np.float32).reshape(64, 64)
    out = to_uint8(ramp)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert (np.diff(out.ravel().astype(int)) >= 0).all()  # monotonic
    np.testing.assert_array_equal(to_uint8(ramp, window=(1000, 2000)), _window(ramp, 1000, 2000))
    assert not to_uint8(np.full((8, 8), 1234.0)).any()  # constant -> black, no division by zero
    assert not to_uint8(np.full((8, 8), np.nan)).any()
    odd = ramp.copy()
    odd[0, :4] = [np.nan, np.inf, -np.inf, np.nan]
    res = to_uint8(odd)
    assert (res[0, :4] == 0).all()  # non-finite -> background
    np.testing.assert_array_equal(res[1:], to_uint8(ramp)[1:])
    assert not to_uint8(ramp, window=(0, 0)).any()  # zero-width window: nothing to show


def test_to_uint8_big_images_use_a_subsample_close_to_exact() -> None:
    rng = np.random.default_rng(0)
    big = rng.gamma(2.0, 300.0, (2500, 2000)).astype(np.float32)  # 5 MP > the 2 MP sample
    lo, hi = np.percentile(big, [0.5, 99.5])
    exact = (np.clip((big - lo) / (hi - lo), 0, 1) * 255 + 0.5).astype(np.uint8)
    assert np.abs(to_uint8(big).astype(int) - exact).max() <= 2


# --------------------------------------------------------------------------- ids


def test_content_id_is_stable_and_byte_based(brain: np.ndarray) -> None:
    png = encode(Image.fromarray(brain), "PNG")
    a, b = read_scan(png, "a.png"), read_scan(png, "renamed.png")
    assert a.scan_id == b.scan_id == content_id(png) == hashlib.sha256(png).hexdigest()[:32]
    other = encode(Image.fromarray(brain), "PNG", compress_level=1)  # same pixels, other bytes
    assert other != png and read_scan(other).scan_id != a.scan_id
    changed = brain.copy()
    changed[0, 0] ^= 1
    assert read_scan(encode(Image.fromarray(changed), "PNG")).scan_id != a.scan_id
    assert len(a.scan_id) == 32 and all(c in "0123456789abcdef" for c in a.scan_id)


# --------------------------------------------------------------------------- DICOM


def _window(arr: np.ndarray, center: float, width: float) -> np.ndarray:
    lo = center - width / 2.0
    return (np.clip((arr.astype(np.float32) - lo) / width, 0, 1) * 255 + 0.5).astype(np.uint8)


def test_dicom_mr_small_basics() -> None:
    ds = mr_small()
    scan = read_scan(dicom_bytes(ds), "mr.dcm")
    assert scan.source_format == "dicom"
    assert scan.shape == (64, 64)
    assert scan.pixel_spacing == pytest.approx((0.3125, 0.3125))
    assert scan.meta.get("Modality") == "MR"
    # window 600/1600 from the file is applied to the stored values (no rescale in MR_small)
    np.testing.assert_array_equal(scan.pixels, _window(ds.pixel_array, 600, 1600))


def test_dicom_rescale_slope_intercept_applied() -> None:
    ds = mr_small()
    raw = ds.pixel_array.astype(np.float32)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    scan = read_scan(dicom_bytes(ds))
    np.testing.assert_array_equal(scan.pixels, _window(raw * 2 - 100, 600, 1600))
    # a window expressed in rescaled units gives the same picture as the original
    ds.WindowCenter, ds.WindowWidth = 600 * 2 - 100, 1600 * 2
    again = read_scan(dicom_bytes(ds))
    original = read_scan(dicom_bytes(mr_small()))
    assert np.abs(again.pixels.astype(int) - original.pixels).max() <= 1


def test_dicom_without_window_is_stretched() -> None:
    ds = mr_small()
    del ds.WindowCenter
    del ds.WindowWidth
    scan = read_scan(dicom_bytes(ds))
    np.testing.assert_array_equal(scan.pixels, to_uint8(ds.pixel_array.astype(np.float32)))
    assert scan.pixels.max() == 255 and scan.pixels.min() == 0
    windowed = read_scan(dicom_bytes(mr_small()))
    assert not np.array_equal(scan.pixels, windowed.pixels)


def test_dicom_invalid_window_and_spacing_are_ignored(corpus: dict) -> None:
    bad_window = read_scan(corpus["mr_bad_window.dcm"].path.read_bytes())
    ds = mr_small()
    np.testing.assert_array_equal(bad_window.pixels, to_uint8(ds.pixel_array.astype(np.float32)))
    assert read_scan(corpus["mr_bad_spacing.dcm"].path.read_bytes()).pixel_spacing is None
    for bad in ([0, 0.5], [-1, 1], ["nan", 1]):
        ds = mr_small()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about the invalid DS it is told to write
            ds.PixelSpacing = bad
        assert read_scan(dicom_bytes(ds)).pixel_spacing is None


def test_dicom_monochrome1_is_inverted() -> None:
    normal = read_scan(dicom_bytes(mr_small()))
    inverted = read_scan(dicom_bytes(monochrome1_dicom()))
    np.testing.assert_array_equal(inverted.pixels, 255 - normal.pixels)


def test_dicom_phi_only_with_allow_phi() -> None:
    data = dicom_bytes(mr_small())
    default = read_scan(data, settings=Settings())
    for tag in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "StudyDate"):
        assert tag not in default.meta
    assert not any(v in str(default.meta) for v in PHI_VALUES)
    allowed = read_scan(data, settings=Settings(allow_phi=True))
    assert allowed.meta["PatientName"] == "CompressedSamples^MR1"
    assert allowed.meta["PatientID"] == "4MR1"
    assert allowed.meta["Modality"] == "MR"


def test_dicom_multiframe_one_scan_per_frame() -> None:
    data = dicom_bytes(multiframe_dicom(4))
    scans = read_scans(data, "series.dcm")
    assert len(scans) == 4
    assert [s.frame for s in scans] == [0, 1, 2, 3]
    ids = [s.scan_id for s in scans]
    assert len(set(ids)) == 4
    assert ids == [f"{content_id(data)}-f{i}" for i in range(4)]
    for i, s in enumerate(scans):  # frame i is frame 0 shifted by 4*i columns
        np.testing.assert_array_equal(s.pixels, np.roll(scans[0].pixels, 4 * i, axis=1))
        assert s.pixel_spacing == pytest.approx((0.3125, 0.3125))
    with pytest.raises(InvalidScanError, match="4 frames"):
        read_scan(data, "series.dcm")


def test_enhanced_multiframe_functional_groups() -> None:
    """Per-frame rescale/window and shared pixel spacing of enhanced MR objects are honoured."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = multiframe_dicom(2)
    raw = np.stack([ds.pixel_array[0]] * 2)
    ds.PixelData = raw.tobytes()
    del ds.PixelSpacing
    del ds.WindowCenter
    del ds.WindowWidth
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [0.5, 0.6]
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for slope, intercept in ((1.0, 0.0), (2.0, 50.0)):
        fg = Dataset()
        pvt = Dataset()
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = slope, intercept, "US"
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = 600 * slope + intercept, 1600 * slope
        fg.PixelValueTransformationSequence = Sequence([pvt])
        fg.FrameVOILUTSequence = Sequence([voi])
        per_frame.append(fg)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    a, b = read_scans(dicom_bytes(ds), "enhanced.dcm")
    assert a.pixel_spacing == pytest.approx((0.5, 0.6))
    assert np.abs(a.pixels.astype(int) - b.pixels).max() <= 1
    np.testing.assert_array_equal(a.pixels, _window(raw[0], 600, 1600))


def test_dicom_rgb_and_palette() -> None:
    import pydicom.data

    root = Path(pydicom.data.__file__).parent / "test_files"
    rgb = read_scan((root / "SC_rgb_rle.dcm").read_bytes())
    assert rgb.shape == (100, 100) and rgb.pixels.dtype == np.uint8
    assert rgb.pixels.std() > 10
    pal = read_scan((root / "examples_palette.dcm").read_bytes())
    assert pal.shape == (350, 800) and pal.pixels.std() > 5


# --------------------------------------------------------------------------- real data


def _manifest(folder: Path) -> list[dict[str, str]]:
    with (folder / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_real_brisc_jpegs_decode(shared_data: Path) -> None:
    folder = shared_data / "brisc2025"
    rows = _manifest(folder)
    picked: dict[str, list[dict[str, str]]] = {}
    for row in rows:  # two per class, including non-512 sizes when present
        bucket = picked.setdefault(row["label"], [])
        if len(bucket) < 2 and (not bucket or row["width"] != bucket[0]["width"]):
            bucket.append(row)
    odd = [r for r in rows if r["width"] != r["height"]][:2]
    sample = [r for b in picked.values() for r in b] + odd
    assert len(sample) >= 8
    for row in sample:
        path = folder / row["path"]
        data = path.read_bytes()
        assert hashlib.sha1(data).hexdigest() == row["sha1"]
        (scan,) = read_path(path)
        assert scan.shape == (int(row["height"]), int(row["width"]))
        assert scan.pixels.dtype == np.uint8 and scan.pixels.std() > 10
        assert scan.source_format == "jpeg" and scan.scan_id == content_id(data)


def test_real_lgg_tiffs_decode(shared_data: Path) -> None:
    folder = shared_data / "lgg_kaggle_3m_subset"
    rows = _manifest(folder)[:6]
    for row in rows:
        (scan,) = read_path(folder / row["path"])
        assert scan.shape == (256, 256) and scan.source_format == "tiff"
        (mask,) = read_path(folder / row["mask_path"])
        assert mask.shape == (256, 256)
        assert set(np.unique(mask.pixels)) <= {0, 255}
        assert (int(row["mask_pixels"]) > 0) == bool(mask.pixels.any())


def test_an_aspect_ratio_bomb_is_refused_from_the_header() -> None:
    """Issue 22, item 1: a 5.8 kB PNG of 32x60000 px made one upload allocate 13.7 GB."""
    import tracemalloc

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (32, 60000)).save(buf, format="PNG", optimize=True)
    data = buf.getvalue()
    assert len(data) < 100_000
    tracemalloc.start()
    with pytest.raises(InvalidScanError, match="aspect ratio of 1875:1"):
        read_scans(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 * 1024 * 1024, peak


# ----- masks (issue 22, item 7) and EXIF orientation (item 17) ------------------------------

MASK_SPECS = {s.name: s for s in mask_specs()}


@pytest.mark.parametrize("name", sorted(MASK_SPECS))
def test_mask_decoder_allow_list_and_limits(name: str) -> None:
    """Masks go through the scans' allow-list and header size checks: only PNG/JPEG/TIFF/BMP decode."""
    spec = MASK_SPECS[name]
    data = spec.make()
    if spec.expectation == OK:
        m = read_mask_bytes(data)
        assert m.dtype == np.uint8 and m.shape == (64, 64)
        assert (m[20, 20] > 127) and (m[50, 50] < 128)  # the square is where it was drawn
    else:
        with pytest.raises(InvalidScanError) as err:
            read_mask_bytes(data)
        assert len(str(err.value)) > 10


def test_hostile_masks_say_why(tmp_path: Path) -> None:
    reasons = {}
    for name in ("eps_text.png", "pcx.png", "tga.png", "spider.png", "bomb_30000x30000.png", "multipage3.png"):
        path = tmp_path / name
        path.write_bytes(MASK_SPECS[name].make())
        with pytest.raises(InvalidScanError) as err:
            read_mask_path(path)
        reasons[name] = str(err.value)
    for name in ("eps_text.png", "pcx.png", "tga.png", "spider.png"):
        assert "a mask must be a PNG, JPEG, TIFF or BMP image" in reasons[name], reasons[name]
    bomb = reasons["bomb_30000x30000.png"]
    assert "900,000,000 pixels" in bomb and "over the limit" in bomb
    assert "3 frames" in reasons["multipage3.png"]


def test_mask_bomb_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 30000 x 30000 mask never reaches a pixel decoder (it once cost 2.4 GB for two masks)."""
    loaded = []
    monkeypatch.setattr(Image.Image, "load", lambda self, *a, **k: loaded.append(self.size))
    with pytest.raises(InvalidScanError, match="over the limit"):
        read_mask_bytes(MASK_SPECS["bomb_30000x30000.png"].make())
    assert loaded == []


def _with_orientation(img: Image.Image, fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, fmt, exif=exif.tobytes())


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
def test_exif_orientation_is_applied(fmt: str) -> None:
    """A slice stored mirrored with Orientation=2 (or rotated, 6) comes out the way it was taken."""
    arr = np.zeros((64, 96), np.uint8)
    arr[8:24, 8:24] = 255  # a bright block in the top-left corner
    img = Image.fromarray(arr)
    plain = read_scan(encode(img, fmt)).pixels
    assert plain[16, 16] > 200 and plain.shape == (64, 96)
    mirrored = read_scan(_with_orientation(img, fmt, 2)).pixels  # "mirror horizontal"
    assert mirrored.shape == (64, 96)
    assert mirrored[16, 96 - 17] > 200 and mirrored[16, 16] < 50
    rotated = read_scan(_with_orientation(img, fmt, 6)).pixels  # "rotate 90 CW" to display
    assert rotated.shape == (96, 64)
    assert rotated[16, 64 - 17] > 200


def test_exif_orientation_applies_to_masks_too() -> None:
    arr = np.zeros((64, 64), np.uint8)
    arr[:, :16] = 255
    mask = read_mask_bytes(_with_orientation(Image.fromarray(arr), "PNG", 2))
    assert mask[:, -8].min() == 255 and mask[:, 8].max() == 0


def test_real_masks_decode_as_before(shared_data: Path) -> None:
    """The allow-listed mask decoder gives the pixels cv2 gave on real masks of every shared source."""
    import cv2

    checked = 0
    for source in sorted(p for p in shared_data.iterdir() if (p / "manifest.csv").is_file()):
        with (source / "manifest.csv").open(newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if (r.get("mask_path") or "").strip()]
        for row in rows[:: max(1, len(rows) // 5)][:5]:
            path = source / row["mask_path"]
            if not path.is_file():
                continue
            assert np.array_equal(read_mask_path(path), cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)), path
            checked += 1
    if not checked:
        pytest.skip("no masks in the shared data")
