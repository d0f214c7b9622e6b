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
    assert a.host == "127.0.0.1"  # this machine only unless asked
    assert build_parser().parse_args(["listen", "--host", "0.0.0.0"]).host == "0.0.0.0"
    assert Receiver.__init__.__defaults__[0] == "127.0.0.1"
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


def _findings(service, files: list[bytes], masks: list[np.ndarray] | None = None):
    """SeriesFindings of analysed DICOM files (one result each), optionally with forced masks."""
    from dataclasses import replace

    from triage.pacs_results import SeriesFindings, finding_from_result

    slices = []
    for i, data in enumerate(files):
        (r,) = service.analyze_bytes(data, f"{i}.dcm")
        f = finding_from_result(pydicom.dcmread(io.BytesIO(data)), r)
        if masks is not None:
            f = replace(f, mask=masks[i], area_px=int(masks[i].sum()))
        slices.append(f)
    return SeriesFindings(tuple(slices), dict(r.model_versions), volume_ml=1.5), r.model_versions


def test_series_results_reference_every_instance_and_keep_its_mask(weights, tmp_path):
    _, service, _, _ = _ctx(weights, tmp_path / "d")
    files = synthetic_mr_series(3, seed=11, shape=(64, 64))
    masks = [np.zeros((64, 64), bool) for _ in files]
    masks[0][10:20, 5:25] = True
    masks[2][30:50, 30:40] = True  # the middle slice has an empty mask: its frame is kept, empty
    findings, _ = _findings(service, files, masks)
    srcs = [pydicom.dcmread(io.BytesIO(b)) for b in files]
    built, problems = build_results(findings)
    assert problems == [] and [o.kind for o in built] == ["seg", "sc", "sr"]
    objs = {o.kind: o.dataset for o in built}
    # One SEG for the series: one frame per source instance, each with that instance's mask.
    seg = hd.seg.Segmentation.from_dataset(_roundtrip(objs["seg"]))
    uids = [s.SOPInstanceUID for s in srcs]
    assert sorted(u[2] for u in seg.get_source_image_uids()) == sorted(uids)
    assert int(objs["seg"].NumberOfFrames) == 3
    got = seg.get_pixels_by_source_instance(uids)[..., 0] > 0
    np.testing.assert_array_equal(got, np.stack(masks))
    assert objs["seg"].StudyInstanceUID == srcs[0].StudyInstanceUID
    assert objs["seg"].SeriesInstanceUID != srcs[0].SeriesInstanceUID  # a new series, never a source's
    # One SC: the key slice (highest risk) with its overlay, marked derived.
    key = max(range(3), key=lambda i: (findings.slices[i].risk, -i))
    sc = _roundtrip(objs["sc"])
    assert sc.ImageType[0] == "DERIVED" and sc.BurnedInAnnotation == "YES"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == uids[key]
    assert f"key slice {key + 1} of 3" in sc.DerivationDescription
    # One SR: a series-level group, then one group per slice referencing that slice.
    sr = hd.sr.srread(io.BytesIO(_bytes(objs["sr"])))
    _check_sr(sr, srcs, findings)
    # The same result built again has the same UIDs: a re-send is a duplicate, never a new copy.
    again, _ = build_results(findings)
    assert [o.sop_instance_uid for o in again] == [o.sop_instance_uid for o in built]
    # A part of the series is another result set (other UIDs), not a replacement of this one.
    part, _ = _findings(service, files[:2])
    assert build_results(part)[0][0].sop_instance_uid != built[0].sop_instance_uid
    # Sources without the geometry a SEG needs still get their SC and SR.
    from dataclasses import replace

    bare = []
    for f in findings.slices:
        ds = _roundtrip(f.source)
        del ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.FrameOfReferenceUID
        bare.append(replace(f, source=ds))
    built, problems = build_results(replace(findings, slices=tuple(bare)))
    assert {o.kind for o in built} == {"sc", "sr"} and len(problems) == 1 and "SEG not built" in problems[0]
    assert DISCLAIMER.lower() == "triage aid, not a diagnosis"


def _bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _roundtrip(ds):
    return pydicom.dcmread(io.BytesIO(_bytes(ds)))


