"""AppTest of the Training page: check data, train in the background, compare, promote and roll back."""

from __future__ import annotations

import time

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.conftest import REPO_DIR
from tests.lifecycle.test_importer import write_class_folders
from tests.lifecycle.test_jobs import kill_leftovers
from tests.model_fixtures import make_tiny_weights
from triage.config import get_settings
from triage.lifecycle import jobs, promotion
from triage.ui import state

# Slow tier: real models, training runs, subprocesses or full pages (`pytest -m 'not slow'` skips them).
pytestmark = pytest.mark.slow

PAGE = str(REPO_DIR / "views" / "training.py")
TIMEOUT_S = 300  # generous: the test machine runs other trainings


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "NICENESS", 0)  # the test machine is busy enough
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TRIAGE_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("TRIAGE_TORCH_THREADS", "1")
    monkeypatch.setenv("TRIAGE_IMPORT_ROOTS", str(tmp_path))  # server folders are confined (issue 22, item 11)
    make_tiny_weights(tmp_path / "weights")
    st.cache_resource.clear()
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    assert not at.exception
    yield at
    st.cache_resource.clear()
    kill_leftovers(get_settings())


def _texts(at: AppTest) -> str:
    parts = [
        e.value for kind in ("markdown", "success", "info", "error", "warning", "caption") for e in getattr(at, kind)
    ]
    return "\n".join(str(p) for p in parts)


def _until(at: AppTest, cond, timeout: float = TIMEOUT_S, seen: list | None = None) -> None:
    deadline = time.time() + timeout
    while not cond(at):
        assert not at.exception, at.exception
        if time.time() > deadline:
            raise AssertionError(f"timed out; page shows:\n{_texts(at)}")
        time.sleep(0.5)
        at.run()
        if seen is not None:
            seen.append(_texts(at) + "".join(f"\nprogress:{p.value}" for p in at.get("progress")))


def _active(tmp_path, task: str = "classifier") -> str:
    return (tmp_path / "weights" / task / "ACTIVE").read_text().strip()


def test_check_train_compare_promote_and_roll_back(app, tmp_path):
    at = app
    at.radio(key=state.TRAIN_SOURCE).set_value("folder")
    at.run()
    # a clear message for a DatasetError
    at.text_input(key=state.TRAIN_FOLDER).set_value(str(tmp_path / "missing"))
    at.button(key=state.keyed(state.TRAIN_CHECK, "button")).click().run()
    _until(at, lambda a: "folder not found" in _texts(a), timeout=30)

    src = write_class_folders(tmp_path / "src", per_class=7)
    at.text_input(key=state.TRAIN_FOLDER).set_value(str(src))
    at.radio(key=state.TRAIN_TASK).set_value("classifier")
    at.button(key=state.keyed(state.TRAIN_CHECK, "button")).click().run()
    _until(at, lambda a: "Checked data" in _texts(a), timeout=30)
    assert "Cannot train" not in _texts(at)
    table = at.dataframe[0].value
    assert dict(zip(table["class"], table["images"])) == {"no_tumor": 7, "glioma": 7, "meningioma": 7, "pituitary": 7}

    at.radio(key=state.TRAIN_INIT).set_value("finetune")
    at.radio(key=state.TRAIN_PRESET).set_value("quick")
    at.number_input(key=state.TRAIN_EPOCHS).set_value(1)
    at.number_input(key=state.TRAIN_BUDGET).set_value(0.3)
    start = at.button(key=state.keyed(state.TRAIN_RUN, "start"))
    assert not start.disabled
    start.click().run()
    assert not at.exception
    assert "Training started in the background" in _texts(at)
    seen: list[str] = [_texts(at) + "".join(f"\nprogress:{p.value}" for p in at.get("progress"))]
    _until(at, lambda a: "Finished in" in _texts(a), seen=seen)
    assert any("progress:" in s for s in seen), "no progress bar was shown while training"
    assert any("Preparing data" in s or "Training" in s for s in seen)
    new = next(v for v in (tmp_path / "weights" / "classifier").iterdir() if v.name.startswith("v2-")).name
    assert _active(tmp_path) == "tiny"

    # the comparison runs in the background, then the table, confusion matrices and Promote appear
    _until(at, lambda a: any("metric" in getattr(d.value, "columns", []) for d in a.dataframe), timeout=60)
    promote_key = next((b.key for b in at.button if b.key and "promote" in b.key), None)
    assert promote_key is not None
    assert len(at.get("plotly_chart")) >= 2
    # the rule: a few validation images are not grounds, so Promote waits for a confirmation and a reason
    assert "Not grounds for promotion" in _texts(at)
    assert at.button(key=promote_key).disabled
    at.text_input(key=f"{promote_key}-by").set_value("dr admin")
    at.checkbox(key=f"{promote_key}-sure").check().run()
    at.button(key=promote_key).click().run()
    assert _active(tmp_path) == "tiny" and "refused" in _texts(at)
    at.text_area(key=f"{promote_key}-reason").set_value("department data, smoke test").run()
    at.button(key=promote_key).click().run()
    assert _active(tmp_path) == new
    assert f"`{new}` is now active" in _texts(at) and "recorded as override" in _texts(at)

    # versions table: the new version is listed and marked; roll back to the tiny one with a reason
    assert any(new in list(d.value.get("version", [])) for d in at.dataframe)
    at.selectbox(key=state.keyed(state.keyed(state.TRAIN_RUN, "version"), "classifier")).set_value("tiny").run()
    rollback = state.keyed(state.keyed(state.TRAIN_RUN, "version"), "classifier", "activate")
    at.text_area(key=f"{rollback}-reason").set_value("rolled back after the smoke test")
    at.checkbox(key=f"{rollback}-sure").check().run()
    at.button(key=rollback).click().run()
    assert not at.exception
    assert _active(tmp_path) == "tiny"
    kinds = [c.kind for c in promotion.model_changes(tmp_path / "data")]
    assert kinds == ["override", "rollback"], kinds
