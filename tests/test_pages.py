"""Every page through streamlit's AppTest, with tiny random models and a temporary data folder.

The upload logic is tested directly (``triage.ui.uploads.process_uploads``) and through the
New scans page's file uploader; the review flow goes Worklist -> Case review -> sign off ->
audit row.
"""

from __future__ import annotations

import io
import shutil
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the pages import `triage` from the repository
    sys.path.insert(0, str(REPO))

from tests.model_fixtures import make_tiny_weights
from triage.config import get_settings
from triage.records import CLASSES
from triage.service import TriageService
from triage.ui import state
from triage.ui.format import escape_md
from triage.ui.uploads import UploadItem, expand_zip, match_masks, process_uploads
from triage.worklist import Worklist

# Slow tier: real models, training runs, subprocesses or full pages (`pytest -m 'not slow'` skips them).
pytestmark = pytest.mark.slow

APP = str(REPO / "app.py")
TIMEOUT = 120  # seconds per script run: the CPU may be shared with training jobs
GLIOMA = "classification_task/test/glioma/brisc2025_test_00001_gl_ax_t1.jpg"
GLIOMA_MASK = "segmentation_task/test/masks/brisc2025_test_00001_gl_ax_t1.png"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny classifier + segmenter for the whole module (tests never modify them)."""
    return make_tiny_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture
def app_env(tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Settings pointing at the tiny weights and an empty data folder; caches cleared around the test."""
    monkeypatch.setenv("TRIAGE_WEIGHTS_DIR", str(tiny_weights))
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TRIAGE_HIDE_FILE_NAMES", "0")  # these tests follow files by name
    st.cache_resource.clear()
    st.cache_data.clear()
    yield get_settings()
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture
def core(app_env):
    """A service and worklist on the same folders the app uses."""
    return TriageService(app_env), Worklist(app_env.db_path)


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def _app(page: str | None = None) -> AppTest:
    """The app through its router (app.py), after a first run of the default page, then ``page``."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    if page is not None:
        at.switch_page(page).run()
    return at


def _texts(at: AppTest) -> str:
    """All visible text of the usual text elements, joined (for substring checks)."""
    parts = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "success", "warning", "error"):
        parts.extend(str(e.value) for e in getattr(at, kind))
    return "\n".join(parts)


def _by_label(widgets, label: str):
    found = [w for w in widgets if w.label == label]
    assert found, f"no widget labelled {label!r}; have {[w.label for w in widgets]}"
    return found[0]


# ----- upload logic (no app) -------------------------------------------------------------


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return buf.getvalue()


def test_expand_zip_refuses_unsafe_members_and_caps_size() -> None:
    data = _zip(
        {
            "scans/glioma/a.png": b"x" * 10,
            "../evil.png": b"e",
            "/abs.png": b"a",
            "C:/win.png": b"w",
            "__MACOSX/scans/._a.png": b"junk",
            "scans/.DS_Store": b"junk",
            "scans/b.png": b"y" * 10,
        }
    )
    items, skipped = expand_zip("batch.zip", data)
    assert [i.name for i in items] == ["batch.zip/scans/glioma/a.png", "batch.zip/scans/b.png"]
    assert items[0].folders == ("batch.zip", "scans", "glioma")
    reasons = {r["file"]: r["reason"] for r in skipped}
    assert "'..'" in reasons["batch.zip/../evil.png"]
    assert "absolute" in reasons["batch.zip//abs.png"] and "absolute" in reasons["batch.zip/C:/win.png"]

    few, skipped = expand_zip("batch.zip", data, max_members=2)
    assert len(few) == 1 and any("limit is 2 files" in r["reason"] for r in skipped)
    capped, skipped = expand_zip("batch.zip", data, max_total_bytes=15)
    assert len(capped) == 1 and any("extraction stopped" in r["reason"] for r in skipped)
    _, skipped = expand_zip("bad.zip", b"PK\x03\x04 truncated")
    assert skipped[0]["status"] == "rejected" and "zip" in skipped[0]["reason"]


def test_match_masks_by_stem() -> None:
    images = [UploadItem("a/x.jpg", b"1"), UploadItem("y.png", b"2"), UploadItem("z.png", b"3")]
    masks = [UploadItem("m/x_mask.png", b"mx"), UploadItem("Y.png", b"my")]
    assert match_masks(images, masks) == {"a/x.jpg": b"mx", "y.png": b"my"}


def test_process_uploads_zip_folder_labels_masks_and_bad_files(core, synthetic_slice) -> None:
    service, wl = core
    img, mask = synthetic_slice()
    archive = _zip({"study/glioma/a.png": _png(img), "../evil.png": _png(img), "study/notes.txt": b"hello"})
    masks = _zip({"a_mask.png": _png(mask.astype(np.uint8) * 255)})
    seen = []
    rows = process_uploads(
        [("study.zip", archive), ("empty.png", b"")],
        service,
        wl,
        label_from_folder=True,
        masks=[("masks.zip", masks)],
        progress=lambda d, t, n: seen.append((d, t)),
    )
    by_file = {r["file"]: r for r in rows}
    good = by_file["study.zip/study/glioma/a.png"]
    assert good["status"] == "accepted" and good["truth"] == "glioma" and "mask" in good["reason"]
    assert by_file["study.zip/../evil.png"]["status"] == "rejected"
    assert by_file["study.zip/study/notes.txt"]["status"] == "rejected"
    assert by_file["empty.png"]["status"] == "rejected" and "empty" in by_file["empty.png"]["reason"]
    assert seen[-1] == (3, 3)
    case = wl.get(good["scan_id"])
    assert case.truth_label == "glioma" and Path(case.truth_mask_path).is_file()
    rejected = {r["name"] for r in wl.rejections()}
    assert {"study.zip/../evil.png", "notes.txt", "empty.png"} <= rejected

    again = process_uploads([("a.png", _png(img))], service, wl)
    assert again[0]["status"] == "already in worklist" and wl.count() == 1


def test_process_uploads_survives_an_exception(core, synthetic_slice, monkeypatch) -> None:
    service, wl = core
    img, _ = synthetic_slice()
    real = service.analyze_bytes

    def flaky(data, name, explain=False, **kwargs):
        if name == "boom.png":
            raise RuntimeError("disk on fire")
        return real(data, name, explain=explain)

    monkeypatch.setattr(service, "analyze_bytes", flaky)
    rows = process_uploads([("boom.png", _png(img)), ("fine.png", _png(img[::-1].copy()))], service, wl)
    assert [r["status"] for r in rows] == ["error", "accepted"]
    assert "internal error" in rows[0]["reason"] and "disk on fire" not in rows[0]["reason"]  # text: log only
    assert any(r["name"] == "boom.png" for r in wl.rejections())


# ----- pages -----------------------------------------------------------------------------


def test_worklist_page_empty(app_env) -> None:
    at = _app()
    assert not at.exception
    assert at.title[0].value == "Worklist"
    assert "worklist is empty" in _texts(at)
    assert [m.value for m in at.metric][:3] == ["0", "0", "0"]


def test_upload_review_sign_off_flow(core, shared_data: Path) -> None:
    service, wl = core
    image = shared_data / "brisc2025" / GLIOMA
    mask = shared_data / "brisc2025" / GLIOMA_MASK
    if not image.is_file() or not mask.is_file():
        pytest.skip(f"BRISC slice {GLIOMA} not in the shared data")
    rows = process_uploads(
        [(image.name, image.read_bytes()), ("notes.txt", b"not a scan")],
        service,
        wl,
        truth_label="glioma",
        masks=[(mask.name, mask.read_bytes())],
    )
    assert [r["status"] for r in rows] == ["accepted", "rejected"]
    scan_id = rows[0]["scan_id"]

    at = _app()
    assert not at.exception
    table = at.dataframe[0].value
    assert table["name"].tolist() == [image.name]
    assert table["thumbnail"][0].startswith("data:image/png;base64,")
    assert "notes.txt" in at.dataframe[1].value["name"].tolist()  # rejected uploads expander
    _by_label(at.selectbox, "Review status").select("signed_off").run()
    assert "No case matches" in _texts(at)
    _by_label(at.selectbox, "Review status").select("All").run()

    _by_label(at.button, "Open").click().run()  # the selectbox fallback opens the selected case
    assert not at.exception
    assert at.title[0].value == "Case review"
    assert at.session_state[state.SELECTED_CASE] == scan_id
    text = _texts(at)
    assert "untrained model" in text
    # One viewer (issue 16): the slice with the predicted (red) and true (green) outlines, heatmap off.
    assert len(at.get("plotly_chart")) == 2  # the viewer and the probabilities
    viewer_caption = next(c.value for c in at.caption if "scroll to zoom" in c.value)
    assert "red: predicted outline" in viewer_caption and "green: ground truth" in viewer_caption
    assert "Dice" in _texts(at) and "heatmap:" not in viewer_caption
    assert any("Brain crop" in c for img in at.image for c in img.captions)
    _by_label(at.toggle, "Truth").set_value(False).run()
    assert "green" not in next(c.value for c in at.caption if "scroll to zoom" in c.value)
    _by_label(at.toggle, "Heatmap").set_value(True).run()
    # The default map is the segmenter's Seg-Grad-CAM (the one that points at the lesion; Model page).
    assert "where the segmenter finds tumour" in next(c.value for c in at.caption if "scroll to zoom" in c.value)
    assert not [e for e in at.error if "Heatmap unavailable" in e.value]
    assert _by_label(at.selectbox, "Heatmap method").value == "seg-gradcam"
    _by_label(at.selectbox, "Heatmap method").select("eigencam").run()
    assert not at.exception
    assert "Eigen-CAM" in next(c.value for c in at.caption if "scroll to zoom" in c.value)
    assert _by_label(at.slider, "Window").value == 256
    _by_label(at.selectbox, "Window preset").select("High contrast").run()
    narrow = _by_label(at.slider, "Window").value
    assert narrow < 256 and f"W {narrow} /" in next(c.value for c in at.caption if "scroll to zoom" in c.value)
    _by_label(at.slider, "Level").set_value(100).run()
    assert _by_label(at.selectbox, "Window preset").value == "Custom"
    _by_label(at.text_input, "Reviewer").input("Dr Test")
    _by_label(at.selectbox, "Label (confirm or correct)").select("glioma")
    _by_label(at.text_area, "Note").input("enhancing mass, left")
    _by_label(at.button, "Sign off").click().run()
    assert not at.exception
    case = wl.get(scan_id)
    assert case.review_status == "signed_off" and case.reviewed_label == "glioma"
    assert case.reviewer == "Dr Test" and case.note == "enhancing mass, left"
    assert "Signed off by Dr Test" in _texts(at)
    audit = at.dataframe[-1].value
    assert "sign off" in audit["action"].tolist() and "Dr Test" in audit["who"].tolist()
    assert at.session_state[state.REVIEWER] == "Dr Test"


def test_new_scans_page_uploads_files(app_env, synthetic_slice) -> None:
    img, _ = synthetic_slice()
    at = _app("views/new_scans.py")
    assert not at.exception and at.title[0].value == "New scans"
    at.file_uploader[0].set_value(
        [("synthetic.png", _png(img), "image/png"), ("broken.png", b"\x89PNG\r\n\x1a\nbroken", "image/png")]
    ).run()
    _by_label(at.button, "Analyse 2 files").click().run()
    assert not at.exception
    text = _texts(at)
    assert "1 added to the worklist" in text and "1 file(s) were not added" in text
    assert at.session_state[state.UPLOAD_NONCE] == 1  # uploaders were reset
    assert at.dataframe[0].value["file"].tolist() == ["synthetic.png"]
    assert at.dataframe[1].value["file"].tolist() == ["broken.png"]

    at.switch_page("views/worklist.py").run()
    assert at.dataframe[0].value["name"].tolist() == ["synthetic.png"]
    assert [m.value for m in at.metric][:2] == ["1", "1"]


def test_case_review_with_missing_file(core, synthetic_slice) -> None:
    service, wl = core
    img, _ = synthetic_slice()
    rows = process_uploads([("gone.png", _png(img))], service, wl)
    case = wl.get(rows[0]["scan_id"])
    Path(case.stored_path).unlink()
    at = _app()
    at.session_state[state.SELECTED_CASE] = case.scan_id
    at.switch_page("views/case_review.py").run()
    assert not at.exception
    # The analysis stored at intake still shows the slice; the reader is told the file is gone.
    assert any("stored image file is missing" in e.value for e in at.warning)
    assert at.session_state[state.SELECTED_CASE] == case.scan_id
    _by_label(at.text_input, "Reviewer").input("Dr Who")
    _by_label(at.button, "Save review").click().run()
    assert wl.get(case.scan_id).review_status == "confirmed"


def test_case_review_empty_worklist(app_env) -> None:
    at = _app("views/case_review.py")
    assert not at.exception
    assert "No case to review" in _texts(at)


def test_model_page(app_env, tmp_path, monkeypatch) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "eval-brisc.md").write_text("# Evaluation on BRISC\n\naccuracy 0.9\n", encoding="utf-8")
    monkeypatch.setattr("triage.ui.model_card.REPORTS_DIR", reports)
    at = _app("views/model.py")
    assert not at.exception
    text = _texts(at)
    for needle in (
        "Tumor classifier",
        "Tumor segmenter",
        "NOT for",
        "Risk policy",
        "untrained placeholders",
        "metastases",
        "Evaluation on BRISC",
    ):
        assert needle in text, needle
    assert "eval-brisc.md" in [e.label for e in at.expander]
    assert "No model change recorded" in text
    assert "Not measured yet" in text  # no heatmap localisation report in this reports folder


def test_model_page_reports_heatmap_localisation(app_env, tmp_path, monkeypatch) -> None:
    import json

    rows = [
        {"model": m, "layer": la, "method": me, "slices": 200, "pointing_game": pg, "pointing_game_ci95": [pg - 0.05, pg],
         "energy_in_mask_median": 0.2, "mask_share_median": 0.015}
        for m, la, me, pg in (("classifier", "bn2", "gradcam", 0.135), ("segmenter", "decoder.blocks.2", "seg-gradcam", 0.965))
    ]  # fmt: skip
    report = {"split": "BRISC test tumour slices with masks", "measured": "2026-12-02", "target_pointing_game": 0.8}
    (tmp_path / "heatmap_localisation.json").write_text(json.dumps({**report, "rows": rows}), encoding="utf-8")
    monkeypatch.setattr("triage.ui.model_card.REPORTS_DIR", tmp_path)
    at = _app("views/model.py")
    assert not at.exception
    text = _texts(at)
    assert "Seg-Grad-CAM of the segmenter" in text and "only map that reaches the target" in text
    shown = [df.value for df in at.dataframe if "pointing game" in df.value.columns]
    assert len(shown) == 1 and shown[0]["pointing game"].tolist() == [0.135, 0.965]
    # The same report with no method reaching the target says so instead.
    low = [{**r, "pointing_game": 0.3} for r in rows]
    (tmp_path / "heatmap_localisation.json").write_text(json.dumps({**report, "rows": low}), encoding="utf-8")
    at = _app("views/model.py")
    assert "No heatmap method reaches the target" in _texts(at)


def test_model_page_shows_the_model_change_log(app_env) -> None:
    from triage.lifecycle.promotion import ModelChange, record_change

    record_change(
        app_env.data_dir,
        ModelChange("2026-12-02T05:00:00+00:00", "classifier", "v1", "tiny", "dr a", "rollback", "v1 missed gliomas"),
    )
    at = _app("views/model.py")
    assert not at.exception
    (log,) = [d.value for d in at.dataframe if "reason" in d.value.columns]
    assert log.iloc[0]["reason"] == "v1 missed gliomas" and log.iloc[0]["by"] == "dr a"


def test_status_page(app_env) -> None:
    from triage.backup import backup

    at = _app("views/status.py")
    assert not at.exception
    text = _texts(at)
    assert "no backup of this data folder yet" in text
    tables = {tuple(d.value.columns): d.value for d in at.dataframe}
    versions = tables[("component", "version")]
    assert "tiny (onnx)" in list(versions["version"]) or "tiny (torch)" in list(versions["version"])
    assert "worklist database" in list(tables[("part", "size", "files")]["part"])
    backup(app_env, app_env.data_dir.parent / "backups")
    at.run()
    assert "no backup of this data folder yet" not in _texts(at) and "integrity check" in _texts(at)


def test_pages_without_models(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TRIAGE_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path / "data"))
    st.cache_resource.clear()
    at = _app()
    assert not at.exception
    for page in ("views/new_scans.py", "views/model.py"):
        at.switch_page(page).run()
        assert not at.exception
        assert any("No usable model" in e.value for e in at.error), page
    at.switch_page("views/status.py").run()
    assert not at.exception
    assert any(
        "cannot be used" in w.value or "does not exist" in w.value or "no active" in w.value.lower() for w in at.warning
    )
    st.cache_resource.clear()


def _open_case(scan_id: str) -> AppTest:
    at = _app()
    at.session_state[state.SELECTED_CASE] = scan_id
    at.switch_page("views/case_review.py").run()
    assert not at.exception
    return at


def _two_cases(core, synthetic_slice) -> list[str]:
    service, wl = core
    files = [(f"s{k}.png", _png(synthetic_slice(seed=k)[0])) for k in range(2)]
    return [r["scan_id"] for r in process_uploads(files, service, wl)]


def test_sign_off_after_a_label_correction_stays_on_the_case(core, synthetic_slice) -> None:
    """Issue 16, bug 1: correcting the label changed the picker's text and the next save was lost."""
    _, wl = core
    first, other = _two_cases(core, synthetic_slice)
    at = _open_case(first)
    model_label = wl.get(first).label
    corrected = next(c for c in CLASSES if c != model_label)
    _by_label(at.text_input, "Reviewer").input("Dr A")
    _by_label(at.selectbox, "Label (confirm or correct)").select(corrected)
    _by_label(at.button, "Save review").click().run()
    assert not at.exception and wl.get(first).review_status == "corrected"
    assert at.session_state[state.SELECTED_CASE] == first
    assert "no longer in the worklist" not in _texts(at)
    _by_label(at.text_area, "Note").input("checked twice")
    _by_label(at.button, "Sign off").click().run()
    assert not at.exception
    case = wl.get(first)
    assert case.review_status == "signed_off" and case.reviewed_label == corrected
    assert case.note == "checked twice" and case.reviewer == "Dr A"
    assert wl.get(other).review_status == "unreviewed"  # nothing landed on another case


