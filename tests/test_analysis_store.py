"""Stored analysis results (issue 16): computed once per case and model versions, read back after."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.conftest import draw_synthetic_slice
from tests.model_fixtures import make_tiny_weights
from triage.analysis_store import AnalysisStore, case_analysis, case_heatmap, from_result, store_for
from triage.config import get_settings
from triage.intake import ingest
from triage.service import TriageService
from triage.worklist import Worklist


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_tiny_weights(tmp_path_factory.mktemp("w"))


@pytest.fixture
def env(weights, tmp_path):
    service = TriageService(get_settings(weights_dir=weights, data_dir=tmp_path / "data"))
    return service, Worklist(service.settings.db_path)


class Counter:
    """Wraps a service method and counts its calls."""

    def __init__(self, monkeypatch, service, name):
        self.calls = 0
        real = getattr(service, name)

        def counted(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(service, name, counted)


def _case(env, seed=0):
    service, wl = env
    (r,) = ingest(service, wl, _png(draw_synthetic_slice(seed=seed)[0]), f"s{seed}.png")
    assert r.ok, r.error
    return r, wl.get(r.scan_id)


def test_intake_stores_the_analysis_and_opening_runs_no_model(env, monkeypatch):
    service, _ = env
    r, case = _case(env)
    analyse = Counter(monkeypatch, service, "analyze_bytes")
    got = case_analysis(service, case)
    assert analyse.calls == 0
    np.testing.assert_array_equal(got.pixels, r.scan.pixels)
    np.testing.assert_array_equal(got.mask, r.segmentation.mask)
    np.testing.assert_array_equal(got.crop_image, r.crop.image)
    assert got.label == r.prediction.label and got.crop_bbox == r.crop.bbox
    # A fresh store (another process) reads the same result from disk.
    service._analysis_store = AnalysisStore(service.settings.data_dir / "results")
    again = case_analysis(service, case)
    assert analyse.calls == 0 and again.label == got.label
    np.testing.assert_allclose(again.probs, r.prediction.probs, atol=1e-6)
    with pytest.raises(ValueError):  # stored arrays are shared: read-only
        again.pixels[0, 0] = 1


def test_a_missing_result_is_computed_once_and_a_new_model_version_recomputes(env, monkeypatch, tmp_path):
    service, _ = env
    _, case = _case(env, seed=1)
    store = store_for(service)
    folder = store.folder(case.scan_id, service.active_versions())
    (folder / "analysis.npz").write_bytes(b"not a zip")  # damaged: recomputed, never shown
    store._memory.clear()
    analyse = Counter(monkeypatch, service, "analyze_bytes")
    first = case_analysis(service, case)
    second = case_analysis(service, case)
    assert analyse.calls == 1 and first is second
    store._memory.clear()
    case_analysis(service, case)
    assert analyse.calls == 1  # rewritten on disk
    monkeypatch.setattr(service, "active_versions", lambda: {"classifier": "v99", "segmenter": "tiny"})
    case_analysis(service, case)
    assert analyse.calls == 2  # another model version never reuses the old result


def test_heatmaps_are_computed_once_per_class_and_method(env, monkeypatch):
    service, _ = env
    _, case = _case(env, seed=2)
    analysis = case_analysis(service, case)
    explain = Counter(monkeypatch, service, "explain")
    a = case_heatmap(service, analysis, "glioma", "gradcam")
    b = case_heatmap(service, analysis, "glioma", "gradcam")
    assert explain.calls == 1 and a.shape == analysis.pixels.shape and 0 <= a.min() <= a.max() <= 1
    np.testing.assert_array_equal(a, b)
    case_heatmap(service, analysis, "meningioma", "gradcam")
    case_heatmap(service, analysis, "glioma", "eigencam")
    assert explain.calls == 3
    store_for(service)._memory.clear()
    c = case_heatmap(service, analysis, "glioma", "gradcam")
    assert explain.calls == 3
    np.testing.assert_array_equal(a, c)
    direct = service.explain(analysis.as_result(), "glioma", "gradcam").heatmap
    assert np.abs(direct - a).max() <= 0.5 / 255 + 1e-6  # stored as uint8 steps


def test_a_case_id_is_never_a_path(tmp_path):
    store = AnalysisStore(tmp_path)
    for bad in ("../../etc", "a/b", "", "ABC"):
        with pytest.raises(ValueError):
            store.folder(bad, {"classifier": "v1"})


def test_a_refused_slice_is_stored_as_refused(env):
    service, _ = env
    blank = np.zeros((128, 128), np.uint8)
    (r,) = service.analyze_bytes(_png(blank), "blank.png")
    assert not r.ok
    stored = from_result(r, {"classifier": "tiny", "segmenter": "tiny"})
    store = AnalysisStore(service.settings.data_dir / "results")
    store.save(stored)
    store._memory.clear()
    back = store.load(r.scan_id, {"classifier": "tiny", "segmenter": "tiny"})
    assert back is not None and not back.ok and back.error == r.error
