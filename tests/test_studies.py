"""Studies in the worklist (issue 18): series ingestion with tiny models, re-sends, duplicates, same UID with
different content, study summaries (key slice, counts, volume), the v2 -> v3 migration and the CLI's study CSV."""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from tests.model_fixtures import make_tiny_weights
from tests.series_fixtures import dicom_series, dicom_slice, lps_volume_from_slices, nifti_bytes, stack
from triage.config import get_settings
from triage.io import read_scans
from triage.records import Case
from triage.series import NamedFile, group_files
from triage.service import TriageService
from triage.studies import list_studies, summarize_studies
from triage.ui.uploads import process_uploads
from triage.worklist import SCHEMA_VERSION, Worklist


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_weights(tmp_path_factory.mktemp("w"))


@pytest.fixture
def env(weights: Path, tmp_path: Path):
    settings = get_settings(weights_dir=weights, data_dir=tmp_path / "data", hide_file_names=False)
    return TriageService(settings), Worklist(settings.db_path)


def _upload(env, pairs, folder: str = "exam") -> list[dict]:
    service, wl = env
    return process_uploads([(f"{folder}/{n}", d) for n, d in pairs], service, wl)


def test_a_dicom_series_becomes_one_study_of_ordered_slices(env) -> None:
    _, wl = env
    slices = stack(6)
    rows = _upload(env, dicom_series(slices, spacing=5.0))
    assert [r["status"] for r in rows].count("accepted") + [r["status"] for r in rows].count("rejected") == 6
    (study,) = list_studies(wl)
    accepted = [r for r in rows if r["status"] == "accepted"]
    assert study.n_slices == len(accepted) > 0 and not study.single
    (series,) = study.series
    cases = wl.series_cases(series.series_key)
    assert [c.slice_order for c in cases] == sorted(c.slice_order for c in cases)
    assert study.risk == max(c.risk for c in cases) == study.key_case.risk
    assert series.scan_ids[series.key_position - 1] == study.key_scan_id
    assert study.description == "AX T1 POST" and study.modality == "MR"
    assert study.n_suspicious == sum(c.label != "no_tumor" or "disagreement" in c.flags for c in cases)
    # Volume: the stored tumour areas (mm², from the 0.9 mm pixel spacing) times the 5 mm spacing.
    assert series.spacing_mm == pytest.approx(5.0)
    areas = [c.tumor_area_mm2 for c in cases if c.tumor_area_px > 0]
    assert series.volume_ml == pytest.approx(sum(areas) * 5.0 / 1000.0)
    # No PHI in the database: the patient's name, id and the UIDs never reach it.
    dump = "\n".join(sqlite3.connect(wl.db_path).iterdump())
    for secret in ("Doe^John", "MRN12345", "1.2.826.0.1.3680043.8.498.1"):
        assert secret not in dump
    for c in cases:  # the stored DICOM files are de-identified (PHI not allowed), as single uploads are
        stored = Path(c.stored_path).read_bytes()
        assert b"Doe^John" not in stored and b"MRN12345" not in stored


def test_a_series_sent_in_two_parts_is_completed_and_resends_are_duplicates(env) -> None:
    _, wl = env
    pairs = sorted(dicom_series(stack(6)))
    first = _upload(env, pairs[:3])
    second = _upload(env, pairs)  # everything again: the first three are known
    statuses = [r["status"] for r in second]
    assert statuses.count("already in worklist") == sum(r["status"] == "accepted" for r in first)
    studies = list_studies(wl)
    assert len(studies) == 1 and len(studies[0].series) == 1
    assert studies[0].n_slices == wl.count()
    assert len({c.scan_id for c in wl.list_cases()}) == wl.count()


