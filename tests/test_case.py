"""The worklist's Case record (issue 24): one checked, immutable record on both sides of the worklist."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest

from triage.errors import WorklistError
from triage.records import CLASSES, Case, Flag, ReviewState
from triage.worklist import Worklist


def _case(**kw: object) -> Case:
    values = {"scan_id": "abc", "label": "glioma", "probs": (0.1, 0.7, 0.1, 0.1), "risk": 0.6, **kw}
    return Case(**values)  # type: ignore[arg-type]


@pytest.fixture()
def wl(tmp_path: Path) -> Worklist:
    return Worklist(tmp_path / "worklist.sqlite3")


def test_a_case_is_checked_and_normalised_when_made() -> None:
    case = _case(flags=["uncertain", "a_flag_of_a_newer_version"], received_at="2026-01-02T03:04:05")
    assert case.flags == (Flag.UNCERTAIN, "a_flag_of_a_newer_version") and isinstance(case.flags[0], Flag)
    assert case.received_at == "2026-01-02T03:04:05.000000+00:00"  # naive times are UTC
    assert case.review_status is ReviewState.UNREVIEWED and case.revision == 0 and case.note == ""
    assert case.probabilities == dict(zip(CLASSES, (0.1, 0.7, 0.1, 0.1))) and case.prob("glioma") == 0.7
    assert case.study == "case:abc" and case.effective_label == "glioma"
    when = datetime(2026, 1, 2, 4, 4, 5, tzinfo=UTC)
    assert _case(received_at=when).received_at == "2026-01-02T04:04:05.000000+00:00"
    assert _case().received_at.endswith("+00:00")  # now, when not given


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"label": "tumour"}, "label must be one of"),
        ({"scan_id": ""}, "missing required fields: scan_id"),
        ({"risk": float("nan")}, "risk must be finite"),
        ({"risk": "high"}, "risk must be a number"),
        ({"probs": (0.5, 0.5)}, "probs must have 4 values"),
        ({"probs": (0.1, float("inf"), 0.1, 0.1)}, "p_glioma must be finite"),
        ({"flags": 3}, "flags must be a list of strings"),
        ({"thumbnail": "not bytes"}, "thumbnail must be PNG bytes"),
        ({"thumbnail": bytes(1024 * 1024 + 1)}, "the limit is"),
        ({"truth_label": "tumour"}, "truth_label must be one of"),
        ({"received_at": "yesterday"}, "not an ISO-8601 time"),
        ({"series_key": "se"}, "needs both study_key and series_key"),
        ({"slice_order": float("nan")}, "slice_order must be finite"),
        ({"review_status": "approved"}, "review_status must be one of"),
    ],
)
def test_an_invalid_case_is_refused_with_the_worklist_error(change: dict, message: str) -> None:
    with pytest.raises(WorklistError, match=message):
        _case(**change)


def test_a_case_is_immutable() -> None:
    case = _case()
    with pytest.raises(dataclasses.FrozenInstanceError):
        case.risk = 0.9  # type: ignore[misc]
    assert dataclasses.replace(case, risk=0.9).risk == 0.9 and case.risk == 0.6
    with pytest.raises(WorklistError):
        dataclasses.replace(case, label="tumour")  # a changed copy is checked too


def test_from_mapping_keeps_the_old_dict_contract() -> None:
    case = Case.from_mapping(
        {"scan_id": "m", "label": "no_tumor", "probs": [0.7, 0.1, 0.1, 0.1], "risk": 0.1, "frame": 2, "extra": {"a": 1}}
    )
    assert case.probs == (0.7, 0.1, 0.1, 0.1) and case.extra == {"a": 1, "frame": 2}  # unknown keys: extra
    columns = {"scan_id": "m", "label": "glioma", "risk": 0.5, **{f"p_{c}": 0.25 for c in CLASSES}}
    assert Case.from_mapping(columns).probs == (0.25,) * 4
    with pytest.raises(WorklistError, match="review fields"):
        Case.from_mapping({**columns, "review_status": "signed_off"})
    with pytest.raises(WorklistError, match="missing required fields: p_no_tumor"):
        Case.from_mapping({"scan_id": "y", "label": "glioma", "risk": 0.5})


def test_round_trip_through_sqlite_gives_an_equal_case(wl: Worklist) -> None:
    case = _case(
        name="a.png",
        stored_path="/scans/a.png",
        flags=("uncertain", "ood"),
        ood=True,
        tumor_area_px=12,
        tumor_area_mm2=3.5,
        mask_path="/scans/a_mask.png",
        thumbnail=b"\x89PNG",
        classifier_version="clf-1",
        segmenter_version="seg-1",
        truth_label="meningioma",
        study_key="st",
        series_key="se",
        instance_key="in",
        slice_order=2.0,
        extra={"frame": None, "pixel_spacing": (0.5, 0.5), "dicom": {"Modality": "MR"}},
    )
    assert wl.add_case(case) is True
    back = wl.get("abc")
    assert isinstance(back, Case) and back == case
    assert back.extra["pixel_spacing"] == [0.5, 0.5]  # stored as JSON: the record holds what is stored
    assert wl.add_case(case) is False  # already present: the same bool as before


def test_every_case_read_is_a_case(wl: Worklist) -> None:
    wl.add_case(_case(scan_id="a", study_key="st", series_key="se", instance_key="i1", slice_order=0.0))
    wl.add_case({"scan_id": "b", "label": "no_tumor", "risk": 0.1, "probs": (0.7, 0.1, 0.1, 0.1)})  # a dict still works
    assert all(isinstance(c, Case) for c in wl.list_cases()) and [c.scan_id for c in wl.list_cases()] == ["a", "b"]
    assert [c.scan_id for c in wl.series_cases("se")] == ["a"] and wl.find_instance("i1").scan_id == "a"
    reviewed = wl.review("a", "dr_a", label="meningioma")
    assert isinstance(reviewed, Case) and reviewed.review_status == ReviewState.CORRECTED and reviewed.revision == 1
    assert reviewed.effective_label == "meningioma" and reviewed.reviewed
    assert [c.scan_id for c in wl.reviewed_cases()] == ["a"]
    assert isinstance(wl.set_truth("b", "glioma"), Case)
    signed = wl.review("a", "dr_a", sign_off=True)
    assert isinstance(wl.addendum("a", "dr_b", "later"), Case) and signed.review_status == "signed_off"


def test_a_reviewed_case_cannot_be_added(wl: Worklist) -> None:
    wl.add_case(_case())
    reviewed = wl.review("abc", "dr_a")
    with pytest.raises(WorklistError, match="review fields"):
        wl.add_case(dataclasses.replace(reviewed, scan_id="copy"))
    assert wl.count() == 1


def test_as_row_is_the_csv_and_json_view(wl: Worklist) -> None:
    row = _case(flags=("uncertain",)).as_row()
    assert row["p_glioma"] == 0.7 and row["flags"] == ["uncertain"] and type(row["flags"][0]) is str
    assert "probs" not in row and row["review_status"] == "unreviewed"
    wl.add_case(_case(name="=cmd|x"))
    text = wl.export_csv(hide_names=False).decode()
    assert text.splitlines()[0].startswith("scan_id,name,") and "'=cmd|x" in text
