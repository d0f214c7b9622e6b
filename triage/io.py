"""Decode uploaded bytes into :class:`Scan` objects, refusing anything unsafe or unreadable.

Supported: PNG, JPEG, TIFF (8/16-bit, signed, float, grey/RGB/RGBA/palette, multi-page), BMP
and DICOM (rescale slope/intercept, VOI window, MONOCHROME1 inversion, PALETTE COLOR,
PixelSpacing, multi-frame incl. enhanced per-frame functional groups).
The format is recognised from the bytes, never from the file name; only Pillow's PNG, JPEG,
TIFF and BMP plugins ever see upload bytes. Sizes are checked from headers before decoding.
Colour sources record ``meta["colorfulness"]`` (for the pipeline's brain check); DICOM patient
identifiers reach ``meta`` only with ``Settings.allow_phi``. Scan names are :func:`safe_name`.
Every failure raises :class:`InvalidScanError` with a sentence a radiologist can act on; no
other exception type escapes :func:`read_scans`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from triage.config import Settings, get_settings
from triage.errors import InvalidScanError
from triage.records import Scan

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom", ""}
MAX_FRAMES = 256
_Frame = tuple[np.ndarray, int | None, dict]  # (uint8 pixels, frame index, per-frame meta)
# DICOM attributes that are safe to keep; identifiers are added only with allow_phi.
_SAFE_DICOM_TAGS = (
    "Modality",
    "SeriesDescription",
    "StudyDescription",
    "BodyPartExamined",
    "MRAcquisitionType",
    "SliceThickness",
    "MagneticFieldStrength",
    "Manufacturer",
)
_PHI_DICOM_TAGS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyDate",
    "InstitutionName",
    "ReferringPhysicianName",
)


def content_id(data: bytes) -> str:
    """Stable scan id: the SHA-256 of the file's bytes (hex, first 32 chars)."""
    return hashlib.sha256(data).hexdigest()[:32]


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def safe_name(name: object, default: str = "upload") -> str:
    """A display-safe file name: the last path component, no control characters.

    Uploads carry a client-chosen name (``../../x.png``, ``C:\\tmp\\x.png``, ``a\\nb.png``);
    only its base name is kept so it can never act as a path. Empty results become ``default``.
    """
    text = _CONTROL_CHARS.sub("", str(name or ""))
    text = re.split(r"[/\\]", text)[-1].strip()
    if text in ("", ".", ".."):
        return default
    if len(text) > 200:  # keep the extension, shorten the stem
        stem, dot, ext = text.rpartition(".")
        text = (stem[: 200 - len(ext) - 1] + dot + ext) if dot and len(ext) <= 10 else text[:200]
    return text


# Magic numbers of the formats handed to Pillow (and of formats refused by name).
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
    (b"BM", "bmp"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
)
_PIL_KINDS = {"png", "jpeg", "tiff", "bmp"}
# Pillow plugins allowed to open uploads. Everything else (EPS -> Ghostscript, PSD, ICO,
# FITS...) is refused before any plugin code runs on attacker-chosen bytes.
_PIL_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")  # JPEG also opens MPO (camera multi-picture)
DICOM_SUFFIXES = {".dcm", ".dicom", ".ima", ""}
SUPPORTED = "PNG, JPEG, TIFF, BMP or DICOM"


def sniff_format(data: bytes) -> str:
    """Guess the content type from the bytes only (the file name is never trusted)."""
    if data[128:132] == b"DICM":
        return "dicom"
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    head = data[:1024].lstrip()
    if head.startswith(b"%PDF"):
        return "pdf"
    lower = head[:256].lower()
    if lower.startswith((b"<!doctype html", b"<html")) or b"<html" in lower:
        return "html"
    if data.startswith(b"PK\x03\x04"):
        return "zip"
    try:
        data[:2048].decode("utf-8")
        if b"\x00" not in data[:2048]:
            return "text"
    except UnicodeDecodeError:
        pass
    return "unknown"