def test_a_stale_tab_cannot_undo_a_sign_off(core, synthetic_slice) -> None:
    """Issue 16, bug 2: B's page predates A's sign-off; B's save is refused and B's input is shown."""
    _, wl = core
    sid, _ = _two_cases(core, synthetic_slice)
    tab_a, tab_b = _open_case(sid), _open_case(sid)
    _by_label(tab_a.text_input, "Reviewer").input("Dr A")
    _by_label(tab_a.button, "Sign off").click().run()
    assert wl.get(sid).review_status == "signed_off"
    wrong = next(c for c in CLASSES if c != wl.get(sid).label)
    _by_label(tab_b.text_input, "Reviewer").input("Dr B")
    _by_label(tab_b.selectbox, "Label (confirm or correct)").select(wrong)
    _by_label(tab_b.text_area, "Note").input("B's careful note")
    _by_label(tab_b.button, "Save review").click().run()
    assert not tab_b.exception
    assert any("changed since you opened it" in e.value for e in tab_b.error)
    assert any("B's careful note" in c.value for c in tab_b.code)
    case = wl.get(sid)
    assert case.review_status == "signed_off" and case.reviewer == "Dr A"


def test_a_signed_off_case_takes_addenda_only(core, synthetic_slice) -> None:
    """Issue 16, bug 3: after sign-off the review form is gone; an addendum is its own audit row."""
    _, wl = core
    sid, _ = _two_cases(core, synthetic_slice)
    wl.review(sid, "Dr A", note="signed", sign_off=True)
    at = _open_case(sid)
    assert not [b for b in at.button if b.label in ("Save review", "Sign off")]
    assert "read-only" in _texts(at)
    _by_label(at.text_input, "Reviewer").input("Dr C")
    _by_label(at.text_area, "Addendum").input("Compare with prior study.")
    _by_label(at.button, "Add addendum").click().run()
    assert not at.exception
    (add,) = wl.addenda(sid)
    assert add["actor"] == "Dr C" and add["new_value"] == "Compare with prior study."
    assert wl.get(sid).note == "signed"
    assert escape_md("Compare with prior study.") in _texts(at)  # user text is shown escaped


