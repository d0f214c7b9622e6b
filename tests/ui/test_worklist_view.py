"""The Worklist page's view of the core (triage.ui.worklist_view): studies and the two CSV exports."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from triage.records import Case
from triage.ui.worklist_view import cases_csv, list_studies, studies_csv
from triage.worklist import Worklist


def _case(scan_id: str, risk: float, **kw: object) -> Case:
    return Case(scan_id=scan_id, label="glioma", probs=(0.1, 0.7, 0.1, 0.1), risk=risk, name=f"{scan_id}.png", **kw)


def test_cases_csv_holds_every_slice_of_the_listed_studies_only(tmp_path: Path) -> None:
    wl = Worklist(tmp_path / "w.sqlite3")
    wl.add_case(_case("a1", 0.9, study_key="st", series_key="se", slice_order=0.0))
    wl.add_case(_case("a2", 0.2, study_key="st", series_key="se", slice_order=1.0))
    wl.add_case(_case("loose", 0.5))
    wl.review("a1", "dr_a", sign_off=True)
    everything = list_studies(wl)
    assert [s.study_key for s in everything] == ["st", "case:loose"]
    to_read = list_studies(wl, review_status="unreviewed")  # a study with an unreviewed slice
    assert [s.study_key for s in to_read] == ["st", "case:loose"]
    rows = list(csv.DictReader(io.StringIO(cases_csv(wl, everything[:1], hide_names=False).decode())))
    assert [r["scan_id"] for r in rows] == ["a1", "a2"] and rows[0]["review_status"] == "signed_off"
    assert rows[0]["p_glioma"] == "0.7" and "thumbnail" not in rows[0]
    hidden = list(csv.DictReader(io.StringIO(cases_csv(wl, everything[1:], hide_names=True).decode())))
    assert [r["name"] for r in hidden] == ["case loose"]
    studies = list(csv.DictReader(io.StringIO(studies_csv(wl, everything, hide_names=True).decode())))
    assert [s["key_scan_id"] for s in studies] == ["a1", "loose"] and studies[0]["slices"] == "2"
