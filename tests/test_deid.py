"""De-identification of stored DICOM files (issue 19, item 3)."""

from __future__ import annotations

import io
import os

import pydicom
import pytest
from pydicom.data import get_testdata_file

from triage.deid import SECRET_FILE, deid_secret, deidentify_dicom
from triage.errors import InvalidScanError


def _with_phi() -> bytes:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.PatientName = "Doe^John"
    ds.PatientID = "MRN12345"
    ds.PatientBirthDate = "19310417"
    ds.PatientAddress = "1 Main Street, Springfield"
    ds.InstitutionName = "St Elsewhere"
    ds.add_new(0x00091010, "LO", "private vendor note about Doe")
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_identifiers_are_replaced_and_uids_and_pixels_kept(tmp_path):
    data = _with_phi()
    secret = deid_secret(tmp_path)
    out = pydicom.dcmread(io.BytesIO(deidentify_dicom(data, secret)))
    src = pydicom.dcmread(io.BytesIO(data))
    assert str(out.PatientName) != "Doe^John" and out.PatientID != "MRN12345"
    assert out.get("PatientBirthDate", "") != "19310417"
    assert "Springfield" not in str(out.get("PatientAddress", "")) and "Elsewhere" not in str(
        out.get("InstitutionName")
    )
    assert (0x0009, 0x1010) not in out  # private elements removed
    assert "DICOGNITO" in str(out.DeidentificationMethod)  # PatientIdentityRemoved only when no burned-in text
    for uid in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        assert out[uid].value == src[uid].value  # Retain UIDs option
    assert (out.pixel_array == src.pixel_array).all() and out.PixelSpacing == src.PixelSpacing
    raw = deidentify_dicom(data, secret)
    for needle in (b"Doe", b"MRN12345", b"19310417", b"Springfield"):
        assert needle not in raw


def test_pseudonyms_are_stable_per_installation_and_differ_between_installations(tmp_path):
    data = _with_phi()
    a1 = pydicom.dcmread(io.BytesIO(deidentify_dicom(data, deid_secret(tmp_path / "a"))))
    a2 = pydicom.dcmread(io.BytesIO(deidentify_dicom(data, deid_secret(tmp_path / "a"))))
    b = pydicom.dcmread(io.BytesIO(deidentify_dicom(data, deid_secret(tmp_path / "b"))))
    assert a1.PatientID == a2.PatientID and a1.PatientName == a2.PatientName  # a re-sent file: same pseudonym
    assert a1.PatientID != b.PatientID
    assert os.stat(tmp_path / "a" / SECRET_FILE).st_mode & 0o077 == 0  # owner-only


def test_a_file_that_cannot_be_deidentified_is_refused(tmp_path):
    with pytest.raises(InvalidScanError, match="could not be de-identified"):
        deidentify_dicom(b"\x00" * 10, deid_secret(tmp_path))