# ----- issue 22: user text is plain text (item 12), names hidden (item 13), no internals (item 17)

EVIL_NAME = "![p](https:evil.example?x).png"
EVIL_NOTE = ":red[**NO TUMOR - SAFE TO SKIP**]"


def _markdown_values(at: AppTest) -> list[str]:
    """The Markdown source of every element that renders Markdown."""
    kinds = ("title", "header", "subheader", "markdown", "caption", "info", "success", "warning", "error")
    return [str(e.value) for kind in kinds for e in getattr(at, kind)] + [e.label for e in at.expander]


def test_user_text_is_rendered_literally(core, synthetic_slice) -> None:
    """A file name that would load a remote image and a note that would render as red bold text appear
    as the characters typed, escaped, in every Markdown element of the case page."""
    service, wl = core
    (row,) = process_uploads([(EVIL_NAME, _png(synthetic_slice()[0]))], service, wl)
    assert row["status"] == "accepted"
    sid = row["scan_id"]
    wl.review(sid, "Dr <b>Evil</b> **X**", note=EVIL_NOTE, sign_off=True)
    wl.addendum(sid, ":blue[Dr Y]", "![t](https:evil.example/y) <script>alert(1)</script>")
    at = _open_case(sid)
    values = _markdown_values(at)
    joined = "\n".join(values)
    for raw in (EVIL_NAME, EVIL_NOTE, "![t](", ":red[", ":blue[", "<b>", "<script>", "**X**"):
        assert raw not in joined, raw
    for text in (EVIL_NAME, EVIL_NOTE, "Dr <b>Evil</b> **X**", ":blue[Dr Y]", "<script>alert(1)</script>"):
        assert escape_md(text) in joined, text
    assert any(escape_md(EVIL_NAME) in v for v in at.caption.values)