def _check_sr(sr, srcs, findings) -> None:
    """The SR references every source, has a series-level group and one group per slice."""
    evidence = [
        i.ReferencedSOPInstanceUID
        for s in sr.CurrentRequestedProcedureEvidenceSequence
        for se in s.ReferencedSeriesSequence
        for i in se.ReferencedSOPSequence
    ]
    assert {s.SOPInstanceUID for s in srcs} <= set(evidence)
    items = list(_walk(sr.ContentSequence))
    texts = [str(i.get("TextValue", "")) for i in items]
    versions = findings.model_versions
    assert any(versions["classifier"] in t and "segmenter" in t for t in texts)
    groups = [g for g in sr.ContentSequence if g.ConceptNameCodeSequence[0].CodeValue == "126010"]
    (container,) = groups
    groups = [g for g in container.ContentSequence if g.ValueType == "CONTAINER"]
    assert len(groups) == 1 + len(srcs)

    def nums(group) -> dict:
        return {
            i.ConceptNameCodeSequence[0].CodeValue: float(i.MeasuredValueSequence[0].NumericValue)
            for i in _walk(group.ContentSequence)
            if getattr(i, "ValueType", "") == "NUM"
        }

    def refs(group) -> list:
        return [
            i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            for i in _walk(group.ContentSequence)
            if getattr(i, "ValueType", "") == "IMAGE"
        ]

    def coded(group) -> set:
        return {
            str(i.ConceptCodeSequence[0].CodeValue) for i in _walk(group.ContentSequence) if "ConceptCodeSequence" in i
        }

    series = nums(groups[0])
    key = findings.key
    assert series["risk"] == pytest.approx(key.risk, abs=1e-6)
    assert series["n_slices"] == len(srcs) and series["tumor_volume_ml"] == pytest.approx(findings.volume_ml)
    assert series["n_suspicious"] == sum(s.suspicious for s in findings.slices)
    assert sorted(refs(groups[0])) == sorted(s.SOPInstanceUID for s in srcs)
    assert key.label in coded(groups[0])
    for group, f in zip(groups[1:], findings.slices):
        values = nums(group)
        assert refs(group) == [f.sop_instance_uid]
        assert values["risk"] == pytest.approx(f.risk, abs=1e-6)
        assert values["p_glioma"] == pytest.approx(f.probs[1], abs=1e-6)
        assert values["tumor_area_px"] == f.area_px
        assert f.label in coded(group) and set(f.flags) <= coded(group)


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


def _results_in_orthanc(orth: Orthanc, series_uid: str, source_uids: set) -> dict:
    """kind -> list of the SEG / SC / SR datasets in Orthanc that reference the source series."""
    found: dict = {}
    for oid in orth.instances():
        ds = pydicom.dcmread(io.BytesIO(orth.file(oid)))
        if ds.Modality == "SEG" and ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid:
            found.setdefault("seg", []).append(ds)
        elif ds.Modality == "SR" and series_uid in str(ds.CurrentRequestedProcedureEvidenceSequence):
            found.setdefault("sr", []).append(ds)
        elif "SourceImageSequence" in ds and ds.Modality != "SEG":
            ref = ds.SourceImageSequence[0].ReferencedSOPInstanceUID
            if ref in source_uids:
                found.setdefault("sc", []).append(ds)
    return found


def _analysed_mask(wl: Worklist, scan_id: str, shape) -> np.ndarray:
    case = wl.get(scan_id)
    if not case.mask_path:
        return np.zeros(shape, bool)
    return cv2.imread(case.mask_path, cv2.IMREAD_GRAYSCALE) > 0


@pytest.mark.slow
def test_poll_end_to_end_with_orthanc(pacs, weights, tmp_path):
    pacs.clear()
    series = synthetic_mr_series(3, seed=1)
    sources = [pydicom.dcmread(io.BytesIO(b)) for b in [*series, _file("MR_small.dcm")]]
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
    # One SEG + SC + SR per analysed series (the 3-slice series and MR_small), not per instance.
    assert flush_outbox(queue, StowSender(pacs.dicomweb)) == (6, 0)
    assert poller.poll_once().queued == 0  # our own results are not taken for new studies
    analysed = {r["sop_instance_uid"]: r["scan_ids"] for r in queue.instances("analysed")}
    by_series: dict = {}
    for src in sources:
        by_series.setdefault(src.SeriesInstanceUID, []).append(src)
    for series_uid, srcs in by_series.items():
        results = _results_in_orthanc(pacs, series_uid, {s.SOPInstanceUID for s in srcs})
        assert {k: len(v) for k, v in results.items()} == {"seg": 1, "sc": 1, "sr": 1}, series_uid
        uids = [s.SOPInstanceUID for s in srcs]
        seg = hd.seg.Segmentation.from_dataset(results["seg"][0])
        assert sorted(u[2] for u in seg.get_source_image_uids()) == sorted(uids)  # every instance referenced
        got = seg.get_pixels_by_source_instance(uids)[..., 0] > 0
        want = np.stack([_analysed_mask(wl, analysed[u], got.shape[1:]) for u in uids])
        np.testing.assert_array_equal(got, want)  # each frame is that instance's analysed mask
        sr = hd.sr.srread(io.BytesIO(_bytes(results["sr"][0])))
        evidence = {
            i.ReferencedSOPInstanceUID
            for s in sr.CurrentRequestedProcedureEvidenceSequence
            for se in s.ReferencedSeriesSequence
            for i in se.ReferencedSOPSequence
        }
        assert set(uids) <= evidence
        risks = [wl.get(analysed[u]).risk for u in uids]
        assert results["sc"][0].SourceImageSequence[0].ReferencedSOPInstanceUID == uids[risks.index(max(risks))]
        assert results["sc"][0].StudyInstanceUID == srcs[0].StudyInstanceUID
        assert results["seg"][0].SeriesInstanceUID != series_uid  # results never overwrite sources


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
    assert queue.status().outbox == {"sent": 6}  # one SEG + SC + SR per series (2 MR series)
    assert len(pacs.instances()) == 4 + 6
    (seg,) = [
        pydicom.dcmread(io.BytesIO(pacs.file(i)))
        for i in pacs.by_modality("SEG")
        if int(pydicom.dcmread(io.BytesIO(pacs.file(i)), stop_before_pixels=True).NumberOfFrames) == 2
    ]
    assert len(pacs.by_modality("SEG")) == 2 and len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 2


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


