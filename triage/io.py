"""Decode uploaded bytes into :class:`Scan` objects, refusing anything unsafe or unreadable.

Supported: PNG, JPEG, TIFF (8/16-bit, float, grey/RGB/RGBA/palette, multi-page), BMP and
DICOM (rescale slope/intercept, VOI window, MONOCHROME1 inversion, PixelSpacing).
Every failure raises :class:`InvalidScanError` with a sentence a radiologist can act on.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from triage.config import Settings, get_settings
from triage.errors import InvalidScanError
from triage.records import Scan

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom", ""}
MAX_FRAMES = 256
# DICOM attributes that are safe to keep; identifiers are added only with allow_phi.
_SAFE_DICOM_TAGS = ("Modality", "SeriesDescription", "StudyDescription", "BodyPartExamined",
                    "MRAcquisitionType", "SliceThickness", "MagneticFieldStrength", "Manufacturer")
_PHI_DICOM_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                   "AccessionNumber", "StudyDate", "InstitutionName", "ReferringPhysicianName")


def content_id(data: bytes) -> str:
    """Stable scan id: the SHA-256 of the file's bytes (hex, first 32 chars)."""
    return hashlib.sha256(data).hexdigest()[:32]


def _sniff(data: bytes) -> str:
    head = data[:1024].lstrip()
    if data[128:132] == b"DICM":
        return "dicom"
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
    return "image"