def test_file_names_are_hidden_on_every_page_by_default(tiny_weights, tmp_path, monkeypatch, synthetic_slice) -> None:
    monkeypatch.setenv("TRIAGE_WEIGHTS_DIR", str(tiny_weights))
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("TRIAGE_HIDE_FILE_NAMES", raising=False)
    monkeypatch.delenv("TRIAGE_ALLOW_PHI", raising=False)
    st.cache_resource.clear()
    st.cache_data.clear()
    settings = get_settings()
    service, wl = TriageService(settings), Worklist(settings.db_path)
    phi = "Doe^John_19310417_MRN12345.png"
    rows = process_uploads([(phi, _png(synthetic_slice()[0])), ("Doe^Jane.png", b"nope")], service, wl)
    sid = rows[0]["scan_id"]
    at = _app()
    assert at.dataframe[0].value["name"].tolist() == [f"case {sid[:12]}"]
    assert at.dataframe[1].value["name"].tolist()[0].startswith("case ")
    assert "Search case id" in [w.label for w in at.text_input]
    seen = "\n".join([*_markdown_values(at), *(str(o) for s in at.selectbox for o in s.options)])
    _by_label(at.button, "Open").click().run()
    assert not at.exception and at.title[0].value == "Case review"
    seen += "\n".join([*_markdown_values(at), *(str(o) for s in at.selectbox for o in s.options)])
    assert "Doe" not in seen and "MRN" not in seen
    assert f"case {sid[:12]}" in seen
    st.cache_resource.clear()
    st.cache_data.clear()


