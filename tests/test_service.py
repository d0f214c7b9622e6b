"""The service facade on tiny random models: statuses, flags, rejection of non-brain input."""

import socket

import cv2
import numpy as np
import pytest

from tests.conftest import draw_synthetic_slice
from tests.model_fixtures import make_tiny_weights
from triage.config import get_settings
from triage.records import CLASSES, Prediction, Segmentation
from triage.service import TriageService, case_row


def png(img: np.ndarray) -> bytes:
    _, buf = cv2.imencode(".png", img)
    return buf.tobytes()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("svc")
    make_tiny_weights(root / "w")
    return TriageService(get_settings(weights_dir=root / "w", data_dir=root / "data"))


def test_synthetic_slice_is_analysed(service):
    img, _ = draw_synthetic_slice(shape=(300, 280))
    (r,) = service.analyze_bytes(png(img), "slice.png", explain=True)
    assert r.status == "ok", r.error
    assert r.prediction.probs.shape == (4,) and abs(r.prediction.probs.sum() - 1) < 1e-5
    assert r.segmentation.mask.shape == (300, 280)
    assert r.explanation.heatmap.shape == (300, 280)
    assert "untrained_model" in r.flags
    assert 0.0 <= r.risk <= 1.0
    row = case_row(r)
    assert {f"p_{c}" for c in CLASSES} <= set(row)


@pytest.mark.parametrize("kind", ["blank", "noise"])
def test_non_brain_inputs_are_rejected(service, kind):
    rng = np.random.default_rng(0)
    if kind == "blank":
        data = png(np.zeros((256, 256), np.uint8))
    else:
        data = png(rng.integers(0, 256, (256, 256), dtype=np.uint8))
    (r,) = service.analyze_bytes(data, f"{kind}.png")
    assert r.status == "rejected"
    assert "not a brain MRI" in r.error


def test_unreadable_file_gives_reason(service):
    (r,) = service.analyze_bytes(b"%PDF-1.4 hello", "report.pdf")
    assert r.status == "rejected" and "PDF" in r.error


def test_reconcile_flags_disagreements(service):
    mask = np.zeros((100, 100), bool)
    empty = Segmentation(mask=mask, area_px=0, area_mm2=None, bbox=None, max_prob=0.1)
    big = mask.copy()
    big[10:60, 10:60] = True
    large = Segmentation(mask=big, area_px=int(big.sum()), area_mm2=None, bbox=(10, 10, 60, 60), max_prob=0.9)
    small_m = mask.copy()
    small_m[0:3, 0:3] = True
    small = Segmentation(mask=small_m, area_px=9, area_mm2=None, bbox=(0, 0, 3, 3), max_prob=0.6)

    def pred(label):
        p = np.eye(4, dtype=np.float32)[CLASSES.index(label)]
        return Prediction(probs=p, label=label, confidence=1.0, entropy=0.0, ood_score=0.0, ood=False)

    assert service.reconcile(pred("glioma"), empty, 10000)[1] is True
    assert service.reconcile(pred("glioma"), large, 10000)[1] is False
    seg, flag = service.reconcile(pred("no_tumor"), large, 10000)
    assert flag is True and seg.area_px > 0
    seg, flag = service.reconcile(pred("no_tumor"), small, 10000)
    assert flag is False and seg.area_px == 0


