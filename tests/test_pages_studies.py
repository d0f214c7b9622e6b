"""Study worklist and stack viewer through streamlit's AppTest (issue 18), with tiny random models."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.model_fixtures import make_tiny_weights
from tests.series_fixtures import dicom_series, stack
from triage.config import get_settings
from triage.service import TriageService
from triage.studies import list_studies
from triage.ui import state
from triage.ui.uploads import process_uploads
from triage.worklist import Worklist

pytestmark = pytest.mark.slow  # full pages

APP = str(REPO / "app.py")
TIMEOUT = 120


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture
def core(tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TRIAGE_WEIGHTS_DIR", str(tiny_weights))
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("TRIAGE_HIDE_FILE_NAMES", raising=False)  # names hidden, as by default
    st.cache_resource.clear()
    st.cache_data.clear()
    settings = get_settings()
    yield TriageService(settings), Worklist(settings.db_path)
    st.cache_resource.clear()
    st.cache_data.clear()


def _by_label(widgets, label: str):
    found = [w for w in widgets if w.label == label]
    assert found, f"no widget labelled {label!r}; have {[w.label for w in widgets]}"
    return found[0]


def test_study_worklist_and_stack_viewer(core) -> None:
    service, wl = core
    rows = process_uploads([(f"exam/{n}", d) for n, d in dicom_series(stack(6), spacing=5.0)], service, wl)
    n = sum(r["status"] == "accepted" for r in rows)
    assert n >= 2, rows
    (study,) = list_studies(wl)

    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert [m.value for m in at.metric][:4] == ["1", "1", str(int(study.n_flagged > 0)), str(n)]
    table = at.dataframe[0].value
    assert len(table) == 1 and table["slices"][0] == n and table["name"][0] == "AX T1 POST"
    assert table["scan_id"][0] == study.key_scan_id and table["sequence"][0] == "MR · AX T1 POST"
    assert any("1 series" in e.label for e in at.expander)

    _by_label(at.button, "Open").click().run()
    assert not at.exception and at.title[0].value == "Case review"
    assert at.session_state[state.SELECTED_CASE] == study.key_scan_id
    slider = _by_label(at.slider, "Slice")
    key_position = study.series[0].key_position
    assert slider.value == key_position and slider.max == n
    assert any(f"slice {key_position} of {n}" in h.value for h in at.subheader)
    assert "mL" in next(m for m in at.metric if m.label == "Tumour volume").value
    assert len(at.get("plotly_chart")) == 3  # the viewer, the probabilities and the stack plot

    ids = [c.scan_id for c in wl.series_cases(study.series[0].series_key)]
    target = 1 if key_position != 1 else 2
    _by_label(at.slider, "Slice").set_value(target).run()
    assert not at.exception
    assert at.session_state[state.SELECTED_CASE] == ids[target - 1]
    assert any(f"slice {target} of {n}" in h.value for h in at.subheader)
    _by_label(at.button, "Key slice").click().run()
    assert at.session_state[state.SELECTED_CASE] == study.key_scan_id
    assert _by_label(at.slider, "Slice").value == key_position

    # Reviewing one slice of the study shows on the study row as partly reviewed.
    _by_label(at.text_input, "Reviewer").input("Dr Stack")
    _by_label(at.button, "Save review").click().run()
    assert not at.exception
    at.switch_page("views/worklist.py").run()
    assert at.dataframe[0].value["review"][0] == ("confirmed" if n == 1 else "partly reviewed")

    # One sign-off for the whole study, from the stack viewer; then its PDF report.
    at.switch_page("views/case_review.py").run()
    _by_label(at.text_input, "Study reviewer").input("Dr Stack")
    _by_label(at.text_area, "Study note (findings)").input("right frontal mass")
    _by_label(at.button, "Sign off study").click().run()
    assert not at.exception
    assert wl.study_review(study.study_key)["reviewer"] == "Dr Stack"
    assert {c.review_status for c in wl.series_cases(study.series[0].series_key)} == {"signed_off"}
    assert any("Study signed off by" in str(e.value) for e in at.success)
    at.switch_page("views/worklist.py").run()
    assert "nothing left to read" in " ".join(i.value for i in at.info)  # signed off: out of "To read"
    at.radio(key=state.WORKLIST_VIEW).set_value("Signed off").run()
    assert at.dataframe[0].value["review"][0] == "signed off"
    at.switch_page("views/case_review.py").run()
    _by_label(at.button, "Prepare study report").click().run()
    assert not at.exception
    _, _, pdf = at.session_state[state.STUDY_REPORT]
    assert pdf.startswith(b"%PDF")
    assert any(getattr(e, "label", "") == "Download report (PDF)" for e in at.get("download_button"))


def test_new_scans_page_takes_a_nifti_volume_as_one_study(core) -> None:
    import numpy as np

    from tests.series_fixtures import lps_volume_from_slices, nifti_bytes

    _, wl = core
    volume, affine = lps_volume_from_slices(stack(4).astype(np.float32))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page("views/new_scans.py").run()
    at.file_uploader[0].set_value([("head.nii.gz", nifti_bytes(volume, affine), "application/gzip")]).run()
    _by_label(at.button, "Analyse 1 file").click().run()
    assert not at.exception
    added = wl.count()
    assert added >= 1 and f"{added} added to the worklist" in "\n".join(str(s.value) for s in at.success)
    at.switch_page("views/worklist.py").run()
    table = at.dataframe[0].value
    assert len(table) == 1 and table["slices"][0] == added
    assert table["name"][0].startswith("study ")  # names hidden by default: not the file name