def test_same_uid_with_different_content_is_refused_and_the_stored_slice_kept(env) -> None:
    _, wl = env
    slices = stack(4)
    _upload(env, dicom_series(slices))
    before = {c.scan_id: c for c in wl.list_cases()}
    wl.review(next(iter(before)), "Dr A", note="read")
    changed = dicom_slice(slices[1][::-1].copy(), 1)  # instance 2's UID, other pixels
    bigger = dicom_slice(stack(1, shape=(160, 160))[0], 7)  # new instance, same series UID, other size
    rows = _upload(env, [("IM0001.dcm", changed)], folder="resend")
    rows += _upload(env, [("IM0007.dcm", bigger)], folder="resend")
    reasons = {Path(r["file"]).name: r for r in rows}
    assert reasons["IM0001.dcm"]["status"] == "rejected"
    assert "already stored with different content" in reasons["IM0001.dcm"]["reason"]
    assert reasons["IM0007.dcm"]["status"] == "rejected" and "same UID" in reasons["IM0007.dcm"]["reason"]
    after = {c.scan_id: c for c in wl.list_cases()}
    assert after.keys() == before.keys()
    assert after[next(iter(before))].note == "read"  # reviews untouched
    assert {r["name"] for r in wl.rejections()} >= {"resend/IM0001.dcm", "resend/IM0007.dcm"}


def test_a_nifti_volume_is_a_study_with_stored_slices_and_volume(env) -> None:
    service, wl = env
    slices = stack(5, tumour_slices=(1, 2, 3))
    volume, affine = lps_volume_from_slices(slices.astype(np.float32))
    affine = affine @ np.diag([0.5, 0.5, 2.0, 1.0])
    data = nifti_bytes(volume, affine)
    rows = process_uploads([("vol.nii.gz", data)], service, wl)
    assert len(rows) == 5 and rows[0]["file"] == "vol.nii.gz [slice 1/5]"
    (study,) = list_studies(wl)
    (series,) = study.series
    assert series.source == "nifti" and series.spacing_mm == pytest.approx(2.0)
    cases = wl.series_cases(series.series_key)
    for c in cases:
        (scan,) = read_scans(Path(c.stored_path).read_bytes(), "x.png")  # the slice as shown
        assert scan.shape == (128, 128)
        assert Path(c.extra["source_path"]).read_bytes() == data  # the volume itself is kept
    areas = [c.tumor_area_mm2 for c in cases if c.tumor_area_px > 0]
    assert all(a == pytest.approx(c.tumor_area_px * 0.25) for a, c in zip(areas, cases) if c.tumor_area_px)
    assert series.volume_ml == pytest.approx(sum(areas) * 2.0 / 1000.0)
    again = process_uploads([("copy.nii.gz", data)], service, wl)
    assert {r["status"] for r in again} <= {"already in worklist", "rejected"}
    assert len(list_studies(wl)) == 1


def test_a_bad_nifti_is_refused_and_nothing_stored_is_lost(env) -> None:
    service, wl = env
    _upload(env, dicom_series(stack(3)))
    n = wl.count()
    rows = process_uploads(
        [("fmri.nii.gz", nifti_bytes(np.zeros((64, 64, 4, 3), np.float32))), ("x.nii", b"junk" * 100)], service, wl
    )
    assert [r["status"] for r in rows] == ["rejected", "rejected"]
    assert "4D" in rows[0]["reason"] and "NIfTI" in rows[1]["reason"]
    assert wl.count() == n and wl.integrity_check() == "ok"


def test_loose_slices_stay_single_studies_and_rank_with_series(env) -> None:
    import cv2

    service, wl = env
    _upload(env, dicom_series(stack(4)))
    loose = cv2.imencode(".png", stack(1, tumour_slices=(0,))[0])[1].tobytes()
    process_uploads([("loose.png", loose)], service, wl)
    studies = list_studies(wl)
    assert len(studies) == 2
    assert [s.risk for s in studies] == sorted((s.risk for s in studies), reverse=True)
    single = next(s for s in studies if s.single)
    assert single.n_slices == 1 and single.volume_ml is None and single.key_case.name == "loose.png"
    assert list_studies(wl, label="meningioma", review_status="signed_off") == []


