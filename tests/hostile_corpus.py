"""Generator of hostile and awkward scan files for the decoder tests.

``build_corpus(dest)`` writes every file into ``dest`` (all generated in code: nothing is
copied from ``../shared/data``) and returns a list of :class:`CorpusItem` tuples
``(path, expectation, upload_name)``:

* ``path``: the file written under ``dest``.
* ``expectation``:

  - ``"ok"``: ``triage.io.read_scans`` must return at least one scan;
  - ``"not_brain"``: decodes fine (so ``read_scans`` returns scans) but is not a brain MRI
    (photo, blank, noise); the brain/out-of-distribution check happens later in the pipeline;
  - ``"rejected"``: ``read_scans`` must raise ``InvalidScanError`` with a non-empty message;
  - ``"either"``: corrupted payload that a lenient decoder may still turn into pixels (e.g. bit
    flips inside JPEG entropy-coded data): scans or ``InvalidScanError``, nothing else.

* ``upload_name``: the file name a browser would send with the bytes. It equals ``path.name``
  except for the path-traversal case, which is written safely to disk as
  ``..%2F..%2Fx.png`` but uploaded as ``../../x.png``.

Run ``python tests/hostile_corpus.py DEST`` to write the corpus and print it.
The whole corpus takes about a second to build and about 7 MB on disk (5.7 MB of it the 50,000-page
TIFF). :func:`bomb_specs` lists the full-size inputs of issue 22 for ``bench/hostile_memory.py``.
"""

from __future__ import annotations

import functools
import io
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

OK, REJECTED, NOT_BRAIN, EITHER = "ok", "rejected", "not_brain", "either"
EXPECTATIONS = (OK, REJECTED, NOT_BRAIN, EITHER)


class CorpusItem(NamedTuple):
    path: Path
    expectation: str
    upload_name: str


# --------------------------------------------------------------------------- helpers


def fake_brain(size: int = 128, seed: int = 0) -> np.ndarray:
    """A small uint8 axial-slice look-alike (ring, grey brain, bright blob) for valid files."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2.0
    r = ((yy - c) / (0.42 * size)) ** 2 + ((xx - c) / (0.36 * size)) ** 2
    img = np.zeros((size, size), np.float32)
    img[r <= 1.0] = 220
    img[r <= 0.8] = 20
    img[r <= 0.7] = 110
    img[((yy - 0.4 * size) ** 2 + (xx - 0.6 * size) ** 2) <= (0.08 * size) ** 2] = 190
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_ihdr(width: int, height: int, idat: bytes | None = None, bit_depth: int = 8, color_type: int = 0) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height``; IDAT is ``idat`` (default: a tiny stream)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    if idat is None:
        idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def zero_png_stream(width: int, height: int) -> bytes:
    """Complete, valid zlib IDAT data for an all-black 8-bit grey ``width`` x ``height`` image.

    Fast for 100 MP: one block of rows is deflated once, ended by a full flush (which resets
    the compressor), so its bytes can simply be repeated; header and Adler-32 are added here.
    """
    row = b"\x00" * (width + 1)  # filter byte + pixels
    rows_per_block = max(1, min(height, 4_000_000 // len(row)))
    n_blocks, rest = divmod(height, rows_per_block)
    block = row * rows_per_block
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = comp.compress(row * rest) + comp.flush()
    adler = 1
    for _ in range(n_blocks):
        adler = zlib.adler32(block, adler)
    adler = zlib.adler32(row * rest, adler)
    return b"\x78\xda" + deflated * n_blocks + tail + struct.pack(">I", adler & 0xFFFFFFFF)


def tiff_with_dims(width: int, height: int) -> bytes:
    """A little-endian baseline TIFF header + IFD claiming ``width`` x ``height`` 8-bit grey."""
    entries = [
        (256, 4, 1, width),  # ImageWidth LONG
        (257, 4, 1, height),  # ImageLength LONG
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression none
        (262, 3, 1, 1),  # BlackIsZero
        (273, 4, 1, 8 + 2 + 12 * 9 + 4),  # StripOffsets: right after the IFD
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, 16),  # StripByteCounts (a lie)
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        packed = struct.pack("<HHI", tag, typ, count)
        packed += struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        ifd += packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00" * 16


def tiff_ifd_loop(valid_tiff: bytes) -> bytes:
    """Make the first IFD's next-IFD pointer point back at itself (infinite page loop)."""
    data = bytearray(valid_tiff)
    first = struct.unpack("<I", data[4:8])[0]
    n = struct.unpack("<H", data[first : first + 2])[0]
    nxt = first + 2 + 12 * n
    data[nxt : nxt + 4] = struct.pack("<I", first)
    return bytes(data)