def test_pipeline_makes_no_network_calls(service, monkeypatch):
    """The whole analysis runs with sockets disabled (no downloads, no telemetry)."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    img, _ = draw_synthetic_slice()
    fresh = TriageService(service.settings)  # reloads the models with the network off
    (r,) = fresh.analyze_bytes(png(img), "offline.png", explain=True)
    assert r.status == "ok"


def test_promotion_is_picked_up_without_restart(tmp_path):
    make_tiny_weights(tmp_path / "w", "a", seed=0)
    make_tiny_weights(tmp_path / "w", "b", seed=1)
    svc = TriageService(get_settings(weights_dir=tmp_path / "w", data_dir=tmp_path / "d"))
    assert svc.models().versions["classifier"] == "b"
    svc.promote("classifier", "a")
    assert svc.models().versions["classifier"] == "a"


def test_a_case_records_the_versions_that_analysed_it(tmp_path, monkeypatch):
    """A promotion between the analysis and the worklist write must not relabel the case."""
    from triage.intake import ingest
    from triage.worklist import Worklist

    make_tiny_weights(tmp_path / "w", "a", seed=0)
    make_tiny_weights(tmp_path / "w", "b", seed=1)
    svc = TriageService(get_settings(weights_dir=tmp_path / "w", data_dir=tmp_path / "d"))
    analyse = svc.analyze_bytes

    def analyse_then_promote(*args, **kwargs):
        results = analyse(*args, **kwargs)
        svc.promote("classifier", "a")  # another reader promotes while this upload is being recorded
        return results

    monkeypatch.setattr(svc, "analyze_bytes", analyse_then_promote)
    img, _ = draw_synthetic_slice(seed=3)
    wl = Worklist(tmp_path / "wl.sqlite")
    (r,) = ingest(svc, wl, png(img), "slice.png")
    assert r.model_versions == {"classifier": "b", "segmenter": "b"}
    assert wl.get(r.scan_id).classifier_version == "b"


def test_reuploading_a_case_with_its_mask_attaches_the_truth(tmp_path):
    """Issue 16, bug 4: the slice is already in the worklist; its mask must not be ignored."""
    from triage.intake import ingest
    from triage.worklist import Worklist

    svc = TriageService(get_settings(weights_dir=make_tiny_weights(tmp_path / "w"), data_dir=tmp_path / "d"))
    wl = Worklist(tmp_path / "wl.sqlite")
    img, mask = draw_synthetic_slice(seed=5)
    (r,) = ingest(svc, wl, png(img), "slice.png")
    assert wl.get(r.scan_id).truth_mask_path is None
    ingest(svc, wl, png(img), "slice again.png", truth_label="glioma", truth_mask=png(mask.astype(np.uint8) * 255))
    case = wl.get(r.scan_id)
    assert case.truth_label == "glioma" and case.truth_mask_path
    assert {(a["action"], a["field"], a["actor"]) for a in wl.audit(r.scan_id)} >= {
        ("truth", "truth_label", "upload"),
        ("truth", "truth_mask_path", "upload"),
    }
    assert len(wl.list_cases()) == 1


def test_a_multi_frame_upload_is_hashed_and_stored_once(tmp_path, monkeypatch):
    """Issue 24: every frame of a multi-frame file used to hash and rewrite the whole upload."""
    import hashlib
    import io

    from PIL import Image

    from triage import intake
    from triage.worklist import Worklist

    # Decoded in this process (no time-limit worker), so the hashes triage.io makes are counted here.
    settings = get_settings(
        weights_dir=make_tiny_weights(tmp_path / "w"), data_dir=tmp_path / "d", upload_time_limit_s=0
    )
    svc = TriageService(settings)
    frames = [Image.fromarray(draw_synthetic_slice(seed=k)[0]) for k in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    data = buf.getvalue()
    whole_file_hashes, writes = [], []
    real_sha, real_write = hashlib.sha256, intake._atomic_write
    monkeypatch.setattr(intake.hashlib, "sha256", lambda b=b"": (whole_file_hashes.append(b == data), real_sha(b))[1])
    monkeypatch.setattr(intake, "_atomic_write", lambda p, b: (writes.append(b == data), real_write(p, b))[1])
    results = intake.ingest(svc, Worklist(tmp_path / "wl.sqlite"), data, "three.tif")
    assert [r.ok for r in results] == [True, True, True]
    # One hash for the scan ids (triage.io) and one for the stored name, whatever the number of frames
    # (before: 1 + one per frame, and one write per frame).
    assert sum(whole_file_hashes) == 2 and sum(writes) == 1


def _break(folder, how: str) -> None:
    weights = folder / "model.safetensors"
    if how == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "wrong-shaped weights":  # the segmenter's tensors under the classifier's name
        weights.write_bytes((folder.parent.parent / "segmenter" / "tiny" / "model.safetensors").read_bytes())
    elif how == "truncated card":
        card = folder / "metadata.json"
        card.write_text(card.read_text()[:40])
    elif how == "card without arch":
        card = folder / "metadata.json"
        card.write_text(card.read_text().replace('"arch"', '"architecture"'))


@pytest.mark.parametrize("how", ["truncated weights", "wrong-shaped weights", "truncated card", "card without arch"])
def test_a_broken_active_model_refuses_uploads_and_keeps_the_worklist_readable(tmp_path, caplog, how):
    """Issue 22, item 14: one clear reason, logged once; uploads refused with it; existing cases
    can still be read and signed off; repairing the files brings the models back."""
    from triage.intake import ingest
    from triage.ui.uploads import process_uploads
    from triage.worklist import Worklist

    weights = make_tiny_weights(tmp_path / "w")
    svc = TriageService(get_settings(weights_dir=weights, data_dir=tmp_path / "d"))
    wl = Worklist(tmp_path / "wl.sqlite")
    (case,) = ingest(svc, wl, png(draw_synthetic_slice(seed=1)[0]), "earlier.png")
    folder = weights / "classifier" / "tiny"
    saved = {f.name: f.read_bytes() for f in folder.iterdir()}
    _break(folder, how)
    with caplog.at_level("ERROR"):
        rows = process_uploads([(f"new{i}.png", png(draw_synthetic_slice(seed=i)[0])) for i in range(3)], svc, wl)
    assert [r["status"] for r in rows] == ["refused"] * 3
    assert all("classifier" in r["reason"] and "cannot be used" in r["reason"] for r in rows)
    assert caplog.text.count("cannot be used") == 1  # reported once, not once per file
    assert [c.scan_id for c in wl.list_cases()] == [case.scan_id]
    wl.review(case.scan_id, "Dr A", label="glioma", sign_off=True)
    assert wl.get(case.scan_id).review_status == "signed_off"
    for name, data in saved.items():
        (folder / name).write_bytes(data)
    assert svc.model_problem() is None


def test_an_upload_reports_already_there_from_the_worklists_answer_not_the_clock(tmp_path):
    """Issue 24 trap: "already in worklist" was re-derived from timestamps (the case's received_at
    before the upload started), so a case received "later" (another machine's clock, an import with
    its own time) was reported as newly accepted although nothing was added."""
    import dataclasses

    from triage.intake import ingest
    from triage.ui.uploads import process_uploads
    from triage.worklist import Worklist

    svc = TriageService(get_settings(weights_dir=make_tiny_weights(tmp_path / "w"), data_dir=tmp_path / "d"))
    first, second = Worklist(tmp_path / "first.sqlite"), Worklist(tmp_path / "second.sqlite")
    img, _ = draw_synthetic_slice(seed=7)
    (r,) = ingest(svc, first, png(img), "slice.png")
    imported = dataclasses.replace(first.get(r.scan_id), received_at="2999-01-01T00:00:00+00:00")
    assert second.add_case(imported)
    (row,) = process_uploads([("slice.png", png(img))], svc, second, truth_label="glioma")
    assert row["status"] == "already in worklist"
    assert len(second.list_cases()) == 1 and second.get(r.scan_id).truth_label == "glioma"
    (row,) = process_uploads([("other.png", png(draw_synthetic_slice(seed=8)[0]))], svc, second)
    assert row["status"] == "accepted"


def test_a_missing_or_dangling_active_pointer_never_picks_the_newest(tmp_path):
    from triage.errors import ModelNotFoundError
    from triage.models import active_version

    weights = make_tiny_weights(tmp_path / "w", "v1")
    make_tiny_weights(weights, "v2")
    (weights / "classifier" / "ACTIVE").write_text("v1\n")
    assert active_version(weights, "classifier") == "v1"
    (weights / "classifier" / "ACTIVE").write_text("v7\n")
    with pytest.raises(ModelNotFoundError, match=r"'v7'.*available: v1, v2"):
        active_version(weights, "classifier")
    (weights / "classifier" / "ACTIVE").unlink()
    with pytest.raises(ModelNotFoundError, match="ACTIVE is missing"):
        active_version(weights, "classifier")
    svc = TriageService(get_settings(weights_dir=weights, data_dir=tmp_path / "d"))
    assert "ACTIVE is missing" in svc.model_problem()


def test_a_greyscale_photo_is_never_an_unflagged_case(service):
    """The multi-source classifier's OOD score does not separate greyscale photos from MRI; an
    image without the dark background around a head is kept but flagged `ood` (brain_check)."""
    from skimage import data as skdata

    (r,) = service.analyze_bytes(png(skdata.camera()), "camera.png")
    assert r.status == "rejected" or "ood" in r.flags, r.flags
    (mri,) = service.analyze_bytes(png(draw_synthetic_slice(seed=3)[0]), "slice.png")
    assert "ood" not in mri.flags  # a head on a dark background is not atypical
