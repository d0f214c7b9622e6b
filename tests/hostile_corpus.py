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
The whole corpus takes well under a second to build and about 1 MB on disk.
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from pathlib import Path
from typing import NamedTuple

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


def png_with_ihdr(width: int, height: int, idat: bytes | None = None, bit_depth: int = 8,
                  color_type: int = 0) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height``; IDAT is ``idat`` (default: a tiny stream)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    if idat is None:
        idat = zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def zero_png_stream(width: int, height: int) -> bytes:
    """Complete, valid zlib IDAT data for an all-black 8-bit grey image, made row by row."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    return b"".join(parts)


def tiff_with_dims(width: int, height: int) -> bytes:
    """A little-endian baseline TIFF header + IFD claiming ``width`` x ``height`` 8-bit grey."""
    entries = [
        (256, 4, 1, width),    # ImageWidth LONG
        (257, 4, 1, height),   # ImageLength LONG
        (258, 3, 1, 8),        # BitsPerSample
        (259, 3, 1, 1),        # Compression none
        (262, 3, 1, 1),        # BlackIsZero
        (273, 4, 1, 8 + 2 + 12 * 9 + 4),  # StripOffsets: right after the IFD
        (277, 3, 1, 1),        # SamplesPerPixel
        (278, 4, 1, height),   # RowsPerStrip
        (279, 4, 1, 16),       # StripByteCounts (a lie)
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
    n = struct.unpack("<H", data[first:first + 2])[0]
    nxt = first + 2 + 12 * n
    data[nxt:nxt + 4] = struct.pack("<I", first)
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
    out[i + 5:i + 9] = struct.pack(">HH", height, width)
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
    length = struct.unpack("<H", dicom[i + 6:i + 8])[0]
    if length != len(value):
        raise ValueError(f"value must be {length} bytes")
    return dicom[:i + 8] + value + dicom[i + 8 + length:]


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


def build_corpus(dest: Path) -> list[CorpusItem]:
    """Write the hostile corpus into ``dest`` and return ``(path, expectation, upload_name)`` items."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    items: list[CorpusItem] = []

    def add(name: str, data: bytes, expectation: str, upload_name: str | None = None) -> None:
        assert expectation in EXPECTATIONS, expectation
        path = dest / name
        path.write_bytes(data)
        items.append(CorpusItem(path, expectation, upload_name or name))

    brain = fake_brain(128)
    grey = Image.fromarray(brain, "L")
    rgb = Image.fromarray(np.stack([brain, brain, brain], -1), "RGB")
    png = encode(grey, "PNG")
    jpg = encode(rgb, "JPEG", quality=90)
    tif = encode(grey, "TIFF")
    dcm = dicom_bytes(mr_small())

    # ---- valid inputs in every supported flavour (expectation ok)
    add("grey8.png", png, OK)
    add("rgb.jpg", jpg, OK)
    add("grey_progressive.jpg", encode(grey, "JPEG", quality=85, progressive=True), OK)
    add("grey16.png", encode(Image.fromarray(brain.astype(np.uint16) * 257), "PNG"), OK)
    add("grey16.tif", encode(Image.fromarray(brain.astype(np.uint16) * 200), "TIFF",
                             compression="tiff_adobe_deflate"), OK)
    add("float32.tif", encode(Image.fromarray(brain.astype(np.float32) / 255.0 - 0.3, "F"), "TIFF"), OK)
    add("rgb.tif", encode(rgb, "TIFF", compression="tiff_lzw"), OK)
    alpha = np.full_like(brain, 255)
    alpha[:, :16] = 0
    add("rgba.png", encode(Image.fromarray(np.dstack([brain, brain, brain, alpha]), "RGBA"), "PNG"), OK)
    add("grey_alpha.png", encode(Image.fromarray(np.dstack([brain, alpha]), "LA"), "PNG"), OK)
    add("palette.png", encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "PNG"), OK)
    pal_t = grey.convert("P")
    pal_t.info["transparency"] = 0
    add("palette_transparency.png", encode(pal_t, "PNG", transparency=0), OK)
    add("bilevel.png", encode(grey.point(lambda v: 255 if v > 100 else 0).convert("1"), "PNG"), OK)
    add("cmyk.jpg", encode(rgb.convert("CMYK"), "JPEG"), OK)
    add("grey.bmp", encode(grey, "BMP"), OK)
    pages = [Image.fromarray(fake_brain(96, seed=s), "L") for s in range(3)]
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    add("multipage3.tif", buf.getvalue(), OK)
    add("min_side_32.png", encode(grey.resize((32, 32)), "PNG"), OK)
    add("mr_small.dcm", dcm, OK)
    add("mr_multiframe4.dcm", dicom_bytes(multiframe_dicom(4)), OK)
    add("mr_monochrome1.dcm", dicom_bytes(monochrome1_dicom()), OK)
    add("mr_no_preamble.dcm", dcm[132:], OK)  # old-style file: no 128-byte preamble, no DICM
    add("mr_bad_window.dcm", patch_element(dcm, 0x0028, 0x1050, b"abc "), OK)  # WindowCenter 'abc'
    bad_spacing = mr_small()
    bad_spacing.PixelSpacing = "0.5"  # VM 1 instead of 2
    add("mr_bad_spacing.dcm", dicom_bytes(bad_spacing), OK)
    # wrong or missing extensions: content decides, not the name
    add("png_named.dcm", png, OK)
    add("jpeg_named.tif", jpg, OK)
    add("dicom_named.png", dcm, OK)
    add("png_no_extension", png, OK)
    add("UPPER.PNG", png, OK)
    add("trailing_garbage.png", png + b"\x00garbage" * 100, OK)
    # hostile names
    add("säule_脑.png", png, OK)
    add("..%2F..%2Fx.png", png, OK, upload_name="../../x.png")

    # ---- decodes, but not a brain (the pipeline's brain check must catch these)
    from skimage import data as skdata

    add("camera.png", encode(Image.fromarray(skdata.camera()), "PNG"), NOT_BRAIN)
    add("astronaut.jpg", encode(Image.fromarray(skdata.astronaut()), "JPEG", quality=85), NOT_BRAIN)
    add("blank_zero.png", encode(Image.fromarray(np.zeros((128, 128), np.uint8)), "PNG"), NOT_BRAIN)
    add("blank_white.png", encode(Image.fromarray(np.full((128, 128), 255, np.uint8)), "PNG"), NOT_BRAIN)
    noise = np.random.default_rng(1).integers(0, 256, (128, 128), dtype=np.uint8)
    add("noise.png", encode(Image.fromarray(noise), "PNG"), NOT_BRAIN)

    # ---- empty / random / non-image content (rejected)
    add("empty.png", b"", REJECTED)
    add("empty.dcm", b"", REJECTED)
    add("empty.jpg", b"", REJECTED)
    rng = np.random.default_rng(7)
    for ext in ("png", "jpg", "dcm", "tif"):
        add(f"random.{ext}", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), REJECTED)
    add("nul_bytes.png", b"\x00" * 2048, REJECTED)
    add("nul_bytes.dcm", b"\x00" * 2048, REJECTED)
    add("text.png", b"This is not an image, it is a note about the patient.\n" * 20, REJECTED)
    add("json.dcm", b'{"PatientName": "Doe^John", "Rows": 512}\n', REJECTED)
    add("document.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
        REJECTED)
    add("pdf_named.png", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n%%EOF", REJECTED)
    add("page.html", b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>", REJECTED)
    add("html_named.jpg", b"<html><script>alert('x')</script></html>", REJECTED)
    add("svg_named.png", b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>', REJECTED)
    zbuf = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(zbuf, "w") as zf:
        zf.writestr("scan.png", png)
    add("archive_named.png", zbuf.getvalue(), REJECTED)
    add("animated.gif", encode(grey, "GIF"), REJECTED)  # not a supported format
    eps_ps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n"
    eps_dos = b"\xc5\xd0\xd3\xc6" + struct.pack("<IIIIII", 30, len(eps_ps), 0, 0, 0, 0) + b"\xff\xff" + eps_ps
    add("eps_binary_named.png", eps_dos, REJECTED)  # would launch Ghostscript if Pillow opened it

    # ---- truncated and corrupt images
    add("png_signature_only.png", png[:8], REJECTED)
    add("png_truncated_header.png", png[:40], REJECTED)
    add("png_truncated_half.png", png[: len(png) // 2], REJECTED)
    ihdr_bad_crc = bytearray(png)
    ihdr_bad_crc[29] ^= 0xFF  # last CRC byte of IHDR
    add("png_bad_ihdr_crc.png", bytes(ihdr_bad_crc), REJECTED)
    add("png_flipped_idat.png", flip_bytes(png, 60, len(png) - 20, 12, seed=3), EITHER)
    add("jpeg_soi_only.jpg", b"\xff\xd8", REJECTED)
    add("jpeg_truncated_half.jpg", jpg[: len(jpg) // 2], REJECTED)
    add("jpeg_flipped_scan.jpg", flip_bytes(jpg, len(jpg) // 2, len(jpg) - 4, 8, seed=4), EITHER)
    add("jpeg_zero_dims.jpg", jpeg_sof_dims(jpg, 0, 0), REJECTED)
    add("tiff_header_only.tif", tif[:8], REJECTED)
    add("tiff_truncated_half.tif", tif[: len(tif) // 2], REJECTED)
    bad_ifd = bytearray(tif)
    bad_ifd[4:8] = struct.pack("<I", 0x7FFFFFF0)
    add("tiff_ifd_past_eof.tif", bytes(bad_ifd), REJECTED)
    add("tiff_ifd_loop.tif", tiff_ifd_loop(tif), EITHER)  # page 1 is fine; the loop must not hang
    add("dicom_truncated_pixels.dcm", dcm[: len(dcm) - 2000], REJECTED)
    add("dicom_truncated_header.dcm", dcm[:200], REJECTED)
    add("dicom_magic_then_garbage.dcm",
        b"\x00" * 128 + b"DICM" + rng.integers(0, 256, 2048, dtype=np.uint8).tobytes(), REJECTED)
    no_pixels = mr_small()
    del no_pixels.PixelData
    add("dicom_no_pixel_data.dcm", dicom_bytes(no_pixels), REJECTED)
    zero_rows = mr_small()
    zero_rows.Rows = 0
    add("dicom_zero_rows.dcm", dicom_bytes(zero_rows), REJECTED)

    # ---- size attacks
    add("one_pixel.png", encode(Image.fromarray(np.full((1, 1), 128, np.uint8)), "PNG"), REJECTED)
    add("thin_8x512.png", encode(Image.fromarray(np.full((8, 512), 128, np.uint8)), "PNG"), REJECTED)
    # 10000 x 10000 = 100 MP > Settings.max_pixels (40 MP): complete and valid, 100 kB on disk
    add("huge_10000x10000.png", png_with_ihdr(10000, 10000, zero_png_stream(10000, 10000)), REJECTED)
    # 7000 x 7000 = 49 MP: over our 40 MP limit but under Pillow's own bomb warning (89 MP)
    add("bomb_7000x7000_ihdr.png", png_with_ihdr(7000, 7000), REJECTED)
    add("bomb_100000x100000_ihdr.png", png_with_ihdr(100000, 100000), REJECTED)
    add("bomb_65500x65500.jpg", jpeg_sof_dims(jpg, 65500, 65500), REJECTED)
    add("bomb_100000x100000.tif", tiff_with_dims(100000, 100000), REJECTED)
    bomb_dcm = mr_small()
    bomb_dcm.Rows, bomb_dcm.Columns = 65535, 65535
    add("bomb_65535x65535.dcm", dicom_bytes(bomb_dcm), REJECTED)
    many_frames = mr_small()
    many_frames.NumberOfFrames = 100000
    add("dicom_100000_frames.dcm", dicom_bytes(many_frames), REJECTED)
    small = Image.fromarray(np.full((32, 32), 100, np.uint8))
    buf = io.BytesIO()
    small.save(buf, format="TIFF", save_all=True, append_images=[small] * 299)
    add("tiff_300_pages.tif", buf.getvalue(), REJECTED)
    ztxt = zlib.compress(b"A" * (8 * 1024 * 1024), 9)  # 8 MB of text behind a 8 kB chunk
    ztxt_png = png[:33] + png_chunk(b"zTXt", b"Comment\x00\x00" + ztxt) + png[33:]
    add("ztxt_bomb.png", ztxt_png, EITHER)  # Pillow caps text chunks; pixels may still decode

    return items


def main(argv: list[str]) -> int:
    dest = Path(argv[1]) if len(argv) > 1 else Path("hostile_corpus")
    for item in build_corpus(dest):
        print(f"{item.expectation:10s} {item.path.stat().st_size:>9d}  {item.upload_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