def to_uint8(arr: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """Scale any numeric 2D array to uint8 [0, 255].

    With ``window=(center, width)`` a linear DICOM-style window is applied; otherwise uint8
    passes through and other dtypes are stretched between the 0.5 and 99.5 percentiles.
    """
    arr = np.asarray(arr)
    if arr.dtype == np.uint8 and window is None:
        return arr
    a = arr.astype(np.float32)
    if not np.isfinite(a).all():
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    if window is not None:
        center, width = window
        lo, hi = center - width / 2.0, center + width / 2.0
    else:
        lo, hi = np.percentile(a, [0.5, 99.5]) if a.size else (0.0, 1.0)
        if hi <= lo:
            lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return (np.clip((a - lo) / (hi - lo), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _to_grey(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return to_uint8(np.asarray(img))
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA"):
        # Composite over black: transparent areas become background, not white.
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        rgb = rgba[..., :3] * (rgba[..., 3:4] / 255.0)
        return to_uint8(rgb @ np.array([0.299, 0.587, 0.114], np.float32), window=(127.5, 255.0))
    if mode == "1":
        img = img.convert("L")
    if mode not in ("L", "RGB"):
        img = img.convert("RGB")
    return np.asarray(img.convert("L"))


def _check_dims(h: int, w: int, settings: Settings) -> None:
    if h * w > settings.max_pixels:
        raise InvalidScanError(
            f"image is {w}x{h} pixels, over the limit of {settings.max_pixels:,} pixels "
            "(possible decompression bomb); export the slice at a normal size")
    if min(h, w) < settings.min_side:
        raise InvalidScanError(
            f"image is only {w}x{h} pixels; at least {settings.min_side} px per side is needed")


def _decode_pil(data: bytes, name: str, settings: Settings) -> list[tuple[np.ndarray, int | None]]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            _check_dims(h, w, settings)
            n_frames = getattr(img, "n_frames", 1)
            if n_frames > MAX_FRAMES:
                raise InvalidScanError(f"file has {n_frames} frames; at most {MAX_FRAMES} are accepted")
            frames = []
            for i, frame in enumerate(ImageSequence.Iterator(img)):
                fw, fh = frame.size
                _check_dims(fh, fw, settings)
                frame.load()
                frames.append((_to_grey(frame), i if n_frames > 1 else None))
            return frames
    except InvalidScanError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidScanError(f"image is too large to decode safely (decompression bomb): {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InvalidScanError("not a readable image: the bytes are not PNG, JPEG, TIFF, BMP or DICOM") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, MemoryError) as exc:
        raise InvalidScanError(f"image file is corrupt or truncated ({exc})") from exc


def _decode_dicom(data: bytes, settings: Settings) -> tuple[list[tuple[np.ndarray, int | None]], tuple | None, dict]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidScanError(f"DICOM file is corrupt or truncated ({exc})") from exc
    if "PixelData" not in ds:
        raise InvalidScanError("DICOM file has no pixel data (a structured report or header-only file?)")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    _check_dims(rows, cols, settings)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames > MAX_FRAMES:
        raise InvalidScanError(f"DICOM has {n_frames} frames; at most {MAX_FRAMES} are accepted")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for missing codecs / short data
        raise InvalidScanError(f"DICOM pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc
    if ds.get("SamplesPerPixel", 1) not in (1, None) and arr.ndim >= 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    frames_arr = arr if (n_frames > 1 and arr.ndim == 3) else arr[None, ...]

    from pydicom.pixels import apply_modality_lut

    window = None
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        c = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        wd = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        if wd > 0:
            window = (c, wd)
    invert = str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    frames = []
    for i, fr in enumerate(frames_arr):
        try:
            real = apply_modality_lut(fr, ds).astype(np.float32)
        except Exception:  # no modality LUT in the file: use stored values
            real = fr.astype(np.float32)
        img8 = to_uint8(real, window)
        if invert:
            img8 = 255 - img8
        frames.append((img8, i if n_frames > 1 else None))
    spacing = None
    ps = ds.get("PixelSpacing")
    if ps is not None and len(ps) == 2:
        try:
            spacing = (float(ps[0]), float(ps[1]))
        except (TypeError, ValueError):
            spacing = None
    meta = {t: str(ds.get(t)) for t in _SAFE_DICOM_TAGS if ds.get(t) not in (None, "")}
    if settings.allow_phi:
        meta.update({t: str(ds.get(t)) for t in _PHI_DICOM_TAGS if ds.get(t) not in (None, "")})
    return frames, spacing, meta


def read_scans(data: bytes, name: str = "upload", settings: Settings | None = None) -> list[Scan]:
    """Decode file bytes into one :class:`Scan` per frame.

    Raises InvalidScanError for empty, oversized, truncated, non-image or pixel-less input.
    """
    settings = settings or get_settings()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidScanError("expected file bytes")
    data = bytes(data)
    if len(data) == 0:
        raise InvalidScanError("file is empty (0 bytes)")
    if len(data) > settings.max_file_bytes:
        raise InvalidScanError(
            f"file is {len(data) / 1e6:.1f} MB, over the {settings.max_file_bytes / 1e6:.0f} MB limit")
    kind = _sniff(data)
    suffix = Path(name).suffix.lower()
    if kind in ("pdf", "html", "text", "zip"):
        raise InvalidScanError(f"this is a {kind.upper() if kind != 'text' else 'text'} file, not an image")
    spacing, meta, fmt = None, {}, "image"
    if kind == "dicom" or suffix in (".dcm", ".dicom"):
        frames, spacing, meta = _decode_dicom(data, settings)
        fmt = "dicom"
    else:
        frames = _decode_pil(data, name, settings)
        fmt = (Image.open(io.BytesIO(data)).format or "image").lower()
    base = content_id(data)
    scans = []
    for pixels, frame in frames:
        if pixels.ndim != 2:
            raise InvalidScanError(f"unexpected pixel array shape {pixels.shape}")
        sid = base if frame is None else f"{base}-f{frame}"
        scans.append(Scan(scan_id=sid, name=name, pixels=np.ascontiguousarray(pixels),
                          pixel_spacing=spacing, source_format=fmt, frame=frame, meta=meta))
    if not scans:
        raise InvalidScanError("file contains no image frames")
    return scans


def read_scan(data: bytes, name: str = "upload", settings: Settings | None = None) -> Scan:
    """Decode a single-frame file. Multi-frame files raise an error naming the frame count."""
    scans = read_scans(data, name, settings)
    if len(scans) > 1:
        raise InvalidScanError(f"file has {len(scans)} frames; use read_scans to get one scan per frame")
    return scans[0]


def read_path(path: str | Path, settings: Settings | None = None) -> list[Scan]:
    """Read a file from disk (size-checked before reading) into scans."""
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
    return read_scans(data, p.name, settings)