def test_case_review_shows_no_server_path_or_exception_text(core, synthetic_slice, monkeypatch) -> None:
    service, wl = core
    (row,) = process_uploads([("x.png", _png(synthetic_slice()[0]))], service, wl)
    case = wl.get(row["scan_id"])

    def broken(*args, **kwargs):
        raise OSError(5, "Input/output error", "/srv/secret/internal/path.png")

    import triage.ui.case_view as case_view

    real = case_view.case_analysis
    monkeypatch.setattr(case_view, "case_analysis", broken)
    at = _open_case(case.scan_id)
    joined = "\n".join(_markdown_values(at))
    assert "could not be analysed again" in joined
    assert "/srv/secret" not in joined and "Input/output" not in joined
    Path(case.stored_path).unlink()
    monkeypatch.setattr(case_view, "case_analysis", real)
    shutil.rmtree(service.settings.data_dir / "results")  # no stored analysis left either
    at = _open_case(case.scan_id)
    joined = "\n".join(_markdown_values(at))
    assert "stored image file is missing" in joined and str(Path(case.stored_path).parent) not in joined


# ----- sign-in and roles (issue 19, item 1) -------------------------------------------------


def _sign_in(at: AppTest, name: str, password: str) -> AppTest:
    _by_label(at.text_input, "Account name").set_value(name)
    _by_label(at.text_input, "Password").set_value(password)
    next(b for b in at.button if b.label == "Sign in").click().run()
    return at


