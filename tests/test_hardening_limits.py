"""Issue 22 (second round), item 6 continued: a wall-clock limit per upload, and the batch's
decoded-pixel budget applied to series as well as single files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import hostile_corpus as hc
from tests.model_fixtures import make_tiny_weights
from triage.config import get_settings
from triage.service import TriageService
from triage.ui import uploads
from triage.worklist import Worklist


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return make_tiny_weights(tmp_path_factory.mktemp("limits_w") / "w")


def _png(seed: int, size: int = 128) -> bytes:
    return hc.encode(hc.Image.fromarray(hc.fake_brain(size, seed=seed)), "PNG")


def test_a_decode_over_the_time_limit_is_stopped_and_the_batch_goes_on(weights, tmp_path) -> None:
    # A 36 MP noise PNG takes about 0.5-1 s to decode here; the limit is set below that.
    noise = np.random.default_rng(0).integers(0, 255, (6000, 6000), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "PNG", compress_level=1)
    settings = get_settings(data_dir=tmp_path / "data", weights_dir=weights, upload_time_limit_s=0.25)
    service = TriageService(settings)
    wl = Worklist(settings.db_path)
    rows = uploads.process_uploads([("slow.png", buf.getvalue()), ("fine.png", _png(1))], service, wl)
    assert [r["status"] for r in rows] == ["rejected", "accepted"], rows
    assert "took longer than 0.25 s and was stopped" in rows[0]["reason"]
    assert any("took longer" in r["reason"] for r in wl.rejections())
    assert wl.count() == 1


def test_the_pixel_budget_covers_series(weights, tmp_path, monkeypatch) -> None:
    """Four slices of one folder (a series): before, series were never counted against the budget."""
    service = TriageService(get_settings(data_dir=tmp_path / "data", weights_dir=weights, upload_time_limit_s=0))
    wl = Worklist(service.settings.db_path)
    monkeypatch.setattr(uploads, "MAX_BATCH_PIXELS", 2 * 128 * 128)
    files = [(f"stack/s{i}.png", _png(20 + i)) for i in range(4)]
    rows = uploads.process_uploads(files, service, wl)
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert len(skipped) == 2 and all("budget of 32,768 decoded pixels is spent" in r["reason"] for r in skipped)
    assert wl.count() == 2


def test_a_nifti_volume_counts_all_its_voxels(tmp_path) -> None:
    nib = pytest.importorskip("nibabel")
    vol = nib.Nifti1Image(np.zeros((40, 30, 7), np.int16), np.eye(4))
    path = tmp_path / "v.nii.gz"
    nib.save(vol, path)
    item = uploads.UploadItem("v.nii.gz", path.read_bytes())
    assert uploads._declared(item, get_settings()) == 40 * 30 * 7
