"""Whole series: NIfTI volumes, multi-file DICOM series and image folders, grouped patient -> study -> series.

No worklist and no models here: this module turns uploaded files into ordered :class:`SeriesInput`
groups of decoded slices, each slice with its :class:`SlicePlace` (which patient, study and series
it belongs to, and where along the stack it sits). Grouping keys are hashes of the DICOM UIDs (or
of the volume's bytes, or of the folder path), never patient names: nothing identifying is kept
unless :attr:`Settings.allow_phi` says so, as for single slices.

Orientation: NIfTI volumes are brought to the closest canonical (RAS+) orientation with nibabel and
cut along the superior axis; each slice is shown radiologically (anterior at the top, the patient's
right on the image's left), the convention of the shared BraTS slices.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import math
import re
import warnings
import zlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath

import numpy as np

from triage.config import Settings, get_settings
from triage.errors import InvalidScanError
from triage.io import MAX_FRAMES, check_dims, content_id, read_scans, safe_name, sniff_format, to_uint8
from triage.records import Scan, SeriesSource

log = logging.getLogger(__name__)

KEY_CHARS = 24  # hex characters of a grouping hash
# A gap this many times the usual slice spacing means slices are missing.
GAP_FACTOR = 1.6
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _key(kind: str, *parts: object) -> str:
    """A grouping key: the hash of a UID (or path, or content id), never the UID itself."""
    text = "\x1f".join(str(p) for p in parts)
    return hashlib.sha256(f"{kind}:{text}".encode()).hexdigest()[:KEY_CHARS]


@dataclass(frozen=True)
class SlicePlace:
    """Where one slice belongs: patient -> study -> series, its place in the stack.

    order: sort key along the stack (mm along the slice normal when ``order_in_mm``, else the
    instance number or file order). instance_key: the hash of the DICOM SOPInstanceUID (and
    frame), or of the file content: the same instance sent twice has the same key.
    """

    patient_key: str
    study_key: str
    series_key: str
    instance_key: str
    order: float
    order_in_mm: bool = False
    orientation: tuple[float, ...] | None = None


@dataclass(frozen=True)
class SeriesInfo:
    """What is known of a series as a whole (stored once per series)."""

    series_key: str
    study_key: str
    patient_key: str
    source: str  # "dicom" | "nifti" | "images" | "single"
    description: str = ""
    modality: str = ""
    # Slice thickness or spacing from the header (DICOM SpacingBetweenSlices / SliceThickness,
    # NIfTI voxel size); used for volumes when positions along the stack are unknown.
    spacing_mm: float | None = None
    positions_in_mm: bool = False
    study_description: str = ""


@dataclass(frozen=True)
class SeriesSlice:
    """One decoded slice of a series and the file it came from (stored as it is)."""

    scan: Scan
    place: SlicePlace
    file_name: str
    data: bytes  # the bytes to store for this slice (the DICOM/image file, or a PNG of a volume slice)
    fmt: str  # storage format ("dicom", "png", ...)


@dataclass
class SeriesInput:
    """A series ready to analyse: its slices in stack order, plus the files refused with a reason."""

    info: SeriesInfo
    slices: list[SeriesSlice]
    refused: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)
    source_file: tuple[str, bytes] | None = None  # the NIfTI volume, stored beside its slices


# ----- NIfTI --------------------------------------------------------------------------------


def is_nifti(name: str, data: bytes) -> bool:
    """A file named ``.nii`` / ``.nii.gz`` (its header is checked by :func:`read_nifti`, which
    refuses a file that only carries the name with a reason)."""
    return str(name).lower().endswith(NIFTI_SUFFIXES)


def _load_nifti(data: bytes):
    import nibabel as nib

    fh = nib.FileHolder(fileobj=io.BytesIO(data))
    for klass in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            return klass.from_file_map({"header": fh, "image": fh})
        except Exception as exc:  # wrong magic for this class: try the other
            last = exc
    raise InvalidScanError(f"NIfTI header cannot be read ({type(last).__name__}: {last})")


def radiological(axial: np.ndarray) -> np.ndarray:
    """An axial slice of a RAS+ volume (x right, y anterior) as a radiologist reads it.

    (X, Y) -> (Y, X) with anterior at the top (row 0) and the patient's right on the image's left.
    """
    return np.ascontiguousarray(axial.T[::-1, ::-1])


def _foreground_window(vol: np.ndarray) -> tuple[float, float, float]:
    """(background value, lo, hi): the 0.5th/99.5th percentiles of the non-background voxels.

    The background is the value at the volume's corners (0 for skull-stripped or z-scored data,
    whose brain is partly negative): windowing on all voxels would map it to mid-grey."""
    corners = vol[[0, -1]][:, [0, -1]][:, :, [0, -1]].ravel()
    background = float(np.median(corners))
    sample = vol.ravel()[:: max(1, vol.size // 2_000_000)]
    fg = sample[np.abs(sample - background) > 1e-6]
    if fg.size < 16:
        return background, float(sample.min()), float(sample.max())
    lo, hi = (float(v) for v in np.percentile(fg, [0.5, 99.5]))
    return background, lo, hi


def read_nifti(data: bytes, name: str, settings: Settings | None = None) -> SeriesInput:
    """A 3D NIfTI volume as a series of axial slices, inferior to superior, shown radiologically.

    The volume is reoriented to the closest canonical (RAS+) orientation with nibabel; pixel
    spacing and slice spacing come from the voxel sizes. A 4D volume with more than one time
    point, a 2D file, a degenerate (singular or non-finite) affine, or a slice size outside the
    limits raises :class:`InvalidScanError` with the reason. The series key is the volume's
    content hash, so the same file sent again joins its series.
    """
    import nibabel as nib

    settings = settings or get_settings()
    display = safe_name(name)
    if len(data) > settings.max_file_bytes:
        raise InvalidScanError(
            f"file is {len(data) / 1e6:.1f} MB, over the {settings.max_file_bytes / 1e6:.0f} MB limit"
        )
    gz = data[:2] == b"\x1f\x8b"
    try:
        if gz:  # bounded decompression: a gzip bomb stops at the limit instead of filling memory
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as fh:
                raw = fh.read(settings.max_file_bytes * 4 + 1)
            if len(raw) > settings.max_file_bytes * 4:
                raise InvalidScanError("NIfTI volume is too large once uncompressed")
            data_raw = raw
        else:
            data_raw = data
        if data_raw[344:348] not in (b"n+1\x00", b"ni1\x00") and data_raw[4:8] not in (b"n+2\x00", b"ni2\x00"):
            raise InvalidScanError("not a NIfTI file: the header has no NIfTI magic (n+1 / n+2)")
        img = _load_nifti(data_raw)
    except InvalidScanError:
        raise
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise InvalidScanError(f"NIfTI file is corrupt or truncated ({type(exc).__name__})") from exc
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 4:
        raise InvalidScanError(
            f"NIfTI is 4D ({shape[3]} volumes of {shape[0]}x{shape[1]}x{shape[2]}, e.g. fMRI, DWI or several "
            "sequences in one file); split it into 3D volumes (one per sequence) and upload those"
        )
    if len(shape) != 3:
        raise InvalidScanError(f"NIfTI has {len(shape)} dimensions {shape}; a 3D volume is expected")
    affine = np.asarray(img.affine, dtype=np.float64)
    lin = affine[:3, :3]
    if not np.isfinite(affine).all() or abs(float(np.linalg.det(lin))) < 1e-6:
        raise InvalidScanError(
            "NIfTI affine is degenerate (singular or not finite), so the slice direction and spacing are unknown; "
            "fix the header (qform/sform) and upload it again"
        )
    x, y, z = shape
    n_pixels_total = x * y * z
    if z > MAX_FRAMES * 4:
        raise InvalidScanError(f"NIfTI has {z} slices; at most {MAX_FRAMES * 4} are accepted")
    if n_pixels_total > 4 * settings.max_pixels:
        raise InvalidScanError(
            f"NIfTI volume has {n_pixels_total:,} voxels, over the limit of {4 * settings.max_pixels:,}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        canon = nib.as_closest_canonical(img)
        try:
            vol = np.asarray(canon.get_fdata(dtype=np.float32))
        except Exception as exc:
            raise InvalidScanError(f"NIfTI voxel data cannot be read ({type(exc).__name__}: {exc})") from exc
    if vol.ndim == 4:
        vol = vol[..., 0]
    cx, cy, cz = vol.shape
    check_dims(cy, cx, settings)  # each displayed slice is Y rows x X columns
    zooms = [float(v) for v in canon.header.get_zooms()[:3]]
    if not all(math.isfinite(v) and v > 0 for v in zooms):
        raise InvalidScanError(f"NIfTI voxel sizes {zooms} are not positive; the slice spacing is unknown")
    background, lo, hi = _foreground_window(vol)
    base = content_id(data)
    series_key = _key("nifti", base)
    # Pixel spacing of a displayed slice: rows follow y, columns follow x.
    spacing = (zooms[1], zooms[0])
    slices = []
    for k in range(cz):
        plane = vol[:, :, k]
        pixels = to_uint8(plane, ((lo + hi) / 2.0, hi - lo)) if hi > lo else to_uint8(plane)
        pixels = np.where(np.abs(plane - background) > 1e-6, pixels, 0).astype(np.uint8)
        pixels = radiological(pixels)
        scan = Scan(
            scan_id=f"{base}-z{k}",
            name=f"{display} [slice {k + 1}/{cz}]",
            pixels=pixels,
            pixel_spacing=spacing,
            source_format="nifti",
            frame=k,
            meta={"SliceThickness": f"{zooms[2]:g}"},
        )
        place = SlicePlace(
            patient_key=_key("patient-nifti", base),
            study_key=_key("study-nifti", base),
            series_key=series_key,
            instance_key=_key("instance", scan.scan_id),
            order=k * zooms[2],
            order_in_mm=True,
        )
        slices.append(SeriesSlice(scan=scan, place=place, file_name=scan.name, data=b"", fmt="png"))
    info = SeriesInfo(
        series_key=series_key,
        study_key=slices[0].place.study_key if slices else _key("study-nifti", base),
        patient_key=_key("patient-nifti", base),
        source=SeriesSource.NIFTI,
        description=_nifti_description(display),
        modality="MR",
        spacing_mm=zooms[2],
        positions_in_mm=True,
    )
    return SeriesInput(info=info, slices=slices, source_file=(display, data))


def _nifti_description(name: str) -> str:
    stem = name
    for suffix in NIFTI_SUFFIXES[::-1]:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return f"NIfTI {stem}"


# ----- DICOM --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DicomHeader:
    """The series-level fields of one DICOM file (read without its pixels)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    patient_id: str
    instance_number: int | None
    # One (position, orientation) per frame: enhanced multi-frame files carry them per frame.
    positions: tuple[tuple[float, float, float] | None, ...]
    orientation: tuple[float, ...] | None
    thickness: float | None
    spacing_between: float | None
    description: str
    modality: str
    study_description: str