def test_a_v2_worklist_is_migrated_and_its_cases_are_single_studies(tmp_path: Path) -> None:
    from triage import worklist as wmod

    db = tmp_path / "v2.sqlite3"
    with sqlite3.connect(db) as conn:
        for statement in (*wmod._SCHEMA_V1, *wmod._SCHEMA_V2):
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 2")
        conn.execute(
            "INSERT INTO cases (scan_id, received_at, label, p_no_tumor, p_glioma, p_meningioma, p_pituitary, risk,"
            " review_status, note) VALUES ('old', '2026-01-01T00:00:00+00:00', 'glioma', .1, .7, .1, .1, .9,"
            " 'signed_off', 'kept')"
        )
    wl = Worklist(db)
    case = wl.get("old")
    assert case.series_key is None and case.note == "kept" and case.review_status == "signed_off"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    (study,) = summarize_studies(wl.list_cases(), wl.all_series())
    assert study.single and study.key_scan_id == "old" and study.review_status == "signed_off"


def test_study_review_state_and_key_slice_ties() -> None:
    base = {"received_at": "2026-01-01T00:00:00+00:00", "label": "glioma", "probs": (0.1, 0.7, 0.1, 0.1)}
    cases = [
        Case(**base, scan_id=f"s{i}", study_key="st", series_key="se", slice_order=float(i), risk=r, review_status=st)
        for i, (r, st) in enumerate([(0.2, "signed_off"), (0.8, "unreviewed"), (0.8, "unreviewed")])
    ]
    (study,) = summarize_studies(cases, [{"series_key": "se", "positions_in_mm": False, "spacing_mm": None}])
    assert study.key_scan_id == "s1"  # the earlier of two equal risks
    assert study.review_status == "partly_reviewed" and study.volume_ml is None


def test_cli_study_rows_from_a_series_folder_and_a_nifti(env, tmp_path: Path, weights: Path, monkeypatch) -> None:
    from triage.cli import main

    folder = tmp_path / "in" / "exam"
    folder.mkdir(parents=True)
    for name, data in dicom_series(stack(4), spacing=3.0):
        (folder / name).write_bytes(data)
    volume, affine = lps_volume_from_slices(stack(3).astype(np.float32))
    (tmp_path / "in" / "vol.nii.gz").write_bytes(nifti_bytes(volume, affine))
    monkeypatch.setenv("TRIAGE_WEIGHTS_DIR", str(weights))
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path / "data"))
    out, studies_out = tmp_path / "slices.csv", tmp_path / "studies.csv"
    code = main(["analyze", str(tmp_path / "in"), "--out", str(out), "--studies-out", str(studies_out), "--quiet"])
    assert code == 0
    slices = list(csv.DictReader(out.open()))
    assert len(slices) == 7 and {r["frame"] for r in slices if r["path"].endswith(".nii.gz")} == {"0", "1", "2"}
    studies = list(csv.DictReader(studies_out.open()))
    ok = [r for r in slices if r["status"] == "ok"]
    assert sum(int(s["slices"]) for s in studies) == len(ok)
    assert [float(s["risk"]) for s in studies] == sorted((float(s["risk"]) for s in studies), reverse=True)
    by_desc = {s["description"]: s for s in studies}
    if "AX T1 POST" in by_desc:
        dicom = by_desc["AX T1 POST"]
        assert float(dicom["spacing_mm"]) == pytest.approx(3.0)
        rows = [r for r in ok if r["path"].startswith(str(folder))]
        assert float(dicom["risk"]) == pytest.approx(max(float(r["risk"]) for r in rows))
        areas = [float(r["tumor_area_mm2"]) for r in rows if int(r["tumor_area_px"]) > 0]
        assert float(dicom["tumor_volume_ml"] or 0) == pytest.approx(sum(areas) * 3.0 / 1000, abs=1e-3)