def flip_bytes(data: bytes, start: int, stop: int, count: int, seed: int) -> bytes:
    """XOR ``count`` random bytes in ``data[start:stop]`` with 0xFF (deterministic)."""
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    for i in rng.integers(start, max(start + 1, stop), count):
        out[int(i)] ^= 0xFF
    return bytes(out)


def jpeg_sof_dims(jpeg: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame size in a baseline JPEG's SOF0 marker."""
    i = jpeg.find(b"\xff\xc0")
    if i < 0:
        raise ValueError("no SOF0 marker")
    out = bytearray(jpeg)
    out[i + 5 : i + 9] = struct.pack(">HH", height, width)
    return bytes(out)


def dicom_bytes(ds: object) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)  # type: ignore[attr-defined]
    return buf.getvalue()


def mr_small():
    """pydicom's bundled MR_small.dcm (64x64 int16 MR, explicit VR little endian)."""
    import pydicom
    from pydicom.data import get_testdata_file

    return pydicom.dcmread(get_testdata_file("MR_small.dcm"))


def patch_element(dicom: bytes, group: int, elem: int, value: bytes) -> bytes:
    """Overwrite the value of an explicit-VR little-endian element with same-length ``value``.

    pydicom refuses to *set* invalid values, so malformed files are made by patching bytes.
    """
    tag = struct.pack("<HH", group, elem)
    i = dicom.find(tag, 132)
    if i < 0:
        raise ValueError(f"tag ({group:04x},{elem:04x}) not found")
    length = struct.unpack("<H", dicom[i + 6 : i + 8])[0]
    if length != len(value):
        raise ValueError(f"value must be {length} bytes")
    return dicom[: i + 8] + value + dicom[i + 8 + length :]


def multiframe_dicom(n_frames: int = 4):
    """MR_small stacked ``n_frames`` times (each frame shifted so frames differ)."""
    ds = mr_small()
    arr = ds.pixel_array
    frames = np.stack([np.roll(arr, 4 * i, axis=1) for i in range(n_frames)]).astype(arr.dtype)
    ds.NumberOfFrames = n_frames
    ds.PixelData = frames.tobytes()
    return ds


def monochrome1_dicom():
    ds = mr_small()
    ds.PhotometricInterpretation = "MONOCHROME1"
    return ds


# --------------------------------------------------------------------------- the corpus


class CorpusSpec(NamedTuple):
    name: str
    expectation: str
    upload_name: str
    make: Callable[[], bytes]


@functools.cache
def _base() -> dict[str, object]:
    """The valid files the corrupt variants start from (built once per process)."""
    brain = fake_brain(128)
    grey = Image.fromarray(brain, "L")
    rgb = Image.fromarray(np.stack([brain, brain, brain], -1), "RGB")
    return {
        "brain": brain,
        "grey": grey,
        "rgb": rgb,
        "png": encode(grey, "PNG"),
        "jpg": encode(rgb, "JPEG", quality=90),
        "tif": encode(grey, "TIFF"),
    }


@functools.cache
def _dcm() -> bytes:
    return dicom_bytes(mr_small())


def _b(key: str) -> Any:
    return _base()[key]


def _multipage(n: int, size: int, seeds: bool = True) -> bytes:
    if seeds:
        pages = [Image.fromarray(fake_brain(size, seed=s), "L") for s in range(n)]
    else:
        pages = [Image.fromarray(np.full((size, size), 100, np.uint8))] * n
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    return buf.getvalue()


def _zip_of_png() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("scan.png", _b("png"))
    return buf.getvalue()


def _alpha_variants() -> tuple[np.ndarray, np.ndarray]:
    brain = _b("brain")
    alpha = np.full_like(brain, 255)
    alpha[:, :16] = 0
    return brain, alpha