def _floats(value: object, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(math.isfinite(v) for v in out) else None


def _one_float(value: object) -> float | None:
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _get(ds: object, keyword: str) -> object:
    try:
        return ds.get(keyword)  # type: ignore[attr-defined]
    except Exception:
        return None


def dicom_header(data: bytes) -> DicomHeader | None:
    """The UIDs, positions and spacing of a DICOM file, or None when it is not DICOM or has no UIDs."""
    if sniff_format(data) != "dicom" and data[:2] not in (b"\x02\x00", b"\x08\x00"):
        return None
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        except Exception:
            return None
        study, series = str(_get(ds, "StudyInstanceUID") or ""), str(_get(ds, "SeriesInstanceUID") or "")
        if not study or not series:
            return None
        n_frames = int(_one_float(_get(ds, "NumberOfFrames")) or 1)
        positions: list[tuple[float, float, float] | None] = []
        orientation = _floats(_get(ds, "ImageOrientationPatient"), 6)
        per_frame = _get(ds, "PerFrameFunctionalGroupsSequence")
        shared = _get(ds, "SharedFunctionalGroupsSequence")
        if n_frames > 1 and per_frame is not None:
            for i in range(min(n_frames, len(per_frame))):
                pos = None
                for item in (per_frame[i],):
                    plane = _get(item, "PlanePositionSequence")
                    if plane:
                        pos = _floats(_get(plane[0], "ImagePositionPatient"), 3)
                    if orientation is None:
                        po = _get(item, "PlaneOrientationSequence")
                        if po:
                            orientation = _floats(_get(po[0], "ImageOrientationPatient"), 6)
                positions.append(pos)  # type: ignore[arg-type]
            if orientation is None and shared:
                po = _get(shared[0], "PlaneOrientationSequence")
                if po:
                    orientation = _floats(_get(po[0], "ImageOrientationPatient"), 6)
        else:
            positions.append(_floats(_get(ds, "ImagePositionPatient"), 3))  # type: ignore[arg-type]
        thickness = _one_float(_get(ds, "SliceThickness"))
        if thickness is None and shared:
            pm = _get(shared[0], "PixelMeasuresSequence")
            if pm:
                thickness = _one_float(_get(pm[0], "SliceThickness"))
        number = _one_float(_get(ds, "InstanceNumber"))

        def text(keyword: str) -> str:
            return re.sub(r"[\x00-\x1f\x7f]", " ", str(_get(ds, keyword) or "")).strip()

        return DicomHeader(
            study_uid=study,
            series_uid=series,
            sop_uid=str(_get(ds, "SOPInstanceUID") or ""),
            patient_id=str(_get(ds, "PatientID") or ""),
            instance_number=None if number is None else int(number),
            positions=tuple(positions),
            orientation=orientation,
            thickness=thickness,
            spacing_between=_one_float(_get(ds, "SpacingBetweenSlices")),
            description=text("SeriesDescription"),
            modality=text("Modality"),
            study_description=text("StudyDescription"),
        )


def _normal(orientation: tuple[float, ...] | None) -> np.ndarray | None:
    if orientation is None:
        return None
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    n = np.cross(row, col)
    norm = float(np.linalg.norm(n))
    return None if norm < 1e-6 else n / norm


def _same_orientation(a: tuple[float, ...] | None, b: tuple[float, ...] | None) -> bool:
    if a is None or b is None:
        return a is b
    return bool(np.allclose(a, b, atol=1e-3))


# ----- grouping uploads ---------------------------------------------------------------------


@dataclass(frozen=True)
class NamedFile:
    """An uploaded file: display path (``study.zip/T1/IM0001.dcm``), bytes, parent folders."""

    name: str
    data: bytes
    folders: tuple[str, ...] = ()


@dataclass
class Grouped:
    """The result of :func:`group_files`: series to analyse, files left as single slices, refusals."""

    series: list[SeriesInput] = field(default_factory=list)
    singles: list[NamedFile] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t.casefold() for t in re.split(r"(\d+)", name)]


