"""Series intake (issue 18): NIfTI slicing and orientation, DICOM grouping and ordering, image folders,
stack geometry and the bad-input cases (mixed sizes, same UID different content, 4D, degenerate affine)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from tests.series_fixtures import (
    dicom_series,
    dicom_slice,
    enhanced_dicom,
    lps_volume_from_slices,
    nifti_bytes,
    stack,
)
from triage.errors import InvalidScanError
from triage.series import (
    NamedFile,
    group_files,
    radiological,
    read_nifti,
    stack_geometry,
    volume_ml,
)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])


# ----- NIfTI --------------------------------------------------------------------------------


def test_nifti_lps_volume_is_sliced_inferior_to_superior_in_radiological_orientation() -> None:
    slices = stack(5)
    volume, affine = lps_volume_from_slices(slices)
    series = read_nifti(nifti_bytes(volume.astype(np.float32), affine), "brain.nii.gz")
    assert len(series.slices) == 5 and series.info.source == "nifti"
    for k, s in enumerate(series.slices):
        assert s.scan.shape == slices[k].shape
        assert _corr(s.scan.pixels, slices[k]) > 0.999, k  # same slice, same way up, not mirrored
        assert s.place.order == pytest.approx(k * 1.0)
    assert series.slices[0].scan.pixel_spacing == (1.0, 1.0)


def test_nifti_ras_volume_with_anisotropic_voxels() -> None:
    slices = stack(4, shape=(96, 128))
    # A RAS+ volume: display = volume[:, :, k].T flipped in both axes, so build the volume back from it.
    volume = np.stack([s[::-1, ::-1].T for s in slices], axis=-1).astype(np.int16)
    affine = np.diag([0.8, 0.9, 3.0, 1.0])
    series = read_nifti(nifti_bytes(volume, affine, gz=False), "t1.nii")
    assert [s.scan.shape for s in series.slices] == [(96, 128)] * 4
    assert series.slices[0].scan.pixel_spacing == pytest.approx((0.9, 0.8))
    assert series.info.spacing_mm == pytest.approx(3.0)
    assert all(_corr(s.scan.pixels, slices[k]) > 0.999 for k, s in enumerate(series.slices))
    np.testing.assert_array_equal(radiological(volume[:, :, 0]), slices[0])


def test_nifti_z_scored_background_stays_black() -> None:
    """Skull-stripped, z-scored volumes (BraTS) have a negative brain and 0 outside: outside must be 0."""
    slices = stack(3)
    vol = (slices.astype(np.float32) - 110.0) / 40.0
    vol[slices < 12] = 0.0
    volume, affine = lps_volume_from_slices(vol)
    series = read_nifti(nifti_bytes(volume, affine), "z.nii.gz")
    px = series.slices[1].scan.pixels
    assert px[0, 0] == 0 and px[slices[1] < 12].max() == 0
    assert px[slices[1] > 100].mean() > 60


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: nifti_bytes(np.zeros((64, 64, 4, 3), np.float32)), "4D"),
        (lambda: nifti_bytes(np.ones((64, 64, 4), np.float32), sform_only=np.diag([1.0, 1.0, 0.0, 1.0])), "degenerate"),
        (lambda: b"\x1f\x8b\x08\x00not really gzip", "corrupt"),
        (lambda: b"\0" * 400, "NIfTI magic"),
        (lambda: nifti_bytes(np.ones((8, 8, 3), np.float32)), "pixels"),
    ],
)
def test_bad_nifti_is_refused_with_a_reason(make, message: str) -> None:
    with pytest.raises(InvalidScanError, match=message):
        read_nifti(make(), "bad.nii.gz")
    grouped = group_files([NamedFile("bad.nii.gz", make())])
    assert not grouped.series and grouped.refused[0][0] == "bad.nii.gz"


def test_4d_nifti_with_one_volume_is_a_3d_volume() -> None:
    vol = np.stack([stack(3).transpose(2, 1, 0)], axis=-1).astype(np.float32)
    assert len(read_nifti(nifti_bytes(vol), "one.nii.gz").slices) == 3


def test_shared_brats_slices_rebuilt_as_nifti_come_back_in_their_orientation(shared_data: Path) -> None:
    """The BraTS slices were cut from L-P-S NIfTI volumes as transposes of volume[:, :, k]; a volume rebuilt
    that way must give them back through read_nifti, slice for slice, inferior to superior."""
    import cv2

    folder = shared_data / "brats2015_hgg6"
    if not (folder / "manifest.csv").is_file():
        pytest.skip(f"BraTS slices not in the shared data at {folder}")
    with (folder / "manifest.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["patient_id"] == "brats2013_pat0001" and r["sequence"] == "flair"]
    rows = sorted(rows, key=lambda r: int(r["slice_index"]))[:12]
    slices = np.stack([cv2.imread(str(folder / r["path"]), cv2.IMREAD_GRAYSCALE) for r in rows])
    volume, affine = lps_volume_from_slices(slices.astype(np.float32))
    series = read_nifti(nifti_bytes(volume, affine), "pat0001_flair.nii.gz")
    assert len(series.slices) == len(rows)
    for k, s in enumerate(series.slices):
        assert _corr(s.scan.pixels, slices[k]) > 0.99
        assert _corr(s.scan.pixels, slices[k][:, ::-1]) < _corr(s.scan.pixels, slices[k])  # not mirrored


# ----- DICOM --------------------------------------------------------------------------------


def _files(pairs, folder: str = "study") -> list[NamedFile]:
    return [NamedFile(f"{folder}/{n}", d, (folder,)) for n, d in pairs]


def test_dicom_files_group_into_one_series_ordered_by_position() -> None:
    slices = stack(6)
    grouped = group_files(_files(dicom_series(slices, spacing=5.0)))
    assert len(grouped.series) == 1 and not grouped.singles and not grouped.refused
    series = grouped.series[0]
    assert [s.place.order for s in series.slices] == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]
    assert [Path(s.file_name).name for s in series.slices] == [f"IM{i:04d}.dcm" for i in range(6)]
    assert series.info.positions_in_mm and series.info.description == "AX T1 POST"
    # Hashes, never the UIDs or the patient's name or id.
    text = repr(series.info)
    for secret in ("1.2.826", "Doe", "MRN12345"):
        assert secret not in text
    assert "PatientName" not in series.slices[0].scan.meta


def test_two_series_of_one_study_and_instance_number_fallback() -> None:
    slices = stack(4)
    a = dicom_series(slices, series_uid="1.2.3.4.1")
    b = [
        (f"B{i}.dcm", dicom_slice(p, i, series_uid="1.2.3.4.2", orientation=(0, 1, 0, 0, 0, -1)))
        for i, p in enumerate(slices)
    ]
    grouped = group_files(_files(a + b))
    assert len(grouped.series) == 2
    assert len({s.info.study_key for s in grouped.series}) == 1
    assert len({s.info.series_key for s in grouped.series}) == 2


def test_enhanced_multiframe_frames_are_ordered_by_their_plane_positions() -> None:
    slices = stack(5)
    series = group_files([NamedFile("mf.dcm", enhanced_dicom(slices, spacing=4.0))]).series[0]
    assert [s.scan.frame for s in series.slices] == [4, 3, 2, 1, 0]  # frame 0 is the top slice
    assert [s.place.order for s in series.slices] == [0.0, 4.0, 8.0, 12.0, 16.0]
    assert len({s.place.instance_key for s in series.slices}) == 5


def test_mixed_sizes_and_orientations_keep_the_majority_and_name_the_rest() -> None:
    slices = stack(5)
    pairs = dicom_series(slices)
    pairs.append(("LOC.dcm", dicom_slice(stack(1, shape=(96, 96))[0], 9)))
    pairs.append(("COR.dcm", dicom_slice(slices[0], 10, orientation=(1, 0, 0, 0, 0, -1))))
    grouped = group_files(_files(pairs))
    series = grouped.series[0]
    assert len(series.slices) == 5
    reasons = dict(series.refused)
    assert "not the same stack" in reasons["study/LOC.dcm"] and "96x96" in reasons["study/LOC.dcm"]
    assert "orientation" in reasons["study/COR.dcm"]


def test_same_instance_uid_with_different_content_in_one_upload_keeps_the_first() -> None:
    slices = stack(3)
    pairs = dicom_series(slices)
    pairs.append(("DUP.dcm", dicom_slice(slices[2] // 2, 0)))  # SOP UID of slice 0, other pixels
    series = group_files(_files(pairs)).series[0]
    assert len(series.slices) == 3
    assert "same SOPInstanceUID but different content" in dict(series.refused)["study/DUP.dcm"]


def test_image_folder_is_a_series_lone_files_stay_single() -> None:
    import cv2

    slices = stack(3)
    png = [cv2.imencode(".png", s)[1].tobytes() for s in slices]
    files = [NamedFile(f"case7/s{i + 1}0.png" if i else "case7/s2.png", png[i], ("case7",)) for i in range(3)]
    files.append(NamedFile("alone/x.png", png[0], ("alone",)))
    files.append(NamedFile("loose.png", png[1]))
    grouped = group_files(files)
    assert len(grouped.series) == 1 and grouped.series[0].info.source == "images"
    assert [s.file_name for s in grouped.series[0].slices] == ["case7/s2.png", "case7/s20.png", "case7/s30.png"]
    assert sorted(f.name for f in grouped.singles) == ["alone/x.png", "loose.png"]
    assert not group_files(files, folder_series=False).series


# ----- geometry -----------------------------------------------------------------------------


def test_stack_geometry_spacing_and_missing_slices() -> None:
    g = stack_geometry([0, 5, 10, 25, 30], in_mm=True, header_spacing=6.0)
    assert g.spacing_mm == 5.0 and g.missing == 2 and g.gaps == ((10.0, 25.0),)
    g = stack_geometry([1, 2, 3, 6], in_mm=False, header_spacing=None)
    assert g.spacing_mm is None and g.missing == 2
    assert stack_geometry([3.0], in_mm=True, header_spacing=4.0).spacing_mm == 4.0


def test_volume_ml() -> None:
    assert volume_ml([100.0, 200.0], 5.0) == pytest.approx(1.5)
    assert volume_ml([100.0, None], 5.0) is None
    assert volume_ml([100.0], None) is None
    assert volume_ml([], 5.0) == 0.0