def _rgba() -> bytes:
    brain, alpha = _alpha_variants()
    return encode(Image.fromarray(np.dstack([brain, brain, brain, alpha]), "RGBA"), "PNG")


def _la() -> bytes:
    brain, alpha = _alpha_variants()
    return encode(Image.fromarray(np.dstack([brain, alpha]), "LA"), "PNG")


def _palette_transparency() -> bytes:
    return encode(_b("grey").convert("P"), "PNG", transparency=0)


def _dicom_variant(edit: Callable[[object], None]) -> Callable[[], bytes]:
    def make() -> bytes:
        ds = mr_small()
        edit(ds)
        return dicom_bytes(ds)

    return make


def _del_pixels(ds: Any) -> None:
    del ds.PixelData


def _set(**attrs: object) -> Callable[[object], None]:
    def edit(ds: object) -> None:
        for k, v in attrs.items():
            setattr(ds, k, v)

    return edit


def _ihdr_bad_crc() -> bytes:
    data = bytearray(_b("png"))
    data[29] ^= 0xFF  # last CRC byte of IHDR
    return bytes(data)


def _tiff_ifd_past_eof() -> bytes:
    data = bytearray(_b("tif"))
    data[4:8] = struct.pack("<I", 0x7FFFFFF0)
    return bytes(data)


def _ztxt_bomb() -> bytes:
    ztxt = zlib.compress(b"A" * (8 * 1024 * 1024), 9)  # 8 MB of text behind an 8 kB chunk
    png = _b("png")
    return png[:33] + png_chunk(b"zTXt", b"Comment\x00\x00" + ztxt) + png[33:]


def _eps_dos() -> bytes:
    eps_ps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n"
    return b"\xc5\xd0\xd3\xc6" + struct.pack("<IIIIII", 30, len(eps_ps), 0, 0, 0, 0) + b"\xff\xff" + eps_ps


def _random(seed: int, n: int = 4096) -> Callable[[], bytes]:
    return lambda: np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _skimage(name: str, fmt: str) -> Callable[[], bytes]:
    def make() -> bytes:
        from skimage import data as skdata

        return encode(Image.fromarray(getattr(skdata, name)()), fmt)

    return make


def _flat(value: int) -> bytes:
    return encode(Image.fromarray(np.full((128, 128), value, np.uint8)), "PNG")


# --------------------------------------------------------------------------- resource bombs (issue 22)


def _meta_end(dicom: bytes) -> int:
    """End of the file meta group: (0002,0000) UL group length right after the DICM prefix."""
    return 132 + 12 + struct.unpack("<I", dicom[140:144])[0]