def group_files(files: Sequence[NamedFile], settings: Settings | None = None, folder_series: bool = True) -> Grouped:
    """Sort uploaded files into series.

    - NIfTI files: one series each (:func:`read_nifti`; a refused volume becomes a refusal row).
    - DICOM files with Study/Series UIDs: grouped by SeriesInstanceUID, ordered by position along
      the slice normal (ImagePositionPatient), else InstanceNumber; a series of one single-frame
      file is still a series (later uploads may complete it).
    - PNG/JPEG/TIFF/BMP files sharing a folder (``folder_series``): one series per folder and
      upload (no UIDs: keyed by the folder path and the files' contents), in natural file-name
      order; a lone file in its folder stays a single slice.
    - Everything else: single slices, analysed as before.
    """
    settings = settings or get_settings()
    out = Grouped()
    dicom: dict[str, list[tuple[NamedFile, DicomHeader]]] = defaultdict(list)
    images: dict[tuple[str, ...], list[NamedFile]] = defaultdict(list)
    for f in files:
        if is_nifti(f.name, f.data):
            try:
                out.series.append(read_nifti(f.data, f.name, settings))
            except InvalidScanError as exc:
                out.refused.append((f.name, str(exc)))
            continue
        kind = sniff_format(f.data)
        if kind == "dicom" or kind == "unknown":
            header = dicom_header(f.data)
            if header is not None:
                dicom[header.series_uid].append((f, header))
                continue
        # Only real folders: a name like '../../x.png' is a hostile path, not a folder of slices.
        real_folder = bool(f.folders) and not any(p in ("..", ".") or ":" in p for p in f.folders)
        if folder_series and kind in ("png", "jpeg", "tiff", "bmp") and real_folder:
            images[f.folders].append(f)
            continue
        out.singles.append(f)
    for members in dicom.values():
        out.series.append(_dicom_series(members, settings))
    for folders, members in images.items():
        if len(members) < 2:
            out.singles.extend(members)
            continue
        out.series.append(_image_series(folders, members, settings))
    return out