def test_sign_in_roles_and_the_reviewer_identity(core, synthetic_slice) -> None:
    from triage.accounts import Account, AccountStore

    service, wl = core
    store = AccountStore(service.settings.data_dir)
    store.add("dr.reader", "reader", "reader password 1")
    store.add("it.admin", "admin", "admin password 1")
    scan_id = _two_cases(core, synthetic_slice)[0]

    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception and [t.value for t in at.title] == ["Sign in"]
    assert not at.dataframe  # nothing of the worklist before sign-in
    _sign_in(at, "dr.reader", "not the password")
    assert any("wrong name or password" in e.value for e in at.error)
    assert [t.value for t in at.title] == ["Sign in"]

    _sign_in(at, "dr.reader", "reader password 1")
    assert not at.exception and "Worklist" in [t.value for t in at.title]
    assert any("Signed in as" in c.value and "reader" in c.value for c in at.sidebar.caption)
    # the reviewer is the account, not a text anyone can type
    at.session_state[state.SELECTED_CASE] = scan_id
    at.switch_page("views/case_review.py").run()
    reviewer = _by_label(at.text_input, "Reviewer")
    assert reviewer.value == "dr.reader" and reviewer.disabled
    next(b for b in at.button if b.label == "Sign off").click().run()
    assert wl.get(scan_id).reviewer == "dr.reader"
    # readers get no admin pages in the navigation, and an admin page run anyway stops at once
    with pytest.raises(ValueError, match="Known pages"):
        at.switch_page("views/training.py")
    direct = AppTest.from_file(str(REPO / "views" / "training.py"), default_timeout=TIMEOUT)
    direct.session_state["account"] = Account("dr.reader", "reader")
    direct.run()
    assert any("for admins" in e.value for e in direct.error) and "Training" not in [t.value for t in direct.title]

    admin = _sign_in(AppTest.from_file(APP, default_timeout=TIMEOUT).run(), "it.admin", "admin password 1")
    admin.switch_page("views/training.py").run()
    assert not admin.exception and "Training" in [t.value for t in admin.title]
    admin.switch_page("views/status.py").run()
    assert "Status" in [t.value for t in admin.title]
    next(b for b in admin.sidebar.button if b.label == "Sign out").click().run()
    assert [t.value for t in admin.title] == ["Sign in"]


