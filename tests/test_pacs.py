"""PACS connection (issue 20): the queue, the DICOM results, and end to end with a real Orthanc.

The Orthanc tests start one private Orthanc per module (127.0.0.1, free ports, temporary storage)
and skip only where Orthanc cannot be installed.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import cv2
import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file

from tests.model_fixtures import make_tiny_weights
from tests.orthanc import Orthanc, free_port, orthanc_missing, synthetic_mr_series
from triage.config import get_settings
from triage.pacs import PacsQueue, backoff_s, flush_outbox, pacs_db_path, process_pending, receive_bytes
from triage.pacs_net import CStoreSender, Poller, Receiver, StowSender, parse_sender
from triage.pacs_results import DISCLAIMER, build_results
from triage.service import TriageService
from triage.worklist import Worklist


def _file(name: str) -> bytes:
    return Path(get_testdata_file(name)).read_bytes()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_tiny_weights(tmp_path_factory.mktemp("pacs-w") / "w")


def _ctx(weights: Path, data_dir: Path):
    settings = get_settings(weights_dir=weights, data_dir=data_dir)
    return settings, TriageService(settings), Worklist(settings.db_path), PacsQueue(pacs_db_path(settings))


class Recorder:
    """A sender that keeps what it is given (or fails while ``down``)."""

    def __init__(self):
        self.stored: list[bytes] = []
        self.down = False

    def store(self, data: bytes) -> None:
        if self.down:
            raise ConnectionError("PACS down")
        self.stored.append(data)


# -- without Orthanc (fast) -------------------------------------------------------------
def test_backoff_doubles_and_is_capped():
    assert [backoff_s(n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert backoff_s(50) == 300.0


def test_cli_parses_the_pacs_commands():
    from triage.cli import build_parser

    a = build_parser().parse_args(["listen", "--ae-title", "TRIAGE", "--port", "11112", "--allow", "PACS", "MRI1"])
    assert (a.ae_title, a.port, a.allow, a.send) == ("TRIAGE", 11112, ["PACS", "MRI1"], None)
    a = build_parser().parse_args(["poll", "--url", "http://pacs/dicom-web", "--interval", "5", "--once"])
    assert (a.url, a.interval, a.once, a.all_modalities) == ("http://pacs/dicom-web", 5.0, True, False)


def test_parse_sender():
    s = parse_sender("dicom://PACS@10.0.0.5:104", "TRIAGE")
    assert isinstance(s, CStoreSender) and (s.called_ae, s.host, s.port, s.calling_ae) == (
        "PACS",
        "10.0.0.5",
        104,
        "TRIAGE",
    )
    assert isinstance(parse_sender("http://pacs:8042/dicom-web"), StowSender)
    assert parse_sender(None) is None
    with pytest.raises(Exception, match="dicom://AE_TITLE@host:port"):
        parse_sender("dicom://pacs:104")


def test_received_instances_are_analysed_once_and_refusals_logged(weights, tmp_path):
    settings, service, wl, queue = _ctx(weights, tmp_path / "d")
    mr, ct = _file("MR_small.dcm"), _file("CT_small.dcm")
    assert receive_bytes(queue, settings, mr, "test")[0] is True
    assert receive_bytes(queue, settings, mr, "test")[0] is False  # a duplicate is not queued again
    receive_bytes(queue, settings, ct, "test")
    rec = Recorder()
    assert process_pending(service, wl, queue, send=True) == 2
    assert process_pending(service, wl, queue, send=True) == 0  # nothing analysed twice
    by_status = {r["status"]: r for r in queue.instances()}
    assert set(by_status) == {"analysed", "rejected"}
    assert "Modality is CT" in by_status["rejected"]["reason"]
    assert "Modality is CT" in wl.rejections()[0]["reason"]  # the same log as a refused upload
    assert wl.count() == 1
    assert not any(Path(settings.data_dir, "pacs", "incoming").iterdir())  # nothing left pending
    assert flush_outbox(queue, rec) == (3, 0)
    assert {pydicom.dcmread(io.BytesIO(b)).Modality for b in rec.stored} == {"SEG", "SR", "OT"}


def test_the_queue_survives_a_restart_and_a_crash_mid_analysis(weights, tmp_path):
    settings, service, wl, queue = _ctx(weights, tmp_path / "d")
    data = _file("MR_small.dcm")
    receive_bytes(queue, settings, data, "test")
    from triage.intake import ingest

    ingest(service, wl, data, "crashed.dcm")  # analysed, then the process died before marking it done
    _, service2, wl2, queue2 = _ctx(weights, tmp_path / "d")  # a new process on the same data folder
    assert [r["status"] for r in queue2.instances()] == ["received"]
    assert process_pending(service2, wl2, queue2) == 1
    assert wl2.count() == 1  # the worklist does not take the same scan twice
    assert receive_bytes(queue2, settings, data, "test")[0] is False


def test_phi_is_not_stored_in_the_worklist(weights, tmp_path):
    settings, service, wl, queue = _ctx(weights, tmp_path / "d")
    receive_bytes(queue, settings, synthetic_mr_series(1, seed=7)[0], "test")
    process_pending(service, wl, queue)
    (case,) = wl.list_cases()
    assert "Synthetic" not in str(case) and "SYN7" not in str(case)


def _malformed() -> bytes:
    """An MR instance of a new study whose pixel data is cut short (a PACS still stores it)."""
    ds = pydicom.dcmread(io.BytesIO(synthetic_mr_series(1, seed=9)[0]))
    ds.PixelData = ds.PixelData[:100]
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_malformed_instance_is_refused_with_a_reason(weights, tmp_path):
    settings, service, wl, queue = _ctx(weights, tmp_path / "d")
    receive_bytes(queue, settings, _malformed(), "test")
    process_pending(service, wl, queue)
    (row,) = queue.instances()
    assert row["status"] == "rejected" and "pixel data" in row["reason"].lower()


def test_send_failures_back_off_and_lose_nothing(weights, tmp_path):
    settings, service, wl, queue = _ctx(weights, tmp_path / "d")
    receive_bytes(queue, settings, _file("MR_small.dcm"), "test")
    process_pending(service, wl, queue, send=True)
    rec = Recorder()
    rec.down = True
    assert flush_outbox(queue, rec) == (0, 1)  # stops at the first failure
    assert flush_outbox(queue, rec) == (0, 0)  # the failed one waits for its back-off
    assert queue.status().errors and "PACS down" in queue.status().errors[0][2]
    rec.down = False
    assert flush_outbox(queue, rec, now=time.time() + 10) == (3, 0)
    assert queue.status().outbox == {"sent": 3}


def test_results_reference_the_source_and_keep_the_mask(weights, tmp_path):
    _, service, _, _ = _ctx(weights, tmp_path / "d")
    data = _file("MR_small.dcm")
    (r,) = service.analyze_bytes(data, "mr.dcm")
    mask = np.zeros(r.scan.shape, bool)
    mask[20:40, 10:30] = True
    from dataclasses import replace

    r = replace(r, segmentation=replace(r.segmentation, mask=mask, area_px=int(mask.sum())))
    src = pydicom.dcmread(io.BytesIO(data))
    built, problems = build_results(src, r)
    assert problems == []
    objs = {o.kind: o.dataset for o in built}
    seg = hd.seg.Segmentation.from_dataset(_roundtrip(objs["seg"]))
    assert seg.get_source_image_uids()[0][2] == src.SOPInstanceUID
    np.testing.assert_array_equal(seg.get_pixels_by_source_instance([src.SOPInstanceUID])[0, ..., 0] > 0, mask)
    sc = _roundtrip(objs["sc"])
    assert sc.ImageType[0] == "DERIVED" and sc.BurnedInAnnotation == "YES"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert sc.StudyInstanceUID == src.StudyInstanceUID and sc.SOPInstanceUID != src.SOPInstanceUID
    sr = hd.sr.srread(io.BytesIO(_bytes(objs["sr"])))
    _check_sr(sr, src, r)
    # The same result built again has the same UIDs: a re-send is a duplicate, never a new copy.
    assert build_results(src, r)[0][2].dataset.SOPInstanceUID == objs["sr"].SOPInstanceUID
    # A source without the geometry a SEG needs still gets its SC and SR.
    bare = _roundtrip(src)
    del bare.ImagePositionPatient, bare.ImageOrientationPatient, bare.FrameOfReferenceUID
    built, problems = build_results(bare, r)
    assert {o.kind for o in built} >= {"sc", "sr"} and all("not built" in p for p in problems)
    assert DISCLAIMER.lower() == "triage aid, not a diagnosis"


def _bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _roundtrip(ds):
    return pydicom.dcmread(io.BytesIO(_bytes(ds)))


def _check_sr(sr, src, result) -> None:
    evidence = [
        i.ReferencedSOPInstanceUID
        for s in sr.CurrentRequestedProcedureEvidenceSequence
        for se in s.ReferencedSeriesSequence
        for i in se.ReferencedSOPSequence
    ]
    assert src.SOPInstanceUID in evidence
    items = list(_walk(sr.ContentSequence))
    texts = [str(i.get("TextValue", "")) for i in items]
    meanings = [str(i.ConceptNameCodeSequence[0].CodeMeaning) for i in items if "ConceptNameCodeSequence" in i]
    codes = [str(i.ConceptCodeSequence[0].CodeValue) for i in items if "ConceptCodeSequence" in i]
    for c in ("no_tumor", "glioma", "meningioma", "pituitary"):
        assert f"probability of {c}" in meanings
    assert "malignancy triage risk" in meanings
    assert any(result.model_versions["classifier"] in t and "segmenter" in t for t in texts)
    assert set(result.flags) <= set(codes) and result.prediction.label in codes
    values = {
        item.ConceptNameCodeSequence[0].CodeValue: float(item.MeasuredValueSequence[0].NumericValue)
        for item in _walk(sr.ContentSequence)
        if getattr(item, "ValueType", "") == "NUM"
    }
    assert values["risk"] == pytest.approx(result.risk, abs=1e-6)
    assert values["p_glioma"] == pytest.approx(result.prediction.prob("glioma"), abs=1e-6)


def _walk(seq):
    for item in seq:
        yield item
        if "ContentSequence" in item:
            yield from _walk(item.ContentSequence)


# -- with a real Orthanc (slow) ---------------------------------------------------------
@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    why = orthanc_missing()
    if why:
        pytest.skip(why)
    listen_port = free_port()
    orth = Orthanc(tmp_path_factory.mktemp("orthanc"), {"triage": ["TRIAGE", "127.0.0.1", listen_port]})
    orth.listen_port = listen_port
    orth.start()
    yield orth
    orth.stop()


def _results_in_orthanc(orth: Orthanc, source_uid: str) -> dict:
    """kind -> dataset of the SEG / SC / SR in Orthanc that reference ``source_uid``."""
    found = {}
    for oid in orth.instances():
        ds = pydicom.dcmread(io.BytesIO(orth.file(oid)))
        if (
            ds.Modality == "SEG"
            and ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source_uid
        ):
            found["seg"] = ds
        elif "SourceImageSequence" in ds and ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source_uid:
            found["sc"] = ds
        elif ds.Modality == "SR" and source_uid in str(ds.CurrentRequestedProcedureEvidenceSequence):
            found["sr"] = ds
    return found


def _analysed_mask(wl: Worklist, scan_id: str, shape) -> np.ndarray:
    case = wl.get(scan_id)
    if not case.get("mask_path"):
        return np.zeros(shape, bool)
    return cv2.imread(case["mask_path"], cv2.IMREAD_GRAYSCALE) > 0


@pytest.mark.slow
def test_poll_end_to_end_with_orthanc(pacs, weights, tmp_path):
    pacs.clear()
    series = synthetic_mr_series(3, seed=1)
    for b in [*series, _file("MR_small.dcm"), _file("CT_small.dcm"), _malformed()]:
        pacs.upload(b)
    settings, service, wl, queue = _ctx(weights, tmp_path / "d")
    poller = Poller(queue, settings, pacs.dicomweb)
    res = poller.poll_once()
    assert res.queued == 5  # the series, MR_small and the malformed MR; the CT study is not fetched (MR only)
    assert process_pending(service, wl, queue, send=True) == 5
    assert wl.count() == 4
    (bad,) = queue.instances("rejected")
    assert "pixel data" in bad["reason"].lower()
    assert flush_outbox(queue, StowSender(pacs.dicomweb)) == (12, 0)
    assert poller.poll_once().queued == 0  # our own results are not taken for new studies
    for row in queue.instances("analysed"):
        results = _results_in_orthanc(pacs, row["sop_instance_uid"])
        assert set(results) == {"seg", "sc", "sr"}, row
        src = pydicom.dcmread(
            io.BytesIO(
                next(
                    b
                    for b in [*series, _file("MR_small.dcm")]
                    if row["sop_instance_uid"] in str(pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID)
                )
            )
        )
        seg = hd.seg.Segmentation.from_dataset(results["seg"])
        got = seg.get_pixels_by_source_instance([src.SOPInstanceUID])[0, ..., 0] > 0
        np.testing.assert_array_equal(got, _analysed_mask(wl, row["scan_ids"], got.shape))
        assert results["sc"].StudyInstanceUID == src.StudyInstanceUID
        assert results["seg"].SeriesInstanceUID != src.SeriesInstanceUID  # results never overwrite sources


@pytest.mark.slow
def test_orthanc_stopped_mid_poll_resumes_without_loss(pacs, weights, tmp_path, monkeypatch):
    pacs.clear()
    series = synthetic_mr_series(4, seed=2)
    for b in series:
        pacs.upload(b)
    settings, service, wl, queue = _ctx(weights, tmp_path / "d")
    poller = Poller(queue, settings, pacs.dicomweb, timeout_s=3)
    from dicomweb_client.api import DICOMwebClient

    real = DICOMwebClient.retrieve_instance
    calls = []

    def retrieve_then_stop(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            pacs.stop()  # the PACS goes down in the middle of the poll
        return real(self, *a, **k)

    monkeypatch.setattr(DICOMwebClient, "retrieve_instance", retrieve_then_stop)
    with pytest.raises((requests.RequestException, OSError)):
        poller.poll_once()
    assert len(queue.instances()) == 1  # what arrived before the outage is kept
    monkeypatch.setattr(DICOMwebClient, "retrieve_instance", real)
    pacs.start()
    assert poller.poll_once().queued == 3
    process_pending(service, wl, queue)
    assert wl.count() == 4 and len(queue.instances("analysed")) == 4


def _wait_listening(port: int, timeout_s: float = 30.0) -> None:
    """Until something accepts TCP connections on 127.0.0.1:port (the receiver thread has started)."""
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port}")


@pytest.mark.slow
def test_receiver_end_to_end_with_orthanc_routing(pacs, weights, tmp_path):
    pacs.clear()
    settings, service, wl, queue = _ctx(weights, tmp_path / "d")
    for b in [*synthetic_mr_series(2, seed=3), _file("MR_small.dcm"), _file("CT_small.dcm")]:
        pacs.upload(b)
    sources = pacs.instances()
    receiver = Receiver(queue, settings, "TRIAGE", pacs.listen_port, "127.0.0.1", allow=(pacs.aet,))
    sender = CStoreSender("127.0.0.1", pacs.dicom_port, pacs.aet, "TRIAGE")
    stop = threading.Event()
    from triage.pacs_net import run_listener

    worker = threading.Thread(target=run_listener, args=(receiver, service, wl, sender, stop), kwargs={"tick_s": 0.2})
    worker.start()
    try:
        _wait_listening(pacs.listen_port)
        pacs.send_to("triage", sources)
        pacs.send_to("triage", sources)  # a duplicate send: nothing is analysed or stored twice
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            queue.status().counts.get("received")
            or queue.status().outbox.get("pending")
            or sum(queue.status().counts.values()) < 4
        ):
            time.sleep(0.2)
    finally:
        stop.set()
        worker.join(30)
    counts = queue.status().counts
    assert counts == {"analysed": 3, "rejected": 1}, counts
    (ct,) = queue.instances("rejected")
    assert "CT" in ct["reason"]
    assert wl.count() == 3
    assert queue.status().outbox == {"sent": 9}
    assert len(pacs.instances()) == 4 + 9
    assert len(pacs.by_modality("SEG")) == 3


@pytest.mark.slow
def test_receiver_refuses_calling_ae_not_allowed(pacs, weights, tmp_path):
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage

    settings, _, _, queue = _ctx(weights, tmp_path / "d")
    port = free_port()
    receiver = Receiver(queue, settings, "TRIAGE", port, "127.0.0.1", allow=("PACS",))
    receiver.start()
    try:
        ae = AE("INTRUDER")
        ae.add_requested_context(MRImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE")
        assert not assoc.is_established
        ae = AE("PACS")
        ae.add_requested_context(MRImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE")
        assert assoc.is_established
        status = assoc.send_c_store(pydicom.dcmread(io.BytesIO(synthetic_mr_series(1, seed=4)[0])))
        assoc.release()
        assert status.Status == 0
    finally:
        receiver.stop()
    assert len(queue.instances()) == 1


@pytest.mark.slow
def test_status_page_shows_counts_and_errors(weights, tmp_path, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("TRIAGE_WEIGHTS_DIR", str(weights))
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path / "d"))
    st.cache_resource.clear()
    app = str(Path(__file__).resolve().parents[1] / "app.py")
    at = AppTest.from_file(app, default_timeout=120).run()
    at.switch_page("views/pacs.py").run()
    assert not at.exception and "No PACS connection" in at.info[0].value
    settings, service, wl, queue = _ctx(weights, tmp_path / "d")
    receive_bytes(queue, settings, _file("CT_small.dcm"), "test")
    process_pending(service, wl, queue)
    queue.set_state("poll", "down", "http://pacs/dicom-web: ConnectionError")
    queue.event("poll", "error", "poll of http://pacs/dicom-web failed: ConnectionError")
    at.run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Refused"] == "1" and metrics["Analysed"] == "0"
    assert "ConnectionError" in at.dataframe[-1].value["message"][0]
    st.cache_resource.clear()


@pytest.mark.slow
def test_poll_command_once_against_orthanc(pacs, weights, tmp_path):
    import os
    import subprocess
    import sys

    pacs.clear()
    pacs.upload(_file("MR_small.dcm"))
    env = {**os.environ, "TRIAGE_WEIGHTS_DIR": str(weights), "TRIAGE_DATA_DIR": str(tmp_path / "d")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    cmd = [sys.executable, "-m", "triage", "poll", "--url", pacs.dicomweb, "--once", "--send", pacs.dicomweb]
    out = subprocess.run(["nice", "-n", "10", *cmd], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "'analysed': 1" in out.stdout and "'sent': 3" in out.stdout
    assert len(pacs.instances()) == 4