def _majority_filter(slices: list[SeriesSlice], refused: list[tuple[str, str]]) -> list[SeriesSlice]:
    """Keep the slices of the most common size and orientation; refuse the others with the reason.

    A series whose slices differ in size or orientation cannot be one stack (a localiser or a
    reformat mixed in); the majority stays the series, the rest are listed, nothing is stored
    for them."""
    if not slices:
        return slices
    sizes = Counter(s.scan.shape for s in slices)
    orient = Counter(s.place.orientation for s in slices)
    size = sizes.most_common(1)[0][0]
    ori = orient.most_common(1)[0][0]
    kept = []
    for s in slices:
        if s.scan.shape != size:
            refused.append(
                (
                    s.file_name,
                    f"slice is {s.scan.shape[1]}x{s.scan.shape[0]} px but the rest of its series is "
                    f"{size[1]}x{size[0]}: not the same stack (a localiser or reformat?); upload it on its own",
                )
            )
        elif not _same_orientation(s.place.orientation, ori):
            refused.append(
                (
                    s.file_name,
                    "slice orientation (ImageOrientationPatient) differs from the rest of its series: "
                    "not the same stack; upload it on its own",
                )
            )
        else:
            kept.append(s)
    return kept


def _dicom_series(members: list[tuple[NamedFile, DicomHeader]], settings: Settings) -> SeriesInput:
    first = members[0][1]
    patient = _key("patient", first.patient_id or first.study_uid)
    study = _key("study", first.study_uid)
    series = _key("series", first.series_uid)
    refused: list[tuple[str, str]] = []
    slices: list[SeriesSlice] = []
    seen: dict[str, str] = {}
    for f, h in members:
        try:
            scans = read_scans(f.data, f.name, settings)
        except InvalidScanError as exc:
            refused.append((f.name, str(exc)))
            continue
        normal = _normal(h.orientation)
        for i, scan in enumerate(scans):
            frame = scan.frame
            pos = h.positions[i] if i < len(h.positions) else None
            if normal is not None and pos is not None:
                order, in_mm = float(np.dot(normal, pos)), True
            else:
                order, in_mm = float(h.instance_number if h.instance_number is not None else len(slices)), False
            instance = _key("instance", h.sop_uid or content_id(f.data), "" if frame is None else frame)
            if instance in seen and seen[instance] != scan.scan_id:
                refused.append(
                    (
                        f.name,
                        "another file in this upload has the same SOPInstanceUID but different content; "
                        "neither replaces the other: only the first is kept",
                    )
                )
                continue
            if instance in seen:
                continue  # the same file twice in one upload
            seen[instance] = scan.scan_id
            place = SlicePlace(patient, study, series, instance, order, in_mm, h.orientation)
            slices.append(SeriesSlice(scan=scan, place=place, file_name=f.name, data=f.data, fmt="dicom"))
    slices = _majority_filter(slices, refused)
    in_mm = bool(slices) and all(s.place.order_in_mm for s in slices)
    if not in_mm:  # mixed: fall back to instance order for every slice
        slices = [replace(s, place=replace(s.place, order_in_mm=False)) for s in slices]
    slices.sort(key=lambda s: (s.place.order, s.scan.frame or 0))
    info = SeriesInfo(
        series_key=series,
        study_key=study,
        patient_key=patient,
        source=SeriesSource.DICOM,
        description=first.description,
        modality=first.modality,
        spacing_mm=first.spacing_between or first.thickness,
        positions_in_mm=in_mm,
        study_description=first.study_description,
    )
    return SeriesInput(info=info, slices=slices, refused=refused)


