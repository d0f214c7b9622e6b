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


def test_a_tumour_mask_uploaded_as_a_scan_is_refused(tmp_path, synthetic_slice):
    """A binary mask (PNG, or JPEG-compressed) is not a slice; a real slice with little head is one."""
    import cv2

    from triage.brain_check import midtone_share

    img, mask = synthetic_slice()
    service = TriageService(get_settings(weights_dir=make_tiny_weights(tmp_path / "w"), data_dir=tmp_path / "d"))
    for ext in (".png", ".jpg"):
        data = cv2.imencode(ext, mask.astype("uint8") * 255)[1].tobytes()
        (r,) = service.analyze_bytes(data, f"mask{ext}")
        assert r.status == "rejected" and "mask" in r.error, r.error
    (ok,) = service.analyze_bytes(cv2.imencode(".png", img)[1].tobytes(), "slice.png")
    assert ok.status == "ok"
    assert midtone_share(img) > 0.05


def test_real_masks_are_refused_and_a_sparse_real_slice_is_not(shared_data):
    """Measured on the shared data: masks have no mid-tones, an end slice with little brain still has some."""
    from triage.brain_check import MIN_MIDTONE_SHARE, midtone_share
    from triage.io import read_scans

    settings = get_settings()
    lgg = shared_data / "tcga_lgg_sites" / "images" / "TCGA_DU_7300_19910814"
    for path in (lgg / "TCGA_DU_7300_19910814_1_flair.jpg",):
        if path.is_file():
            assert midtone_share(read_scans(path.read_bytes(), path.name, settings)[0].pixels) > MIN_MIDTONE_SHARE
    masks = sorted((shared_data / "brisc2025" / "segmentation_task" / "test" / "masks").glob("*.png"))[:20]
    assert masks, "BRISC test masks not found"
    for path in masks:
        px = read_scans(path.read_bytes(), path.name, settings)[0].pixels
        if int(px.max()) - int(px.min()) > 16:  # an empty mask is already refused as blank
            assert midtone_share(px) < MIN_MIDTONE_SHARE, path.name
