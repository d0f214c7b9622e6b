"""The DICOM intake gate: a file's Modality and BodyPartExamined decide before any pixel does."""

import pydicom
import pytest
from pydicom.data import get_testdata_file

from tests.model_fixtures import make_tiny_weights
from triage.brain_check import dicom_reason
from triage.config import get_settings
from triage.service import TriageService


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"Modality": "MR"}, None),
        ({"Modality": "MR", "BodyPartExamined": "BRAIN"}, None),
        ({"Modality": "MR", "BodyPartExamined": "HEAD"}, None),
        ({}, None),  # no tags (PNG, or DICOM without them): the pixel checks and the OOD score decide
        ({"Modality": "CT"}, "Modality is CT"),
        ({"Modality": "MR", "BodyPartExamined": "LSPINE"}, "BodyPartExamined is LSPINE"),
        ({"Modality": "mr", "BodyPartExamined": "knee"}, "BodyPartExamined is KNEE"),
    ],
)
def test_dicom_reason(meta, expected):
    reason = dicom_reason(meta)
    assert (reason is None) if expected is None else (expected in reason)


def test_pydicom_ct_is_refused_and_mr_is_not(tmp_path):
    service = TriageService(get_settings(weights_dir=make_tiny_weights(tmp_path / "w"), data_dir=tmp_path / "d"))
    ct = open(get_testdata_file("CT_small.dcm"), "rb").read()
    (r,) = service.analyze_bytes(ct, "CT_small.dcm")
    assert r.status == "rejected" and "Modality is CT" in r.error
    mr_path = get_testdata_file("MR_small.dcm")
    assert pydicom.dcmread(mr_path).Modality == "MR"
    (r,) = service.analyze_bytes(open(mr_path, "rb").read(), "MR_small.dcm")
    assert "Modality" not in r.error