def _image_series(folders: tuple[str, ...], members: list[NamedFile], settings: Settings) -> SeriesInput:
    path = "/".join(folders)
    # Images carry no UIDs: the folder path alone could merge two patients' "export/" folders, so the
    # key is the path and the files' contents (the same folder sent again is the same series).
    contents = sorted(content_id(m.data) for m in members)
    series = _key("series-folder", path, *contents)
    study = _key("study-folder", path, *contents)
    refused: list[tuple[str, str]] = []
    slices: list[SeriesSlice] = []
    for f in sorted(members, key=lambda m: _natural(m.name)):
        try:
            scans = read_scans(f.data, f.name, settings)
        except InvalidScanError as exc:
            refused.append((f.name, str(exc)))
            continue
        for scan in scans:
            place = SlicePlace(study, study, series, _key("instance", scan.scan_id), float(len(slices)))
            slices.append(SeriesSlice(scan=scan, place=place, file_name=f.name, data=f.data, fmt=scan.source_format))
    slices = _majority_filter(slices, refused)
    info = SeriesInfo(
        series_key=series,
        study_key=study,
        patient_key=study,
        source=SeriesSource.IMAGES,
        description=f"folder {PurePosixPath(path).name or path}",
    )
    return SeriesInput(info=info, slices=slices, refused=refused)


