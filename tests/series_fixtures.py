"""Synthetic series for the studies tests: multi-file DICOM (pydicom), enhanced multi-frame MR and NIfTI (nibabel)."""

from __future__ import annotations

import io

import numpy as np

from tests.conftest import draw_synthetic_slice


def stack(n: int = 6, shape: tuple[int, int] = (128, 128), tumour_slices: tuple[int, ...] = (2, 3)) -> np.ndarray:
    """(n, H, W) uint8 synthetic axial slices; the tumour is drawn on ``tumour_slices`` only."""
    return np.stack(
        [draw_synthetic_slice(shape, tumor=i in tumour_slices, seed=i, tumor_radius=12)[0] for i in range(n)]
    )


def dicom_slice(
    pixels: np.ndarray,
    index: int,
    study_uid: str = "1.2.826.0.1.3680043.8.498.1",
    series_uid: str = "1.2.826.0.1.3680043.8.498.1.1",
    sop_uid: str | None = None,
    spacing: float = 5.0,
    pixel_spacing: float = 0.9,
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    instance_number: int | None = None,
    patient_name: str = "Doe^John",
    description: str = "AX T1 POST",
) -> bytes:
    """One MR image storage file of a series, at z = index * spacing."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid or f"{series_uid}.{index + 1}"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("slice.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = patient_name
    ds.PatientID = "MRN12345"
    ds.Modality = "MR"
    ds.SeriesDescription = description
    ds.InstanceNumber = index + 1 if instance_number is None else instance_number
    ds.ImagePositionPatient = [-60.0, -60.0, float(index * spacing)]
    ds.ImageOrientationPatient = list(orientation)
    ds.PixelSpacing = [pixel_spacing, pixel_spacing]
    ds.SliceThickness = spacing
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = (pixels.astype(np.uint16) * 4).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dicom_series(pixels: np.ndarray, **kw: object) -> list[tuple[str, bytes]]:
    """(name, bytes) per slice, in shuffled order (the grouping must sort them by position)."""
    files = [(f"IM{i:04d}.dcm", dicom_slice(p, i, **kw)) for i, p in enumerate(pixels)]
    order = np.random.default_rng(0).permutation(len(files))
    return [files[i] for i in order]


def enhanced_dicom(pixels: np.ndarray, spacing: float = 4.0) -> bytes:
    """One enhanced-style multi-frame MR file with a per-frame PlanePositionSequence (frames reversed in z)."""
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.9.1.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("enhanced.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.9"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.9.1"
    ds.Modality = "MR"
    ds.SeriesDescription = "AX FLAIR MF"
    ds.NumberOfFrames = len(pixels)
    ds.Rows, ds.Columns = pixels.shape[1:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    shared = Dataset()
    measures, orient = Dataset(), Dataset()
    measures.PixelSpacing = [1.0, 1.0]
    measures.SliceThickness = spacing
    orient.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orient])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    n = len(pixels)
    for i in range(n):
        fg, pos = Dataset(), Dataset()
        pos.ImagePositionPatient = [0.0, 0.0, float((n - 1 - i) * spacing)]  # stored top to bottom
        fg.PlanePositionSequence = Sequence([pos])
        frames.append(fg)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def nifti_bytes(
    volume: np.ndarray, affine: np.ndarray | None = None, gz: bool = True, sform_only: np.ndarray | None = None
) -> bytes:
    """A NIfTI-1 file of ``volume`` (X, Y, Z[, T]) with ``affine`` (default 1 mm RAS).

    ``sform_only``: write this matrix as the sform (code 1) and no qform, e.g. a singular one
    (nibabel refuses to write a singular qform)."""
    import gzip

    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(volume), np.eye(4) if affine is None else affine)
    if sform_only is not None:
        img.set_qform(None, code=0)
        img.set_sform(sform_only, code=1)
    raw = img.to_bytes()
    return gzip.compress(raw, mtime=0) if gz else raw


def lps_volume_from_slices(slices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The BraTS layout: radiological display slices (Z, rows, cols) -> an L-P-S volume (X, Y, Z) whose
    slice k, transposed, is display slice k (shared/data/brats2015_hgg6/README.md), and its affine."""
    volume = np.ascontiguousarray(np.transpose(slices, (2, 1, 0)))
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    return volume, affine