def test_grouping_is_stable_under_file_order() -> None:
    pairs = dicom_series(stack(5))
    a = group_files([NamedFile(n, d) for n, d in pairs]).series[0]
    b = group_files([NamedFile(n, d) for n, d in reversed(pairs)]).series[0]
    assert [s.scan.scan_id for s in a.slices] == [s.scan.scan_id for s in b.slices]
    assert a.info == b.info


def test_one_sign_off_per_study_keeps_slice_corrections_and_audits_each_slice(env) -> None:
    from triage.studies import export_studies_csv
    from triage.worklist import ReviewConflictError, SignedOffError

    _, wl = env
    _upload(env, dicom_series(stack(4)))
    (study,) = list_studies(wl)
    cases = wl.series_cases(study.series[0].series_key)
    corrected = wl.review(cases[0].scan_id, "Dr A", label="meningioma")
    with pytest.raises(ReviewConflictError):  # the reader's page showed slice 0 before the correction
        wl.sign_off_study(study.study_key, "Dr B", expected_revisions={cases[0].scan_id: 0})
    assert wl.study_review(study.study_key) is None
    record = wl.sign_off_study(
        study.study_key, "Dr B", note="one lesion", expected_revisions={cases[0].scan_id: corrected.revision}
    )
    assert record["slices"] == len(cases) and record["note"] == "one lesion"
    after = wl.series_cases(study.series[0].series_key)
    assert {c.review_status for c in after} == {"signed_off"}
    assert after[0].reviewed_label == "meningioma"  # the per-slice correction stays
    assert all(c.reviewed_label == c.label for c in after[1:])
    audited = {a["scan_id"] for a in wl.audit() if a["action"] == "study_sign_off"}
    assert audited == {c.scan_id for c in cases}
    with pytest.raises(SignedOffError):
        wl.sign_off_study(study.study_key, "Dr C")
    (study,) = list_studies(wl)
    assert study.review_status == "signed_off"
    rows = list(csv.DictReader(export_studies_csv(wl, [study]).decode().splitlines()))
    assert rows[0]["reviewer"] == "Dr B" and rows[0]["note"] == "one lesion" and rows[0]["slices"] == str(len(cases))
    assert rows[0]["description"] == "AX T1 POST"


def test_empty_slices_of_a_volume_are_one_result_row_and_one_rejection_entry(env) -> None:
    service, wl = env
    slices = np.concatenate([np.zeros((5, 128, 128), np.uint8), stack(3)])
    volume, affine = lps_volume_from_slices(slices.astype(np.float32))
    rows = process_uploads([("v.nii.gz", nifti_bytes(volume, affine))], service, wl)
    empty = [r for r in rows if "more slices" in r["file"]]
    assert len(empty) == 1 and empty[0]["file"] == "v.nii.gz [slice 1/8] and 4 more slices"
    assert empty[0]["status"] == "rejected" and "blank" in empty[0]["reason"]
    assert [r["name"] for r in wl.rejections()] == ["v.nii.gz (5 slices)"]
    assert len(rows) == 1 + 3


def test_two_patients_image_folders_of_the_same_name_stay_apart(env) -> None:
    import cv2

    service, wl = env
    a, b = stack(3), stack(3, tumour_slices=(0, 1))  # no slice in common
    for imgs in (a, b):
        process_uploads(
            [(f"export/s{i}.png", cv2.imencode(".png", im)[1].tobytes()) for i, im in enumerate(imgs)], service, wl
        )
    studies = [s for s in list_studies(wl) if not s.single]
    assert len(studies) == 2 and sorted(s.n_slices for s in studies) == [3, 3]


def test_import_results_refuses_nifti_rows_with_a_reason(tmp_path: Path) -> None:
    from triage.batch import _case_from_row

    vol = tmp_path / "v.nii.gz"
    vol.write_bytes(nifti_bytes(lps_volume_from_slices(stack(2).astype(np.float32))[0]))
    case, why = _case_from_row({"path": str(vol), "scan_id": "x-z0"}, tmp_path / "r.csv", get_settings())
    assert case is None and "upload the volume" in why