# ----- geometry of a stored series -----------------------------------------------------------


@dataclass(frozen=True)
class StackGeometry:
    """The spacing along a stack and the gaps in it, from the stored slices' positions."""

    spacing_mm: float | None
    missing: int  # slices estimated missing from gaps in the positions
    gaps: tuple[tuple[float, float], ...] = ()  # (from, to) positions around each gap


def stack_geometry(orders: Sequence[float], in_mm: bool, header_spacing: float | None) -> StackGeometry:
    """Slice spacing (median step of the positions when they are in mm, else the header's) and
    missing slices (a step over ``GAP_FACTOR`` times the usual one; for instance numbers, any
    step over 1)."""
    values = sorted({float(o) for o in orders})
    steps = np.diff(values) if len(values) > 1 else np.array([])
    if in_mm:
        spacing = float(np.median(steps)) if steps.size else header_spacing
        base = spacing if spacing else None
    else:
        spacing, base = header_spacing, 1.0
    missing, gaps = 0, []
    if base and steps.size:
        for a, step in zip(values[:-1], steps):
            if step > GAP_FACTOR * base:
                missing += round(float(step) / base) - 1
                gaps.append((a, a + float(step)))
    return StackGeometry(spacing_mm=spacing if spacing and spacing > 0 else None, missing=missing, gaps=tuple(gaps))


def volume_ml(areas_mm2: Sequence[float | None], spacing_mm: float | None) -> float | None:
    """Tumour volume in mL: the sum of the per-slice areas (mm²) times the slice spacing (mm) / 1000.

    None when the spacing or any tumour slice's area in mm² is unknown."""
    if spacing_mm is None or not math.isfinite(spacing_mm) or spacing_mm <= 0:
        return None
    total = 0.0
    for a in areas_mm2:
        if a is None:
            return None
        total += float(a)
    return total * spacing_mm / 1000.0