# -- starting / stopping the services from the app ---------------------------------------
def test_service_options_are_checked_before_anything_starts(tmp_path):
    from triage.pacs_service import ServiceError, listen_args, pid_file, poll_args, service_state, start_service

    settings = get_settings(data_dir=tmp_path / "d")
    bad = [
        ("poll", poll_args(""), "must start with http"),
        ("poll", poll_args("http://pacs/dicom-web", interval_s=0), "interval must be positive"),
        ("listen", listen_args(ae_title="A" * 17), "1-16 characters"),
        ("listen", listen_args(port=70000), "port must be"),
        ("listen", listen_args(send="dicom://nohost"), "dicom://AE_TITLE@host:port"),
        ("listen", ["--port", "eleven"], "invalid listen options"),
    ]
    for kind, args, why in bad:
        with pytest.raises(ServiceError, match=why):
            start_service(settings, kind, args)
        assert not pid_file(settings, kind).exists()
    assert not Path(settings.data_dir).exists()  # refused before anything was written
    # A pid file of a process that is gone, or of a pid reused by another process, is not "running".
    pid_file(settings, "poll").parent.mkdir(parents=True)
    pid_file(settings, "poll").write_text('{"pid": 999999, "create_time": 1}')
    assert not service_state(settings, "poll").running
    import os

    pid_file(settings, "poll").write_text(f'{{"pid": {os.getpid()}, "create_time": 1}}')
    assert not service_state(settings, "poll").running
    pid_file(settings, "poll").write_text("{half")
    assert not service_state(settings, "poll").running


@pytest.mark.slow
def test_receiver_service_starts_once_and_stops(weights, tmp_path, monkeypatch):
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage

    from triage.pacs_service import ServiceError, listen_args, pid_file, service_state, start_service, stop_service

    monkeypatch.setenv("TRIAGE_WEIGHTS_DIR", str(weights))
    settings = get_settings(weights_dir=weights, data_dir=tmp_path / "d")
    port = free_port()
    args = listen_args("TRIAGE", port, allow=("PACS",))
    errors: list[str] = []

    def start():
        try:
            start_service(settings, "listen", args)
        except ServiceError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=start) for _ in range(2)]  # two tabs click "Start" at once
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(errors) == 1 and "already runs" in errors[0], errors
        state = service_state(settings, "listen")
        assert state.running and pid_file(settings, "listen").exists()
        pid = state.pid
        assert "--host" in state.command and "127.0.0.1" in state.command
        _wait_listening(port)
        ae = AE("PACS")  # the real receiver: an allowed AE stores an instance, it is queued
        ae.add_requested_context(MRImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE")
        assert assoc.is_established
        assert assoc.send_c_store(pydicom.dcmread(io.BytesIO(synthetic_mr_series(1, seed=5)[0]))).Status == 0
        assoc.release()
        queue = PacsQueue(pacs_db_path(settings))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and queue.status().counts.get("analysed", 0) < 1:
            time.sleep(0.2)
        assert queue.status().counts == {"analysed": 1}
        spool = Path(settings.data_dir, "pacs", "spool")  # streamed there, then renamed into the queue
        assert spool.is_dir() and not any(spool.iterdir())
    finally:
        state = stop_service(settings, "listen")
    assert not state.running and not pid_file(settings, "listen").exists()
    import socket

    import psutil

    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more
    assert any("listening as TRIAGE@127.0.0.1" in line for line in state.log_tail)


@pytest.mark.slow
def test_pacs_page_starts_and_stops_the_poller_across_tabs(weights, tmp_path, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from triage.pacs_service import service_state, stop_service

    monkeypatch.setenv("TRIAGE_WEIGHTS_DIR", str(weights))
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path / "d"))
    settings = get_settings(weights_dir=weights, data_dir=tmp_path / "d")
    st.cache_resource.clear()
    app = str(Path(__file__).resolve().parents[1] / "app.py")

    def page():
        at = AppTest.from_file(app, default_timeout=120).run()
        at.switch_page("views/pacs.py").run()
        assert not at.exception
        return at

    def summary(at, title: str) -> str:
        return next(m.value for m in at.markdown if m.value.startswith(f"**{title}**"))

    tab1 = page()
    assert "stopped" in summary(tab1, "DICOMweb poller") and "stopped" in summary(tab1, "DICOM receiver (C-STORE)")
    tab1.button(key="pacs_start_poll").click().run()  # no URL yet: a clear message, nothing started
    assert "must start with http" in tab1.error[0].value and not service_state(settings, "poll").running
    try:
        # A PACS that is down: the poller still runs (and keeps retrying), which is what we start and stop.
        tab1.text_input(key="pacs_poll_url").input(f"http://127.0.0.1:{free_port()}/dicom-web")
        tab1.number_input(key="pacs_poll_interval").set_value(60.0)
        tab1.button(key="pacs_start_poll").click().run()
        assert not tab1.exception and not tab1.error
        assert "running" in summary(tab1, "DICOMweb poller")
        pid = service_state(settings, "poll").pid
        tab1.run()  # a rerun does not start another one or lose it
        assert service_state(settings, "poll").pid == pid
        tab2 = page()  # another tab sees the same service and may stop it
        assert f"pid {pid}" in summary(tab2, "DICOMweb poller")
        assert not [b for b in tab2.button if b.key == "pacs_start_poll"]
        tab2.button(key="pacs_stop_poll").click().run()
        assert "stopped" in summary(tab2, "DICOMweb poller") and not service_state(settings, "poll").running
        tab1.run()
        assert "stopped" in summary(tab1, "DICOMweb poller")
        assert [b for b in tab1.button if b.key == "pacs_start_poll"]
    finally:
        stop_service(settings, "poll")
        st.cache_resource.clear()