def _looks_like_raw_dicom(data: bytes) -> bool:
    """A DICOM data set without the 128-byte preamble starts with a group 0002/0008 tag."""
    return data[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


_PERCENTILE_SAMPLE = 2_000_000


def to_uint8(arr: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """Scale any numeric 2D array to uint8 [0, 255].

    With ``window=(center, width)`` a linear DICOM-style window is applied; otherwise uint8
    passes through and other dtypes are stretched between the 0.5 and 99.5 percentiles
    (estimated on a regular subsample of at most ~2 M pixels for big images). NaN and
    infinities count as background (the lowest finite value).
    """
    arr = np.asarray(arr)
    if arr.dtype == np.uint8 and window is None:
        return arr
    a = arr.astype(np.float32)  # always a copy: the arithmetic below works in place
    finite = np.isfinite(a)
    if not finite.all():
        a[~finite] = float(a[finite].min()) if finite.any() else 0.0
    if window is not None:
        center, width = float(window[0]), float(window[1])
        lo, hi = center - width / 2.0, center + width / 2.0
    elif a.size:
        sample = a.ravel()[:: max(1, a.size // _PERCENTILE_SAMPLE)]
        lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
        if hi <= lo:
            lo, hi = float(a.min()), float(a.max())
    else:
        lo, hi = 0.0, 1.0
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return np.zeros(a.shape, np.uint8)
    a -= np.float32(lo)
    a /= np.float32(hi - lo)
    np.clip(a, 0.0, 1.0, out=a)
    a *= np.float32(255.0)
    a += np.float32(0.5)
    return a.astype(np.uint8)


def colorfulness(rgb: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003) colourfulness of an (H, W, 3) 0-255 RGB array.

    0 for grey images stored as RGB, ~10-20 for pseudo-colour MRI composites, 40+ for
    photographs. Big images are measured on a regular subsample of about 1 M pixels.
    """
    step = max(1, math.ceil(math.sqrt(rgb.shape[0] * rgb.shape[1] / 1_000_000)))
    sub = np.asarray(rgb[::step, ::step, :3], dtype=np.float32)
    r, g, b = sub[..., 0], sub[..., 1], sub[..., 2]
    rg = r - g
    yb = 0.5 * (r + g) - b
    return float(math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean()))


def _to_grey(img: Image.Image) -> tuple[np.ndarray, float | None]:
    """A Pillow frame -> (uint8 grey pixels, colourfulness or None for non-colour sources)."""
    mode = img.mode
    if mode.startswith("I") or mode == "F":  # I, I;16, I;16B, I;16L, I;16N, I;16S, I;32...
        arr = np.asarray(img)
        if arr.ndim == 3:
            arr = arr[..., 0]
        return to_uint8(arr), None
    if mode in ("1", "L"):
        return np.asarray(img.convert("L")), None
    if mode in ("P", "PA"):
        img = img.convert("RGBA") if ("transparency" in img.info or mode == "PA") else img.convert("RGB")
        mode = img.mode
    if mode in ("LA", "La", "RGBA", "RGBa"):
        # Composite over black: transparent areas become background, not white. (Pillow does
        # it in 8 bits, without the 16 bytes/pixel float copies a numpy version needs.)
        black = Image.new("RGBA", img.size, (0, 0, 0, 255))
        rgb = Image.alpha_composite(black, img.convert("RGBA")).convert("RGB")
        if mode in ("LA", "La"):
            return np.asarray(rgb.convert("L")), None
    else:  # RGB, CMYK, YCbCr, LAB, HSV...
        rgb = img if mode == "RGB" else img.convert("RGB")
    return np.asarray(rgb.convert("L")), colorfulness(np.asarray(rgb))


def check_dims(h: int, w: int, settings: Settings) -> None:
    """InvalidScanError unless an ``h`` x ``w`` image is within the pixel, side and aspect limits
    (checked on headers, before any pixel is decoded)."""
    if h * w > settings.max_pixels:
        raise InvalidScanError(
            f"image is {w}x{h} pixels, over the limit of {settings.max_pixels:,} pixels "
            "(possible decompression bomb); export the slice at a normal size"
        )
    if min(h, w) < settings.min_side:
        raise InvalidScanError(f"image is only {w}x{h} pixels; at least {settings.min_side} px per side is needed")
    if max(h, w) > settings.max_aspect_ratio * min(h, w):
        # Checked on the header, before decoding: a 32x60000 strip is 1.9 MP but its padded square
        # is 3.6 G pixels (a 5.8 kB PNG once made an upload allocate 13.7 GB).
        raise InvalidScanError(
            f"image is {w}x{h} pixels, an aspect ratio of {max(h, w) / min(h, w):.0f}:1; "
            f"a slice is at most {settings.max_aspect_ratio:.0f}:1"
        )


def _total_budget(settings: Settings) -> int:
    """Pixels allowed across all frames of one file (bounds memory for multi-frame bombs)."""
    return 2 * settings.max_pixels


def _check_total(total: int, n_frames: int, settings: Settings) -> None:
    if total > _total_budget(settings):
        raise InvalidScanError(
            f"file has {n_frames} frames totalling {total:,} pixels, over the limit of "
            f"{_total_budget(settings):,}; split the series into smaller files"
        )


def _bomb_message(exc: Exception, settings: Settings) -> str:
    m = re.search(r"\((\d+) pixels\)", str(exc))
    size = f" ({int(m.group(1)):,} pixels)" if m else ""
    return (
        f"image is too large to decode safely{size}, over the limit of {settings.max_pixels:,} "
        "pixels (possible decompression bomb); export the slice at a normal size"
    )


def _is_reduced_resolution(frame: Image.Image) -> bool:
    """TIFF thumbnail / pyramid pages (NewSubfileType bit 0) are not slices of their own."""
    tags = getattr(frame, "tag_v2", None)
    try:
        return bool(tags is not None and int(tags.get(254, 0)) & 1)
    except (TypeError, ValueError):
        return False


_EXIF_ORIENTATION = 0x0112


def _upright(frame: Image.Image) -> Image.Image:
    """The frame turned as its EXIF Orientation tag says (cameras, phones and some PACS exports
    store a mirrored or rotated slice with the tag instead of turning the pixels)."""
    try:
        orientation = int(frame.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception as exc:  # a corrupt EXIF block is ignored, as the decoder ignores it
        log.info("EXIF orientation ignored: %s: %s", type(exc).__name__, exc)
        return frame
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(frame)
    return frame


def _count_frames(img: Image.Image, max_frames: int) -> int:
    """Frames of a Pillow image, walking at most ``max_frames + 1`` of them.

    Pillow's ``n_frames`` walks every TIFF page (a 50,000-page TIFF was walked completely before
    the frame limit refused it); seeking to page ``max_frames`` stops at the limit instead.
    """
    if img.format == "MPO":
        return 1
    if img.format != "TIFF":
        return int(getattr(img, "n_frames", 1) or 1)
    if img._n_frames is not None:  # type: ignore[attr-defined]  # one page, known at open
        return int(img._n_frames)  # type: ignore[attr-defined]
    walk = max(max_frames, MAX_FRAMES)  # a little past a small limit, so the message can say how many
    count = walk + 1
    for k in range(1, walk + 1):  # page by page: a failed far seek leaves Pillow's count wrong
        try:
            img.seek(k)
        except EOFError:
            count = k
            break
    img.seek(0)
    return count


def _decode_pil(
    data: bytes, settings: Settings, kind: str = "image", max_frames: int = MAX_FRAMES, only_frame: int | None = None
) -> tuple[list[_Frame], str]:
    """Decode PNG/JPEG/TIFF/BMP bytes with Pillow into (uint8 frame, frame index, frame meta)
    triples and the format name. Frames are turned upright by their EXIF orientation.
    ``only_frame``: decode that frame alone (the others are neither decoded nor kept)."""
    try:
        with warnings.catch_warnings():
            # Our own limit (check_dims, before any pixel is decoded) is stricter and names the
            # size; Pillow's DecompressionBombError still guards the >2x-its-limit case.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # "Corrupt EXIF data" etc.: not actionable
            Image.init()  # register every plugin so the ``formats`` allow-list resolves
            img = Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
            fmt = (img.format or "image").lower()
            w, h = img.size
            check_dims(h, w, settings)
            n_frames = _count_frames(img, max_frames)
            if n_frames > max_frames:
                walked = max(max_frames, MAX_FRAMES)  # _count_frames stops there
                many = f"{n_frames}" if n_frames <= walked else f"more than {walked}"
                raise InvalidScanError(
                    f"file has {many} frames; at most {max_frames} {'is' if max_frames == 1 else 'are'} accepted"
                )
            if only_frame is not None and not 0 <= only_frame < n_frames:
                raise InvalidScanError(f"frame {only_frame} not found: the file has {n_frames} frame(s)")
            frames: list[_Frame] = []
            total = 0
            for i, frame in enumerate(ImageSequence.Iterator(img)):
                if i >= n_frames:
                    break
                if only_frame is not None and i != only_frame:
                    continue
                if n_frames > 1 and _is_reduced_resolution(frame):
                    continue
                fw, fh = frame.size
                check_dims(fh, fw, settings)
                total += fw * fh
                _check_total(total, n_frames, settings)
                frame.load()
                grey, colour = _to_grey(_upright(frame))
                frame_meta = {} if colour is None else {"colorfulness": round(colour, 2)}
                frames.append((grey, i if n_frames > 1 else None, frame_meta))
            return frames, fmt
    except InvalidScanError:
        raise
    except Image.DecompressionBombError as exc:
        raise InvalidScanError(_bomb_message(exc, settings)) from exc
    except UnidentifiedImageError as exc:
        if kind in _PIL_KINDS:
            raise InvalidScanError(
                f"the file starts like a {kind.upper()} image but its header is corrupt or truncated"
            ) from exc
        raise InvalidScanError(f"not a readable image: the bytes are not {SUPPORTED}") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, struct.error, ValueError...
        log.info("image decode failed: %s: %s", type(exc).__name__, exc)
        raise InvalidScanError(f"image file is corrupt or truncated ({_short(exc)})") from exc


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__  # one line, no control characters
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first(value: object) -> object:
    """First item of a DICOM multi-valued element, or the value itself."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return value[0] if len(value) else None  # type: ignore[index]
    return value


def _finite_float(value: object) -> float | None:
    try:
        f = float(_first(value))  # type: ignore[arg-type]
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return f if math.isfinite(f) else None


def _safe_get(ds: object, keyword: str) -> object:
    """``ds.get(keyword)`` that returns None instead of raising on malformed values."""
    try:
        return ds.get(keyword)  # type: ignore[attr-defined]
    except Exception:
        return None


def _fg_item(ds: object, frame: int, seq: str) -> object:
    """The ``seq`` item for ``frame`` from the per-frame, else shared, functional groups."""
    for groups, idx in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        try:
            fg = _safe_get(ds, groups)
            if fg is not None and len(fg) > idx:
                inner = _safe_get(fg[idx], seq)
                if inner is not None and len(inner):
                    return inner[0]
        except Exception as exc:
            log.debug("ignoring malformed %s: %s", groups, exc)
    return None


def _dicom_attr(ds: object, frame: int, seq: str, keyword: str) -> object:
    """An attribute from the enhanced-DICOM functional groups, else the top-level data set."""
    item = _fg_item(ds, frame, seq)
    if item is not None:
        value = _safe_get(item, keyword)
        if value is not None:
            return value
    return _safe_get(ds, keyword)


WINDOW_LIMIT = 1e7  # |WindowCenter| and WindowWidth beyond this cannot be an MR display window


def _dicom_window(ds: object, frame: int, warns: list[str] | None = None) -> tuple[float, float] | None:
    c = _finite_float(_dicom_attr(ds, frame, "FrameVOILUTSequence", "WindowCenter"))
    wd = _finite_float(_dicom_attr(ds, frame, "FrameVOILUTSequence", "WindowWidth"))
    if c is None or wd is None or wd <= 0:
        return None
    if abs(c) > WINDOW_LIMIT or wd > WINDOW_LIMIT:  # would turn the slice into a blank image
        if warns is not None:
            warns.append(f"VOI window {c:.3g} / {wd:.3g} is implausible; ignored (contrast stretched instead)")
        return None
    return c, wd


def _dicom_spacing(ds: object) -> tuple[float, float] | None:
    ps = _dicom_attr(ds, 0, "PixelMeasuresSequence", "PixelSpacing")
    try:
        if ps is None or isinstance(ps, (str, bytes)) or len(ps) != 2:  # type: ignore[arg-type]
            return None
        row, col = float(ps[0]), float(ps[1])  # type: ignore[index]
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if not (math.isfinite(row) and math.isfinite(col) and row > 0 and col > 0):
        return None
    return row, col


def _dicom_rescale(ds: object, frame: int, arr: np.ndarray, warns: list[str]) -> np.ndarray:
    """Modality LUT / rescale slope+intercept (frame-specific for enhanced multi-frame); implausible
    values are dropped with a note in ``warns``."""
    from pydicom.pixels import apply_modality_lut

    if _safe_get(ds, "ModalityLUTSequence"):
        try:
            return np.asarray(apply_modality_lut(arr, ds), np.float32)
        except Exception as exc:
            log.info("modality LUT ignored: %s", exc)
            return arr.astype(np.float32)
    slope = _finite_float(_dicom_attr(ds, frame, "PixelValueTransformationSequence", "RescaleSlope"))
    intercept = _finite_float(_dicom_attr(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept"))
    out = arr.astype(np.float32)
    if slope is not None and slope != 0 and not SLOPE_RANGE[0] <= abs(slope) <= SLOPE_RANGE[1]:
        warns.append(f"RescaleSlope {slope:.3g} is implausible; ignored")
        slope = None
    if intercept is not None and abs(intercept) > INTERCEPT_LIMIT:
        warns.append(f"RescaleIntercept {intercept:.3g} is implausible; ignored")
        intercept = None
    if slope is not None and slope != 0:
        out *= np.float32(slope)
    if intercept is not None:
        out += np.float32(intercept)
    return out


def _dicom_str(value: object) -> str:
    return _CONTROL_CHARS.sub(" ", str(value)).strip()


# Plausible ranges of header numbers (issue 22, item 9). A value outside is dropped (the scan is
# kept, flagged through ``meta["header_warnings"]``), never trusted: PixelSpacing 1e200 once made
# a tumour area infinite and the case was lost.
SPACING_RANGE_MM = (0.01, 20.0)  # in-plane pixel size of any clinical MRI (0.1-5 mm in practice)
SLOPE_RANGE = (1e-6, 1e6)  # |RescaleSlope|
INTERCEPT_LIMIT = 1e7
# Transfer syntaxes whose frames are Pillow/pydicom-decoded images with their own header size.
_SEG_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"}  # SEG, label map SEG


def _dicom_spacing_checked(ds: object, warns: list[str]) -> tuple[float, float] | None:
    spacing = _dicom_spacing(ds)
    if spacing is None:
        return None
    lo, hi = SPACING_RANGE_MM
    if not all(lo <= v <= hi for v in spacing):
        warns.append(
            f"PixelSpacing {spacing[0]:.3g} x {spacing[1]:.3g} mm is implausible (expected {lo}-{hi:g} mm); "
            "ignored, so the tumour area is given in pixels only"
        )
        return None
    return spacing


def _max_dataset_bytes(settings: Settings) -> int:
    """The most a DICOM data set may hold once inflated: the pixel budget at 2 bytes a sample, plus headers."""
    return 2 * _total_budget(settings) + (16 << 20)


def _inflate_deflated(data: bytes, settings: Settings) -> bytes:
    """A Deflated Explicit VR file rewritten as Explicit VR Little Endian, inflated with a limit.

    pydicom inflates the whole data set in memory before reading a single element (a 1.6 MB
    upload once became 2.9 GB), so the inflation is done here in bounded steps; a stream that
    inflates beyond :func:`_max_dataset_bytes` is refused before pydicom parses it.
    Other files are returned unchanged.
    """
    import zlib

    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.filewriter import write_file_meta_info

    fp = io.BytesIO(data)
    try:
        read_preamble(fp, True)
        if fp.read(2) != b"\x02\x00":  # no file meta group: nothing can say "deflated"
            return data
        fp.seek(-2, 1)
        meta = _read_file_meta_info(fp)
    except Exception:  # let dcmread report the corrupt file the usual way
        return data
    ts = _safe_get(meta, "TransferSyntaxUID")
    if ts != pydicom.uid.DeflatedExplicitVRLittleEndian:
        return data
    limit = _max_dataset_bytes(settings)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(data[fp.tell() :], limit + 1)
    except zlib.error as exc:
        raise InvalidScanError(f"DICOM file is deflated but its compressed data is corrupt ({_short(exc)})") from exc
    if len(inflated) > limit or inflater.unconsumed_tail:
        raise InvalidScanError(
            f"DICOM data set inflates to more than {limit / 1e6:.0f} MB (possible decompression bomb); "
            "export the series uncompressed"
        )
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=False)
    return out.getvalue() + inflated


def _frame_header_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) from the header of one compressed frame (JPEG family or JPEG 2000), or None."""
    from pydicom.pixels.utils import _get_jpg_parameters

    if frame[:2] == b"\xff\xd8":
        info = _get_jpg_parameters(frame)
        if info.get("height") is not None and info.get("width") is not None:
            return int(info["height"]), int(info["width"])
        return None
    j2k = frame.find(b"\xff\x4f\xff\x51")  # SOC then SIZ (a JP2 box wrapper may come first)
    if 0 <= j2k < 4096 and len(frame) >= j2k + 24:
        import struct

        xs, ys, xo, yo = struct.unpack(">IIII", frame[j2k + 8 : j2k + 24])
        return ys - yo, xs - xo
    return None


def _check_native_length(ds: object, rows: int, cols: int, n_frames: int) -> None:
    """An uncompressed PixelData must hold exactly what Rows x Columns x frames x samples x bits says.

    A short or long buffer means the header is wrong (Columns 511 on 512-wide data shears the
    image, Rows 400 silently drops the bottom), so it is a rejection, not a pydicom warning.
    """
    if "PixelData" not in ds:
        return
    bits = int(_finite_float(_safe_get(ds, "BitsAllocated")) or 0)
    spp = int(_finite_float(_safe_get(ds, "SamplesPerPixel")) or 1)
    if bits not in (1, 8, 16, 32, 64) or spp not in (1, 3, 4):
        raise InvalidScanError(f"DICOM header is corrupt: BitsAllocated {bits}, SamplesPerPixel {spp}")
    n_px = rows * cols * n_frames * spp
    expected = (n_px + 7) // 8 if bits == 1 else n_px * bits // 8
    photometric = str(_safe_get(ds, "PhotometricInterpretation") or "").strip().upper()
    if photometric.startswith("YBR") and photometric.endswith("422"):
        expected = expected * 2 // 3
    pixel_data = ds.PixelData  # type: ignore[attr-defined]
    actual = len(pixel_data)
    row_bytes = max(2, cols * spp * bits // 8)
    # One pad byte makes an odd length even; zero padding shorter than a row is stripped by pydicom
    # (pydicom's MR_small_padded.dcm). Anything else is a header that lies about the layout.
    padding = 0 <= actual - expected <= row_bytes and not any(pixel_data[expected:])
    if actual not in (expected, expected + 1) and not padding:
        raise InvalidScanError(
            f"DICOM header does not match its pixel data: {cols}x{rows} px x {n_frames} frame(s) x {spp} "
            f"sample(s) x {bits} bits is {expected:,} bytes, but the file holds {actual:,}; the header is "
            "corrupt (the image would be sheared or cut)"
        )


def _check_compressed_frames(ds: object, rows: int, cols: int, n_frames: int) -> None:
    """Every compressed frame's own header must give the size the DICOM header states, checked
    before any frame is decoded (a 512x512 header over a 12000x12000 JPEG once cost 0.75 GB)."""
    from pydicom.encaps import generate_frames

    try:
        frames = generate_frames(ds.PixelData, number_of_frames=n_frames)  # type: ignore[attr-defined]
        for i, frame in enumerate(frames):
            if i >= n_frames:
                break
            size = _frame_header_size(frame)
            if size is not None and size != (rows, cols):
                raise InvalidScanError(
                    f"DICOM header says {cols}x{rows} px but compressed frame {i} is {size[1]}x{size[0]} px; "
                    "the file is inconsistent and was not decoded"
                )
    except InvalidScanError:
        raise
    except Exception as exc:  # a broken fragment table: the decoder below reports it
        log.info("compressed frame check skipped: %s: %s", type(exc).__name__, exc)


def _dicom_frames(ds: object, indices: list[int]):
    """Decoded frames one at a time (pydicom's ``iter_pixels``), so only one frame is in memory."""
    from pydicom.pixels import iter_pixels

    try:
        yield from iter_pixels(ds, indices=indices)  # type: ignore[arg-type]
    except InvalidScanError:
        raise
    except Exception as exc:  # pydicom raises many types for missing codecs / short data
        ts = _safe_get(getattr(ds, "file_meta", None) or {}, "TransferSyntaxUID")
        if ts is not None and getattr(ts, "is_compressed", False):
            raise InvalidScanError(
                f"DICOM pixel data is compressed as '{getattr(ts, 'name', ts)}', which cannot be decoded "
                f"here ({_short(exc, 80)}); export the series uncompressed"
            ) from exc
        raise InvalidScanError(f"DICOM pixel data cannot be decoded ({type(exc).__name__}: {_short(exc)})") from exc


def _decode_dicom(
    data: bytes, settings: Settings, only_frame: int | None = None
) -> tuple[list[_Frame], tuple | None, dict]:
    import pydicom

    with warnings.catch_warnings(record=True) as caught:
        # pydicom warns about every malformed element; the warnings are logged, and what matters
        # (pixel length, sizes, values) is checked below instead of being trusted or silenced.
        warnings.simplefilter("always")
        data = _inflate_deflated(data, settings)
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        except Exception as exc:  # InvalidDicomError, struct.error, EOFError, OverflowError...
            raise InvalidScanError(f"DICOM file is corrupt or truncated ({_short(exc)})") from exc
        try:
            has_pixels = "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds
        except Exception:
            has_pixels = False
        if not has_pixels:
            raise InvalidScanError("DICOM file has no pixel data (a report, a header-only or a truncated file?)")
        sop = str(_safe_get(ds, "SOPClassUID") or "")
        if sop in _SEG_SOP_CLASSES or str(_safe_get(ds, "Modality") or "").strip().upper() == "SEG":
            raise InvalidScanError("this DICOM is a segmentation object (SEG, a mask), not an MR image")
        rows = int(_finite_float(_safe_get(ds, "Rows")) or 0)
        cols = int(_finite_float(_safe_get(ds, "Columns")) or 0)
        check_dims(rows, cols, settings)
        n_frames = int(_finite_float(_safe_get(ds, "NumberOfFrames")) or 1)
        if n_frames > MAX_FRAMES:
            raise InvalidScanError(f"DICOM has {n_frames} frames; at most {MAX_FRAMES} are accepted")
        n_frames = max(n_frames, 1)
        _check_total(rows * cols * n_frames, n_frames, settings)
        ts = _safe_get(getattr(ds, "file_meta", None) or {}, "TransferSyntaxUID")
        if ts is not None and getattr(ts, "is_encapsulated", False):
            _check_compressed_frames(ds, rows, cols, n_frames)
        else:
            _check_native_length(ds, rows, cols, n_frames)
        if only_frame is not None and not 0 <= only_frame < n_frames:
            raise InvalidScanError(f"frame {only_frame} not found: the file has {n_frames} frame(s)")
        indices = [only_frame] if only_frame is not None else list(range(n_frames))
        photometric = str(_safe_get(ds, "PhotometricInterpretation") or "").strip().upper()
        spp = int(_finite_float(_safe_get(ds, "SamplesPerPixel")) or 1)
        invert = photometric == "MONOCHROME1"
        warns: list[str] = []
        slope = _finite_float(_dicom_attr(ds, 0, "PixelValueTransformationSequence", "RescaleSlope"))
        if slope is not None and slope < 0:
            warns.append(f"RescaleSlope is {slope:g}: the contrast is inverted (dark and bright swapped)")
        frames = []
        for i, arr in zip(indices, _dicom_frames(ds, indices)):
            arr = np.asarray(arr)
            if photometric == "PALETTE COLOR":
                try:
                    from pydicom.pixels import apply_color_lut

                    arr = np.asarray(apply_color_lut(arr, ds))
                except Exception as exc:
                    raise InvalidScanError(f"DICOM palette cannot be applied ({_short(exc)})") from exc
            if arr.ndim != (3 if (spp > 1 or photometric == "PALETTE COLOR") else 2):
                raise InvalidScanError(f"DICOM frame {i} has an unexpected shape {arr.shape}")
            if arr.shape[:2] != (rows, cols):
                raise InvalidScanError(
                    f"DICOM header says {cols}x{rows} px but frame {i} decodes to {arr.shape[1]}x{arr.shape[0]} px"
                )
            frame_meta: dict = {}
            if arr.ndim == 3 and arr.shape[-1] in (3, 4):
                rgb = arr[..., :3]
                frame_meta["colorfulness"] = round(colorfulness(to_uint8(rgb) if rgb.dtype != np.uint8 else rgb), 2)
                img8 = to_uint8(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
            else:
                img8 = to_uint8(_dicom_rescale(ds, i, arr, warns), _dicom_window(ds, i, warns))
            if invert:
                img8 = 255 - img8
            frames.append((img8, i if n_frames > 1 else None, frame_meta))
        spacing = _dicom_spacing_checked(ds, warns)
        tags = _SAFE_DICOM_TAGS + (_PHI_DICOM_TAGS if settings.allow_phi else ())
        meta: dict = {}
        for t in tags:
            v = _safe_get(ds, t)
            if v not in (None, ""):
                meta[t] = _dicom_str(v)
        if warns:
            meta["header_warnings"] = sorted(set(warns))
    for w in caught:
        log.info("pydicom: %s", _short(w.message))  # type: ignore[arg-type]
    return frames, spacing, meta


def read_scans(
    data: bytes, name: str = "upload", settings: Settings | None = None, frame: int | None = None
) -> list[Scan]:
    """Decode file bytes into one :class:`Scan` per frame (with ``frame``: that frame only, the
    others are not decoded).

    The format is recognised from the bytes (never from ``name``). ``name`` is only kept, as
    :func:`safe_name`, for display. Raises InvalidScanError for empty, oversized, truncated,
    non-image or pixel-less input; no other exception escapes.
    """
    settings = settings or get_settings()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidScanError("expected file bytes")
    data = bytes(data)
    display = safe_name(name)
    if len(data) == 0:
        raise InvalidScanError("file is empty (0 bytes)")
    if len(data) > settings.max_file_bytes:
        raise InvalidScanError(
            f"file is {len(data) / 1e6:.1f} MB, over the {settings.max_file_bytes / 1e6:.0f} MB limit"
        )
    try:
        frames, spacing, meta, fmt = _decode(data, display, settings, frame)
    except InvalidScanError:
        raise
    except Exception as exc:  # last line of defence: the contract is InvalidScanError only
        log.warning("unexpected %s while decoding %r", type(exc).__name__, display, exc_info=True)
        raise InvalidScanError(f"file cannot be decoded ({type(exc).__name__}: {_short(exc)})") from exc
    base = content_id(data)
    scans = []
    for pixels, frame, frame_meta in frames:
        if pixels.ndim != 2:
            raise InvalidScanError(f"unexpected pixel array shape {pixels.shape}")
        sid = base if frame is None else f"{base}-f{frame}"
        scans.append(
            Scan(
                scan_id=sid,
                name=display,
                pixels=np.ascontiguousarray(pixels, dtype=np.uint8),
                pixel_spacing=spacing,
                source_format=fmt,
                frame=frame,
                meta={**meta, **frame_meta},
            )
        )
    if not scans:
        raise InvalidScanError("file contains no image frames")
    return scans


def _decode(data: bytes, name: str, settings: Settings, only_frame: int | None = None):
    kind = sniff_format(data)
    suffix = Path(name).suffix.lower()
    if kind in ("pdf", "html", "text", "zip"):
        raise InvalidScanError(f"this is a {kind.upper() if kind != 'text' else 'text'} file, not an image")
    if kind in ("gif", "webp"):
        raise InvalidScanError(f"{kind.upper()} images are not supported; export the slice as {SUPPORTED}")
    if kind in _PIL_KINDS:
        frames, fmt = _decode_pil(data, settings, kind, only_frame=only_frame)
        return frames, None, {}, fmt
    if kind == "dicom" or (suffix in DICOM_SUFFIXES and _looks_like_raw_dicom(data)):
        frames, spacing, meta = _decode_dicom(data, settings, only_frame)
        return frames, spacing, meta, "dicom"
    if suffix in DICOM_SUFFIXES and suffix:
        raise InvalidScanError("not a readable DICOM file: no DICOM header (DICM) and no recognisable data set")
    raise InvalidScanError(f"not a readable image: the bytes are not {SUPPORTED}")


MASK_FORMATS = "PNG, JPEG, TIFF or BMP"


def read_mask_bytes(data: bytes, settings: Settings | None = None) -> np.ndarray:
    """Decode a tumour-mask image into uint8 grey pixels (H, W), through the same allow-list and
    header size checks as scans.

    Only PNG, JPEG, TIFF and BMP bytes reach a decoder (recognised from the bytes, never from a
    name: an EPS, PCX, TGA or SPIDER file named ``.png`` is refused before Pillow sees it, so no
    Ghostscript); sizes are checked from the header before any pixel is decoded; one frame only.
    Raises :class:`InvalidScanError` with the reason; no other exception escapes.
    """
    settings = settings or get_settings()
    data = bytes(data)
    if not data:
        raise InvalidScanError("mask file is empty (0 bytes)")
    if len(data) > settings.max_file_bytes:
        raise InvalidScanError(
            f"mask file is {len(data) / 1e6:.1f} MB, over the {settings.max_file_bytes / 1e6:.0f} MB limit"
        )
    kind = sniff_format(data)
    if kind not in _PIL_KINDS:
        what = {"unknown": "an unrecognised format", "text": "text (PostScript/EPS?)"}.get(kind, kind.upper())
        raise InvalidScanError(f"a mask must be a {MASK_FORMATS} image; these bytes are {what}")
    try:
        frames, _fmt = _decode_pil(data, settings, kind, max_frames=1)
    except InvalidScanError:
        raise
    except Exception as exc:  # the contract is InvalidScanError only
        log.warning("unexpected %s while decoding a mask", type(exc).__name__, exc_info=True)
        raise InvalidScanError(f"mask cannot be decoded ({type(exc).__name__})") from exc
    if len(frames) != 1:
        raise InvalidScanError("mask file holds no single image frame")
    return np.ascontiguousarray(frames[0][0], dtype=np.uint8)


def read_mask_path(path: str | Path, settings: Settings | None = None) -> np.ndarray:
    """:func:`read_mask_bytes` of a file on disk (size-checked before it is read)."""
    settings = settings or get_settings()
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > settings.max_file_bytes:
            raise InvalidScanError(
                f"mask file is {size / 1e6:.1f} MB, over the {settings.max_file_bytes / 1e6:.0f} MB limit"
            )
        data = p.read_bytes()
    except OSError as exc:
        raise InvalidScanError(f"cannot read the mask file: {exc.strerror or type(exc).__name__}") from exc
    return read_mask_bytes(data, settings)


def read_scan(data: bytes, name: str = "upload", settings: Settings | None = None) -> Scan:
    """Decode a single-frame file. Multi-frame files raise an error naming the frame count."""
    scans = read_scans(data, name, settings)
    if len(scans) > 1:
        raise InvalidScanError(f"file has {len(scans)} frames; use read_scans to get one scan per frame")
    return scans[0]


def declared_pixels(source: str | Path | bytes, settings: Settings | None = None) -> int:
    """Pixels a file's header says it holds (all frames), read without decoding any pixel; 0 when
    the header cannot be read (the decoder then says why). ``source``: a path or the file's bytes.
    Lets a caller bound the work of a batch before paying for it."""
    settings = settings or get_settings()
    name = "upload" if isinstance(source, (bytes, bytearray, memoryview)) else Path(source).name
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
        else:
            if Path(source).stat().st_size > settings.max_file_bytes:
                return 0
            data = Path(source).read_bytes()
        if len(data) > settings.max_file_bytes:
            return 0
        kind = sniff_format(data)
        if kind in _PIL_KINDS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
                w, h = img.size
                return w * h * (1 if img.format != "TIFF" else _count_frames(img, MAX_FRAMES))
        if kind == "dicom" or _looks_like_raw_dicom(data):
            import pydicom

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(io.BytesIO(_inflate_deflated(data, settings)), force=True, stop_before_pixels=True)
            rows = int(_finite_float(_safe_get(ds, "Rows")) or 0)
            cols = int(_finite_float(_safe_get(ds, "Columns")) or 0)
            return rows * cols * max(1, int(_finite_float(_safe_get(ds, "NumberOfFrames")) or 1))
    except Exception as exc:  # InvalidScanError (a deflate bomb), OSError, corrupt headers...
        log.debug("no declared size for %s: %s", name, exc)
    return 0


def read_path(path: str | Path, settings: Settings | None = None, frame: int | None = None) -> list[Scan]:
    """Read a file from disk (size-checked before reading) into scans (``frame``: that one only)."""
    settings = settings or get_settings()
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise InvalidScanError(f"cannot read file: {exc.strerror or exc}") from exc
    if size > settings.max_file_bytes:
        raise InvalidScanError(f"file is {size / 1e6:.1f} MB, over the {settings.max_file_bytes / 1e6:.0f} MB limit")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InvalidScanError(f"cannot read file: {exc.strerror or exc}") from exc
    return read_scans(data, p.name, settings, frame=frame)
