"""The ONNX analysis path: validity checks, backend choice, torch-free imports, same results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.model_fixtures import make_tiny_weights
from triage.classify import Classifier
from triage.config import get_settings
from triage.errors import ModelNotFoundError
from triage.models import load_model
from triage.runtime import ONNX_FILE, ONNX_RECORD, OnnxNet, onnx_net, onnx_problem
from triage.segment import Segmenter
from triage.service import TriageService

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def tiny(tmp_path) -> Path:
    return make_tiny_weights(tmp_path / "w")


def _service(weights: Path, tmp_path: Path, backend: str) -> TriageService:
    return TriageService(
        get_settings(weights_dir=weights, data_dir=tmp_path / f"data-{backend}", inference_backend=backend)
    )


def test_new_versions_carry_a_checked_onnx_export(tiny) -> None:
    for task in ("classifier", "segmenter"):
        folder = tiny / task / "tiny"
        record = json.loads((folder / ONNX_RECORD).read_text())
        assert record["ok"] and onnx_problem(folder) is None
        assert max(record["max_difference"].values()) < 1e-4


def test_onnx_and_torch_give_the_same_case(tiny, tmp_path, synthetic_slice) -> None:
    """Probabilities within 1e-4, the same label, the same mask, for tumour and healthy slices."""
    images = [synthetic_slice(seed=i, tumor=i % 2 == 0)[0] for i in range(4)]
    onnx, torch_path = _service(tiny, tmp_path, "onnx"), _service(tiny, tmp_path, "torch")
    assert onnx.models().backends == {"classifier": "onnx", "segmenter": "onnx"}
    assert torch_path.models().backends == {"classifier": "torch", "segmenter": "torch"}
    for i, img in enumerate(images):
        png = cv2.imencode(".png", img)[1].tobytes()
        (a,), (b,) = onnx.analyze_bytes(png, f"s{i}.png"), torch_path.analyze_bytes(png, f"s{i}.png")
        assert a.ok and b.ok
        np.testing.assert_allclose(a.prediction.probs, b.prediction.probs, atol=1e-4)
        assert a.prediction.label == b.prediction.label
        assert abs(a.prediction.ood_score - b.prediction.ood_score) <= 1e-3 * (1 + b.prediction.ood_score)
        assert np.array_equal(a.segmentation.mask, b.segmentation.mask)


def test_mirror_tta_matches_on_both_backends(tiny, synthetic_slice) -> None:
    img = synthetic_slice()[0]
    for task, wrap in (("classifier", Classifier), ("segmenter", Segmenter)):
        model = load_model(tiny, task)
        model.meta["tta"] = True
        net = OnnxNet(model.path)
        forward = (lambda x, n=net: tuple(n(x))) if task == "classifier" else (lambda x, n=net: n(x)[0])
        fast, slow = wrap(model, forward), wrap(model)
        if task == "classifier":
            np.testing.assert_allclose(fast.predict([img])[0].probs, slow.predict([img])[0].probs, atol=1e-4)
        else:
            np.testing.assert_allclose(fast.probabilities([img])[0], slow.probabilities([img])[0], atol=1e-4)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda f: (f / ONNX_FILE).write_bytes((f / ONNX_FILE).read_bytes()[:1000]), "does not match its record"),
        (lambda f: (f / ONNX_RECORD).unlink(), "no ONNX export"),
        (lambda f: (f / ONNX_RECORD).write_text("{"), "unreadable"),
        (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes() + b" "), "changed"),
    ],
)
def test_a_damaged_export_is_never_run(tiny, caplog, damage, reason) -> None:
    folder = tiny / "classifier" / "tiny"
    damage(folder)
    assert reason in onnx_problem(folder)
    with caplog.at_level("WARNING"):
        assert onnx_net(folder, "auto") is None  # auto: the torch path, with the reason logged
    assert reason in caplog.text
    with pytest.raises(ModelNotFoundError, match=reason):
        onnx_net(folder, "onnx")


def test_a_failed_check_is_recorded_and_falls_back(tiny) -> None:
    folder = tiny / "segmenter" / "tiny"
    record = json.loads((folder / ONNX_RECORD).read_text())
    record.update(ok=False, reason="outputs differ from torch beyond tolerance: prob")
    (folder / ONNX_RECORD).write_text(json.dumps(record))
    assert "failed its check" in onnx_problem(folder)
    assert onnx_net(folder, "torch") is None
    with pytest.raises(ValueError, match="backend"):
        onnx_net(folder, "tensorrt")


@pytest.mark.slow  # a subprocess
def test_the_analysis_path_never_imports_torch(tiny, tmp_path, synthetic_slice) -> None:
    img = tmp_path / "s.png"
    cv2.imwrite(str(img), synthetic_slice()[0])
    code = (
        "import sys\n"
        "import triage.explain  # names the heatmap methods; torch only when one is computed\n"
        "from triage.cli import main\n"
        f"rc = main(['analyze', {str(img)!r}, '--out', {str(tmp_path / 'o.csv')!r}, '--quiet'])\n"
        "heavy = sorted(m for m in ('torch', 'timm', 'monai', 'sklearn', 'segmentation_models_pytorch', 'pandas')"
        " if m in sys.modules)\n"
        "print('HEAVY', heavy, rc)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "TRIAGE_WEIGHTS_DIR": str(tiny), "TRIAGE_DATA_DIR": str(tmp_path / "d")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert "HEAVY [] 0" in out.stdout, out.stdout + out.stderr
    assert ",ok," in (tmp_path / "o.csv").read_text()


@pytest.mark.slow  # real models on real slices
def test_shipped_models_agree_on_real_brisc_slices(shared_data, tmp_path) -> None:
    """The active versions on a few BRISC test slices of every class: ONNX and torch agree."""
    import csv

    rows = [r for r in csv.DictReader((shared_data / "brisc2025" / "manifest.csv").open()) if r["split"] == "test"]
    picked = [next(r for r in rows if r["label"] == c) for c in ("no_tumor", "glioma", "meningioma", "pituitary")]
    picked += rows[::250]
    weights = get_settings().weights_dir
    try:
        onnx = _service(weights, tmp_path, "onnx")
        onnx.models()
    except ModelNotFoundError as exc:
        pytest.skip(f"the active versions have no ONNX export: {exc}")
    torch_path = _service(weights, tmp_path, "torch")
    for r in picked:
        path = shared_data / "brisc2025" / r["path"]
        (a,), (b,) = onnx.analyze_path(path), torch_path.analyze_path(path)
        np.testing.assert_allclose(a.prediction.probs, b.prediction.probs, atol=1e-4)
        assert a.prediction.label == b.prediction.label
        assert np.array_equal(a.segmentation.mask, b.segmentation.mask)


def test_warm_up_loads_the_models_and_never_raises(tiny, tmp_path, caplog) -> None:
    service = _service(tiny, tmp_path, "auto")
    service.warm_up()
    assert service.models().backends == {"classifier": "onnx", "segmenter": "onnx"}
    broken = _service(tmp_path / "no-weights", tmp_path, "auto")
    with caplog.at_level("ERROR"):
        broken.warm_up(explain=True)  # logged, not raised: the server keeps running
    assert "warming the models failed" in caplog.text