def _large_mr(side: int = 4096) -> bytes:
    """A 16-bit ``side`` x ``side`` MR instance (32 MB of pixel data at 4096) of a new study."""
    ds = pydicom.dcmread(io.BytesIO(synthetic_mr_series(1, seed=12)[0]))
    ds.Rows = ds.Columns = side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = (np.arange(side * side, dtype=np.uint16) % 4096).tobytes()
    return _bytes(ds)


@pytest.mark.slow
def test_received_instance_is_streamed_to_disk_not_held_in_memory(pacs, weights, tmp_path):
    import tracemalloc

    pacs.clear()
    big = _large_mr()
    oid = pacs.upload(big)["ID"]
    settings, _, _, queue = _ctx(weights, tmp_path / "d")
    receiver = Receiver(queue, settings, "TRIAGE", pacs.listen_port, allow=(pacs.aet,))
    receiver.start()
    try:
        _wait_listening(pacs.listen_port)
        tracemalloc.start()
        pacs.send_to("triage", [oid])  # Orthanc C-STOREs the 32 MB instance to our receiver
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        receiver.stop()
    (row,) = queue.instances()
    stored = Path(row["path"]).read_bytes()
    assert pydicom.dcmread(io.BytesIO(stored)).PixelData == pydicom.dcmread(io.BytesIO(big)).PixelData
    assert len(stored) > 32 * 2**20
    # Python allocations while receiving stay a small fraction of the instance: about 3.5 MB whatever
    # its size (bench/pacs_receive_memory.py), against twice the instance for encoded_dataset().
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MB while receiving a {len(stored) / 2**20:.0f} MB instance"


def test_a_series_still_arriving_waits_then_gets_one_result_set(weights, tmp_path):
    settings, service, wl, queue = _ctx(weights, tmp_path / "d")
    files = synthetic_mr_series(3, seed=13, shape=(64, 64))
    for b in files[:2]:
        receive_bytes(queue, settings, b, "test")
    assert process_pending(service, wl, queue, send=True, settle_s=60) == 0  # the sender is still sending
    receive_bytes(queue, settings, files[2], "test")
    assert process_pending(service, wl, queue, send=True) == 3
    rec = Recorder()
    assert flush_outbox(queue, rec) == (3, 0)  # one SEG, SC and SR for the three instances
    seg = next(pydicom.dcmread(io.BytesIO(b)) for b in rec.stored if pydicom.dcmread(io.BytesIO(b)).Modality == "SEG")
    assert int(seg.NumberOfFrames) == 3
    refs = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refs == {pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID for b in files}
    assert len({c.study_key for c in wl.list_cases()}) == 1  # one study in the worklist