def deflated_dicom(pixel_bytes: int | None = None) -> bytes:
    """MR_small as Deflated Explicit VR Little Endian. With ``pixel_bytes`` its PixelData is that
    many zero bytes (a deflate bomb: 360 MB inflate from about 360 kB), built without ever holding
    them: after a full flush a deflate block does not refer back, so one block can be repeated."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    ds = mr_small()
    if pixel_bytes is None:
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        return dicom_bytes(ds)
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    plain = dicom_bytes(ds)
    body = plain[_meta_end(plain) :]
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated = dicom_bytes(ds)
    meta = deflated[: _meta_end(deflated)]
    block_len = 4 << 20
    n_blocks, rest = divmod(pixel_bytes, block_len)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = comp.compress(body + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes))
    head += comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(b"\x00" * block_len) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = comp.compress(b"\x00" * rest) + comp.flush()
    return meta + head + block * n_blocks + tail


def tiff_many_pages(n_pages: int, side: int = 32) -> bytes:
    """A TIFF of ``n_pages`` grey ``side`` x ``side`` pages sharing one strip (about 114 bytes a page)."""
    strip_at = 8
    pixels = bytes(range(256)) * (side * side // 256 + 1)
    pixels = pixels[: side * side]
    ifd_at = strip_at + len(pixels)
    ifd_at += ifd_at % 2
    entry_count = 9
    ifd_size = 2 + 12 * entry_count + 4
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_at) + pixels)
    out += b"\x00" * (ifd_at - len(out))
    for k in range(n_pages):
        here = ifd_at + k * ifd_size
        nxt = here + ifd_size if k + 1 < n_pages else 0
        entries = [
            (256, 4, 1, side),
            (257, 4, 1, side),
            (258, 3, 1, 8),
            (259, 3, 1, 1),
            (262, 3, 1, 1),
            (273, 4, 1, strip_at),
            (277, 3, 1, 1),
            (278, 4, 1, side),
            (279, 4, 1, side * side),
        ]
        out += struct.pack("<H", entry_count)
        for tag, typ, count, value in entries:
            out += struct.pack("<HHI", tag, typ, count)
            out += struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        out += struct.pack("<I", nxt)
    return bytes(out)


def dicom_jpeg_frame(claimed: int, real: int, patch_sof: bool = True) -> bytes:
    """A JPEG Baseline DICOM whose header says ``claimed`` x ``claimed`` but whose frame is bigger.

    ``patch_sof``: the frame is a small JPEG whose SOF says ``real`` x ``real`` (cheap, for the
    tests); otherwise a real ``real`` x ``real`` JPEG is encoded (the bench's 12000^2 case).
    """
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    if patch_sof:
        frame = jpeg_sof_dims(encode(Image.fromarray(fake_brain(64)), "JPEG"), real, real)
    else:
        frame = encode(Image.fromarray(np.full((real, real), 90, np.uint8)), "JPEG", quality=50)
    ds = mr_small()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.Rows = ds.Columns = claimed
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return dicom_bytes(ds)


def dicom_frames(n_frames: int, side: int = 64) -> bytes:
    """An uncompressed ``n_frames``-frame int16 MR of ``side`` x ``side`` (fake brains, each shifted)."""
    ds = mr_small()
    brain = fake_brain(side).astype(np.int16) * 4
    frames = np.stack([np.roll(brain, i % side, axis=1) for i in range(n_frames)])
    ds.Rows = ds.Columns = side
    ds.NumberOfFrames = n_frames
    ds.PixelData = frames.tobytes()
    return dicom_bytes(ds)


def big_brain_png(width: int, height: int) -> bytes:
    """A valid ``width`` x ``height`` PNG of a fake brain (nearest-neighbour blow-up, fast to encode)."""
    import cv2

    side = max(width, height)
    brain = cv2.resize(fake_brain(256), (side, side), interpolation=cv2.INTER_NEAREST)
    top, left = (side - height) // 2, (side - width) // 2
    ok, buf = cv2.imencode(".png", brain[top : top + height, left : left + width], [cv2.IMWRITE_PNG_COMPRESSION, 1])
    assert ok
    return buf.tobytes()


def zip_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _dcm_patched(group: int, elem: int, value: bytes) -> Callable[[], bytes]:
    return lambda: patch_element(_dcm(), group, elem, value)


def _inverted(ds: Any) -> None:
    """RescaleSlope -1 and no VOI window: the slice decodes with dark and bright swapped."""
    ds.RescaleSlope, ds.RescaleIntercept = -1, 0
    for kw in ("WindowCenter", "WindowWidth"):
        if kw in ds:
            delattr(ds, kw)


def corpus_specs() -> list[CorpusSpec]:
    """Every corpus entry, cheap to list (bytes are made only by ``spec.make()``)."""
    specs: list[CorpusSpec] = []

    def add(name: str, make: Callable[[], bytes], expectation: str, upload_name: str | None = None) -> None:
        assert expectation in EXPECTATIONS, expectation
        specs.append(CorpusSpec(name, expectation, upload_name or name, make))

    # ---- valid inputs in every supported flavour
    add("grey8.png", lambda: _b("png"), OK)
    add("rgb.jpg", lambda: _b("jpg"), OK)
    add("grey_progressive.jpg", lambda: encode(_b("grey"), "JPEG", quality=85, progressive=True), OK)
    add("grey16.png", lambda: encode(Image.fromarray(_b("brain").astype(np.uint16) * 257), "PNG"), OK)
    add(
        "grey16.tif",
        lambda: encode(Image.fromarray(_b("brain").astype(np.uint16) * 200), "TIFF", compression="tiff_adobe_deflate"),
        OK,
    )
    add("int16_signed.tif", lambda: encode(Image.fromarray(_b("brain").astype(np.int16) * 8 - 500), "TIFF"), OK)
    add("float32.tif", lambda: encode(Image.fromarray(_b("brain").astype(np.float32) / 255.0 - 0.3, "F"), "TIFF"), OK)
    add("rgb.tif", lambda: encode(_b("rgb"), "TIFF", compression="tiff_lzw"), OK)
    add("rgba.png", _rgba, OK)
    add("grey_alpha.png", _la, OK)
    add("palette.png", lambda: encode(_b("rgb").convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "PNG"), OK)
    add("palette_transparency.png", _palette_transparency, OK)
    # A 1-bit PNG decodes, but a two-level image is a mask or a drawing, not a scan (brain_check.midtone_share).
    add("bilevel.png", lambda: encode(_b("grey").point(lambda v: 255 if v > 100 else 0).convert("1"), "PNG"), NOT_BRAIN)
    add("cmyk.jpg", lambda: encode(_b("rgb").convert("CMYK"), "JPEG"), OK)
    add("grey.bmp", lambda: encode(_b("grey"), "BMP"), OK)
    add("multipage3.tif", lambda: _multipage(3, 96), OK)
    add("min_side_32.png", lambda: encode(_b("grey").resize((32, 32)), "PNG"), OK)
    add("mr_small.dcm", _dcm, OK)
    add("mr_multiframe4.dcm", lambda: dicom_bytes(multiframe_dicom(4)), OK)
    add("mr_monochrome1.dcm", lambda: dicom_bytes(monochrome1_dicom()), OK)
    add("mr_no_preamble.dcm", lambda: _dcm()[132:], OK)  # old style: no 128-byte preamble, no DICM
    add("mr_bad_window.dcm", lambda: patch_element(_dcm(), 0x0028, 0x1050, b"abc "), OK)  # WindowCenter
    add("mr_bad_spacing.dcm", _dicom_variant(_set(PixelSpacing="0.5")), OK)  # VM 1 instead of 2
    # wrong or missing extensions: content decides, not the name
    add("png_named.dcm", lambda: _b("png"), OK)
    add("jpeg_named.tif", lambda: _b("jpg"), OK)
    add("dicom_named.png", _dcm, OK)
    add("png_no_extension", lambda: _b("png"), OK)
    add("UPPER.PNG", lambda: _b("png"), OK)
    add("trailing_garbage.png", lambda: _b("png") + b"\x00garbage" * 100, OK)
    # hostile names
    add("säule_脑.png", lambda: _b("png"), OK)
    add("..%2F..%2Fx.png", lambda: _b("png"), OK, upload_name="../../x.png")

    # ---- decodes, but is not a brain (the pipeline's brain check must catch these)
    add("camera.png", _skimage("camera", "PNG"), NOT_BRAIN)
    add("astronaut.jpg", _skimage("astronaut", "JPEG"), NOT_BRAIN)
    add("blank_zero.png", lambda: _flat(0), NOT_BRAIN)
    add("blank_white.png", lambda: _flat(255), NOT_BRAIN)
    add(
        "noise.png",
        lambda: encode(Image.fromarray(np.random.default_rng(1).integers(0, 256, (128, 128), dtype=np.uint8)), "PNG"),
        NOT_BRAIN,
    )

    # ---- empty / random / non-image content
    add("empty.png", lambda: b"", REJECTED)
    add("empty.dcm", lambda: b"", REJECTED)
    add("empty.jpg", lambda: b"", REJECTED)
    for seed, ext in enumerate(("png", "jpg", "dcm", "tif")):
        add(f"random.{ext}", _random(seed), REJECTED)
    add("nul_bytes.png", lambda: b"\x00" * 2048, REJECTED)
    add("nul_bytes.dcm", lambda: b"\x00" * 2048, REJECTED)
    add("text.png", lambda: b"This is not an image, it is a note about the patient.\n" * 20, REJECTED)
    add("json.dcm", lambda: b'{"PatientName": "Doe^John", "Rows": 512}\n', REJECTED)
    add(
        "document.pdf",
        lambda: b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
        REJECTED,
    )
    add("pdf_named.png", lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n%%EOF", REJECTED)
    add("page.html", lambda: b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>", REJECTED)
    add("html_named.jpg", lambda: b"<html><script>alert('x')</script></html>", REJECTED)
    add("svg_named.png", lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>', REJECTED)
    add("archive_named.png", _zip_of_png, REJECTED)
    add("animated.gif", lambda: encode(_b("grey"), "GIF"), REJECTED)  # not a supported format
    add("eps_binary_named.png", _eps_dos, REJECTED)  # Pillow would hand this to Ghostscript

    # ---- truncated and corrupt images
    add("png_signature_only.png", lambda: _b("png")[:8], REJECTED)
    add("png_truncated_header.png", lambda: _b("png")[:40], REJECTED)
    add("png_truncated_half.png", lambda: _b("png")[: len(_b("png")) // 2], REJECTED)
    add("png_bad_ihdr_crc.png", _ihdr_bad_crc, REJECTED)
    add("png_flipped_idat.png", lambda: flip_bytes(_b("png"), 60, len(_b("png")) - 20, 12, seed=3), EITHER)
    add("jpeg_soi_only.jpg", lambda: b"\xff\xd8", REJECTED)
    add("jpeg_truncated_half.jpg", lambda: _b("jpg")[: len(_b("jpg")) // 2], REJECTED)
    add(
        "jpeg_flipped_scan.jpg",
        lambda: flip_bytes(_b("jpg"), len(_b("jpg")) // 2, len(_b("jpg")) - 4, 8, seed=4),
        EITHER,
    )
    add("jpeg_zero_dims.jpg", lambda: jpeg_sof_dims(_b("jpg"), 0, 0), REJECTED)
    add("tiff_header_only.tif", lambda: _b("tif")[:8], REJECTED)
    add("tiff_truncated_half.tif", lambda: _b("tif")[: len(_b("tif")) // 2], REJECTED)
    add("tiff_ifd_past_eof.tif", _tiff_ifd_past_eof, REJECTED)
    add("tiff_ifd_loop.tif", lambda: tiff_ifd_loop(_b("tif")), EITHER)  # page 1 is fine; must not hang
    add("dicom_truncated_pixels.dcm", lambda: _dcm()[: len(_dcm()) - 2000], REJECTED)
    add("dicom_truncated_header.dcm", lambda: _dcm()[:200], REJECTED)
    add("dicom_magic_then_garbage.dcm", lambda: b"\x00" * 128 + b"DICM" + _random(9, 2048)(), REJECTED)
    add("dicom_no_pixel_data.dcm", _dicom_variant(_del_pixels), REJECTED)
    add("dicom_zero_rows.dcm", _dicom_variant(_set(Rows=0)), REJECTED)

    # ---- size attacks
    add("one_pixel.png", lambda: encode(Image.fromarray(np.full((1, 1), 128, np.uint8)), "PNG"), REJECTED)
    add("thin_8x512.png", lambda: encode(Image.fromarray(np.full((8, 512), 128, np.uint8)), "PNG"), REJECTED)
    # 10000 x 10000 = 100 MP > Settings.max_pixels (40 MP): a complete, valid PNG of 100 kB
    add("huge_10000x10000.png", lambda: png_with_ihdr(10000, 10000, zero_png_stream(10000, 10000)), REJECTED)
    # 7000 x 7000 = 49 MP: over our 40 MP limit but under Pillow's own bomb warning (89 MP)
    add("bomb_7000x7000_ihdr.png", lambda: png_with_ihdr(7000, 7000), REJECTED)
    add("bomb_100000x100000_ihdr.png", lambda: png_with_ihdr(100000, 100000), REJECTED)
    add("bomb_65500x65500.jpg", lambda: jpeg_sof_dims(_b("jpg"), 65500, 65500), REJECTED)
    add("bomb_100000x100000.tif", lambda: tiff_with_dims(100000, 100000), REJECTED)
    add("bomb_65535x65535.dcm", _dicom_variant(_set(Rows=65535, Columns=65535)), REJECTED)
    add("dicom_100000_frames.dcm", _dicom_variant(_set(NumberOfFrames=100000)), REJECTED)
    add("tiff_300_pages.tif", lambda: _multipage(300, 32, seeds=False), REJECTED)
    add("ztxt_bomb.png", _ztxt_bomb, EITHER)  # Pillow caps text chunks; pixels may still decode

    # ---- resource bombs and decoder trust, second round (issue 22, items 1-6, 8, 9)
    add("strip_32x60000.png", lambda: png_with_ihdr(32, 60000, zero_png_stream(32, 60000)), REJECTED)  # 1
    add("mr_deflated.dcm", deflated_dicom, OK)  # 2: a well-behaved deflated file still decodes
    add("dicom_deflate_bomb_360MB.dcm", lambda: deflated_dicom(360 << 20), REJECTED)  # 2: ~360 kB upload
    add("dicom_jpeg_12000_in_64.dcm", lambda: dicom_jpeg_frame(64, 12000), REJECTED)  # 4
    add("tiff_50000_pages.tif", lambda: tiff_many_pages(50_000), REJECTED)  # 6: 5.7 MB, never walked
    add("dicom_columns_63.dcm", _dcm_patched(0x0028, 0x0011, struct.pack("<H", 63)), REJECTED)  # 8: sheared
    add("dicom_rows_48.dcm", _dcm_patched(0x0028, 0x0010, struct.pack("<H", 48)), REJECTED)  # 8: cut
    add("dicom_spacing_1e200.dcm", _dicom_variant(_set(PixelSpacing=["1e200", "1e200"])), OK)  # 9: dropped
    add("dicom_spacing_1e6.dcm", _dicom_variant(_set(PixelSpacing=[1e6, 1e6])), OK)  # 9: dropped
    add("dicom_slope_minus1.dcm", _dicom_variant(_inverted), OK)  # 9: flagged
    add("dicom_slope_1e30.dcm", _dicom_variant(_set(RescaleSlope="1e30")), OK)  # 9: dropped
    add("dicom_window_1e30.dcm", _dicom_variant(_set(WindowCenter="1e30", WindowWidth="1e30")), OK)  # 9: dropped
    add("dicom_seg.dcm", _dicom_variant(_set(SOPClassUID="1.2.840.10008.5.1.4.1.1.66.4", Modality="SEG")), REJECTED)
    return specs


def bomb_specs() -> list[CorpusSpec]:
    """The full-size inputs of issue 22 for ``bench/hostile_memory.py`` (too big or slow for the
    unit tests, which use the small versions above). Expectations are for the fixed code."""
    blank40 = lambda: png_with_ihdr(6324, 6324, zero_png_stream(6324, 6324))  # noqa: E731
    return [
        CorpusSpec(
            "strip_32x60000.png",
            REJECTED,
            "strip_32x60000.png",
            lambda: png_with_ihdr(32, 60000, zero_png_stream(32, 60000)),
        ),
        CorpusSpec(
            "strip_32x80000.png",
            REJECTED,
            "strip_32x80000.png",
            lambda: png_with_ihdr(32, 80000, zero_png_stream(32, 80000)),
        ),
        CorpusSpec("brain_6324x6324_40MP.png", OK, "brain_40MP.png", lambda: big_brain_png(6324, 6324)),
        CorpusSpec("brain_3162x12648_4to1.png", OK, "brain_4to1.png", lambda: big_brain_png(3162, 12648)),
        CorpusSpec("dicom_deflate_bomb_2900MB.dcm", REJECTED, "deflate.dcm", lambda: deflated_dicom(2900 << 20)),
        CorpusSpec(
            "dicom_jpeg_12000_in_512.dcm", REJECTED, "jpeg.dcm", lambda: dicom_jpeg_frame(512, 12000, patch_sof=False)
        ),
        CorpusSpec("dicom_250_frames_256.dcm", OK, "frames.dcm", lambda: dicom_frames(250, 256)),
        CorpusSpec("tiff_50000_pages.tif", REJECTED, "pages.tif", lambda: tiff_many_pages(50_000)),
        CorpusSpec(
            "zip_40_copies_of_a_40MP_brain.zip",
            OK,
            "brains40.zip",
            lambda: zip_of(dict.fromkeys((f"glioma/{i}.png" for i in range(40)), big_brain_png(6324, 6324))),
        ),
        CorpusSpec(
            "zip_40_blank_40MP.zip",
            REJECTED,
            "blank40.zip",
            lambda: zip_of({f"glioma/{i}.png": blank40() for i in range(40)}),
        ),
    ]


# --------------------------------------------------------------------------- masks (issue 22, item 7)


def _mask_img(size: int = 64) -> Image.Image:
    m = np.zeros((size, size), np.uint8)
    m[size // 4 : size // 2, size // 4 : size // 2] = 255
    return Image.fromarray(m)


def _pcx_bomb() -> bytes:
    """A PCX whose header claims 65535 x 65535 (xmax, ymax at bytes 8-11)."""
    data = bytearray(encode(_mask_img(), "PCX"))
    data[8:12] = struct.pack("<HH", 65534, 65534)
    return bytes(data)


def bilevel_png(width: int, height: int) -> bytes:
    """A complete, valid all-black 1-bit PNG of ``width`` x ``height`` (900 MP at 30000^2 in ~0.9 MB)."""
    row = b"\x00" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return png_with_ihdr(width, height, idat, bit_depth=1)


EPS_TEXT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n(/tmp/pwned) (w) file closefile\nshowpage\n"


def mask_specs() -> list[CorpusSpec]:
    """Mask files for :func:`triage.io.read_mask_bytes`: ``ok`` (decodes to one grey frame) or
    ``rejected`` (InvalidScanError). Every hostile one is named ``.png``, as an upload would be."""
    specs: list[CorpusSpec] = []

    def add(name: str, make: Callable[[], bytes], expectation: str) -> None:
        specs.append(CorpusSpec(name, expectation, name, make))

    add("mask.png", lambda: encode(_mask_img(), "PNG"), OK)
    add("mask_tif.png", lambda: encode(_mask_img(), "TIFF", compression="tiff_adobe_deflate"), OK)
    add("mask_bmp.png", lambda: encode(_mask_img(), "BMP"), OK)
    add("mask_jpeg.png", lambda: encode(_mask_img(), "JPEG", quality=95), OK)
    add("mask_bilevel.png", lambda: encode(_mask_img().convert("1"), "PNG"), OK)
    add("eps_text.png", lambda: EPS_TEXT, REJECTED)  # Pillow's EPS plugin would run Ghostscript
    add("eps_binary.png", _eps_dos, REJECTED)
    add("pcx.png", lambda: encode(_mask_img(), "PCX"), REJECTED)
    add("pcx_bomb_65535.png", _pcx_bomb, REJECTED)
    add("tga.png", lambda: encode(_mask_img(), "TGA"), REJECTED)
    add("spider.png", lambda: encode(_mask_img().convert("F"), "SPIDER"), REJECTED)
    add("gif.png", lambda: encode(_mask_img(), "GIF"), REJECTED)
    add("webp.png", lambda: encode(_mask_img(), "WEBP"), REJECTED)
    add("dicom.png", _dcm, REJECTED)
    add("text.png", lambda: b"tumour: left frontal\n", REJECTED)
    add("empty.png", lambda: b"", REJECTED)
    add("random.png", _random(11), REJECTED)
    add("bomb_30000x30000.png", lambda: bilevel_png(30000, 30000), REJECTED)
    add("bomb_30000x30000_ihdr.png", lambda: png_with_ihdr(30000, 30000), REJECTED)
    add("bomb_30000x30000.tif", lambda: tiff_with_dims(30000, 30000), REJECTED)
    add("bomb_65500x65500.jpg", lambda: jpeg_sof_dims(encode(_mask_img(), "JPEG"), 65500, 65500), REJECTED)
    add("strip_32x60000.png", lambda: png_with_ihdr(32, 60000), REJECTED)
    add("multipage3.png", lambda: _multipage(3, 64), REJECTED)  # one mask per slice
    add("truncated.png", lambda: encode(_mask_img(), "PNG")[:60], REJECTED)
    return specs


def build_corpus(dest: Path) -> list[CorpusItem]:
    """Write the hostile corpus into ``dest`` and return ``(path, expectation, upload_name)`` items."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    items = []
    for spec in corpus_specs():
        path = dest / spec.name
        path.write_bytes(spec.make())
        items.append(CorpusItem(path, spec.expectation, spec.upload_name))
    return items


def main(argv: list[str]) -> int:
    dest = Path(argv[1]) if len(argv) > 1 else Path("hostile_corpus")
    for item in build_corpus(dest):
        print(f"{item.expectation:10s} {item.path.stat().st_size:>9d}  {item.upload_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