def test_a_flagged_case_says_so_before_its_class(core, synthetic_slice) -> None:
    """Issue 16: the headline class of an uncertain or out-of-distribution case is not shown as a confident result."""
    import sqlite3

    service, _ = core
    doubtful, plain = _two_cases(core, synthetic_slice)
    with sqlite3.connect(service.settings.db_path) as con:
        con.execute("UPDATE cases SET flags = ? WHERE scan_id = ?", ('["uncertain"]', doubtful))
        con.execute("UPDATE cases SET flags = '[]' WHERE scan_id = ?", (plain,))
    at = _open_case(doubtful)
    assert next(m.label for m in at.metric) == "Model class, not confident"
    assert any("uncertain" in w.value.lower() for w in at.warning)
    at = _open_case(plain)
    assert next(m.label for m in at.metric) == "Model class"


def test_switching_case_class_or_method_runs_no_model_once_stored(core, synthetic_slice, monkeypatch) -> None:
    """Issue 16: the analysis is stored at intake and each heatmap once computed; going back and forth
    between cases, classes and methods in Case review calls neither the analysis nor Grad-CAM again."""
    first, other = _two_cases(core, synthetic_slice)
    calls = {"analyze_bytes": 0, "explain": 0}
    for name in calls:
        real = getattr(TriageService, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(TriageService, name, counted)
    other_class = next(c for c in CLASSES if c != core[1].get(first).label)
    at = _open_case(first)
    assert calls == {"analyze_bytes": 0, "explain": 0}  # the heatmap is computed when turned on
    _by_label(at.toggle, "Heatmap").set_value(True).run()
    assert calls == {"analyze_bytes": 0, "explain": 1}
    _by_label(at.selectbox, "Heatmap method").select("eigencam").run()
    _by_label(at.selectbox, "Heatmap for class").select(other_class).run()
    assert calls == {"analyze_bytes": 0, "explain": 3}
    _by_label(at.button, "Next").click().run()
    assert at.session_state[state.SELECTED_CASE] == other and calls["explain"] == 4
    _by_label(at.button, "Previous").click().run()
    _by_label(at.selectbox, "Heatmap method").select("eigencam").run()
    _by_label(at.selectbox, "Heatmap for class").select(other_class).run()
    assert not at.exception
    assert calls == {"analyze_bytes": 0, "explain": 4}


def test_a_deep_link_opens_its_case_and_the_address_follows_the_case(core, synthetic_slice) -> None:
    """Issue 16: ?case=<id> opens that case (a new tab from the Worklist); Next updates the address."""
    first, other = _two_cases(core, synthetic_slice)
    shown_first = _app()
    shown_first.switch_page("views/case_review.py").run()
    top = shown_first.session_state[state.SELECTED_CASE]
    target = other if top == first else first
    at = _app()
    at.query_params["case"] = target
    at.switch_page("views/case_review.py").run()
    assert not at.exception
    assert at.session_state[state.SELECTED_CASE] == target
    assert at.query_params["case"] == [target] or at.query_params["case"] == target
    nav = "Previous" if not _by_label(at.button, "Previous").disabled else "Next"
    _by_label(at.button, nav).click().run()
    assert at.session_state[state.SELECTED_CASE] != target  # the old link does not pull the reader back
    assert at.query_params["case"] in (at.session_state[state.SELECTED_CASE], [at.session_state[state.SELECTED_CASE]])
    bad = _app()
    bad.query_params["case"] = "0123456789abcdef"
    bad.switch_page("views/case_review.py").run()
    assert not bad.exception and any("not in the worklist" in w.value for w in bad.warning)


def test_worklist_unread_first_signed_off_apart_and_a_correction_re_ranks(core, synthetic_slice) -> None:
    """Issue 16: the default view lists the studies still to read; signed-off ones have their own view;
    a corrected class ranks the case by the corrected class; unknown values read "–"; the model
    version and a new-tab link are columns."""
    _, wl = core
    first, other = _two_cases(core, synthetic_slice)
    at = _app()
    table = at.dataframe[0].value
    assert set(table["scan_id"]) == {first, other}
    assert set(table["volume_ml"]) == {"–"} and "None" not in table.astype(str).to_string()
    assert set(table["model"]) == {"tiny · tiny"}
    assert set(table["open"]) == {f"case_review?case={first}", f"case_review?case={other}"}
    top, low = table["scan_id"].tolist()
    wl.review(low, "Dr A", label="glioma")  # corrected to the most malignant class: risk 1.0 by default weights
    wl.review(top, "Dr A", label="no_tumor")
    at.run()
    assert at.dataframe[0].value["scan_id"].tolist() == [low, top]
    wl.review(low, "Dr A", sign_off=True)
    at.run()
    assert at.dataframe[0].value["scan_id"].tolist() == [top]  # to read: the signed-off case left
    at.radio(key=state.WORKLIST_VIEW).set_value("Signed off").run()
    assert at.dataframe[0].value["scan_id"].tolist() == [low]
    wl.review(top, "Dr A", sign_off=True)
    at.radio(key=state.WORKLIST_VIEW).set_value("To read").run()
    assert "nothing left to read" in _texts(at)
    at.radio(key=state.WORKLIST_VIEW).set_value("All").run()
    assert len(at.dataframe[0].value) == 2
