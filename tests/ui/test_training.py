"""triage.ui.training: the Training page's thin calls into the lifecycle facade (patched lifecycle functions)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from triage.lifecycle import background as bg
from triage.lifecycle import compare, importer, jobs
from triage.records import JobPhase
from triage.ui import training


@pytest.fixture
def background(monkeypatch) -> bg.BackgroundTasks:
    """A fresh task pool, so no task of another test is seen."""
    tasks = bg.BackgroundTasks(workers=1)
    monkeypatch.setattr(bg, "BACKGROUND", tasks)
    return tasks


def _settle(key: str) -> tuple[str, object]:
    deadline = time.monotonic() + 20
    while training.task_state(key)[0] == JobPhase.RUNNING and time.monotonic() < deadline:
        time.sleep(0.01)
    return training.task_state(key)


def test_a_comparison_is_started_once_then_read(monkeypatch, tmp_path, background) -> None:
    calls = []

    def fake_compare(cfg, task, version, data, run_dir, report):
        calls.append((task, version, data))
        report(1, 1)
        return {"n": 3}

    monkeypatch.setattr(compare, "saved_comparison", lambda run_dir, active, candidate: None)
    monkeypatch.setattr(compare, "compare_run", fake_compare)
    job = SimpleNamespace(job_id="j1", task="classifier", version="v9", data="/d", run_dir=str(tmp_path))
    assert training.comparison("cfg", job, "v1") == (JobPhase.RUNNING, None)
    key = training.comparison_key(job, "v1")
    assert _settle(key) == (JobPhase.DONE, {"n": 3}) and training.task_progress(key) == (1, 1)
    assert training.comparison("cfg", job, "v1") == (JobPhase.DONE, {"n": 3})
    assert calls == [("classifier", "v9", "/d")]  # read back, not started again
    monkeypatch.setattr(compare, "saved_comparison", lambda run_dir, active, candidate: {"n": 5})
    assert training.comparison("cfg", job, "v1") == (JobPhase.DONE, {"n": 5})  # the saved one wins


def test_a_failed_comparison_says_so_until_forgotten(monkeypatch, tmp_path, background) -> None:
    def broken(*args, report):
        raise RuntimeError("no held-out images")

    monkeypatch.setattr(compare, "saved_comparison", lambda run_dir, active, candidate: None)
    monkeypatch.setattr(compare, "compare_run", broken)
    job = SimpleNamespace(job_id="j2", task="segmenter", version="v3", data="/d", run_dir=str(tmp_path))
    training.comparison("cfg", job, "v1")
    _settle(training.comparison_key(job, "v1"))
    status, exc = training.comparison("cfg", job, "v1")
    assert status == JobPhase.FAILED and isinstance(exc, RuntimeError)
    training.forget_task(training.comparison_key(job, "v1"))  # the page's Retry button
    assert training.comparison("cfg", job, "v1") == (JobPhase.RUNNING, None)


def test_a_new_check_replaces_the_sessions_earlier_one(monkeypatch, background) -> None:
    discarded, imported = [], []
    monkeypatch.setattr(importer, "discard", lambda folder, cfg: discarded.append(folder))
    monkeypatch.setattr(jobs, "list_jobs", lambda cfg: [SimpleNamespace(data="/staging/used")])

    def fake_import(kind, value, task, cfg, report):
        imported.append((kind, value, task))
        return "summary"

    monkeypatch.setattr(importer, "import_source", fake_import)
    first = training.start_check("cfg", "folder", "/x", "classifier", None, None)
    assert _settle(first) == (JobPhase.DONE, "summary") and discarded == []
    second = training.start_check("cfg", "zip", b"PK", "both", first, {"dataset_dir": "/staging/unused"})
    assert second != first and training.task_state(first) == (JobPhase.MISSING, None)
    assert _settle(second)[0] == JobPhase.DONE and discarded == ["/staging/unused"]
    training.start_check("cfg", "folder", "/y", "segmenter", second, {"dataset_dir": "/staging/used"})
    assert discarded == ["/staging/unused"]  # a folder a training run uses is kept
    assert imported[:2] == [("folder", "/x", "classifier"), ("zip", b"PK", "both")]
