"""A private Orthanc for the PACS tests and bench: 127.0.0.1, free ports, temporary storage, DICOMweb on.

Debian's ``orthanc`` and ``orthanc-dicomweb`` packages provide it (``.ci/run`` installs them).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import requests

PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")


def free_port() -> int:
    """A TCP port nothing listens on right now (127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def orthanc_missing() -> str | None:
    """Why Orthanc with DICOMweb cannot be started here, or None."""
    if shutil.which("Orthanc") is None:
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb; .ci/run does it as root)"
    if _plugin() is None:
        return "the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    return None


def _plugin() -> str | None:
    for d in PLUGIN_DIRS:
        for p in sorted(Path(d).glob("libOrthancDicomWeb.so*")) if Path(d).is_dir() else []:
            return str(p)
    return None


class Orthanc:
    """One Orthanc process; ``modalities`` maps a name to (AE title, host, port) it may send to."""

    def __init__(self, folder: Path, modalities: dict | None = None, aet: str = "ORTHANC"):
        self.folder = Path(folder)
        self.http_port, self.dicom_port, self.aet = free_port(), free_port(), aet
        self.proc: subprocess.Popen | None = None
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "triage-test",
            "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpBind": "127.0.0.1",
            "DicomCheckCalledAet": False,
            "Plugins": [_plugin()],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomModalities": {k: list(v) for k, v in (modalities or {}).items()},
            "StableAge": 1,
        }
        (self.folder / "orthanc.json").write_text(json.dumps(config), encoding="utf-8")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self, timeout_s: float = 30.0) -> Orthanc:
        """Start (or restart after :meth:`stop`) and wait until the REST API answers."""
        log = open(self.folder / "orthanc.log", "ab")  # kept open for the process
        self.proc = subprocess.Popen(
            ["nice", "-n", "10", "Orthanc", str(self.folder / "orthanc.json")], stdout=log, stderr=log
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited: see {self.folder / 'orthanc.log'}")
            try:
                if requests.get(f"{self.url}/system", timeout=1).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError("Orthanc did not start in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    # -- REST helpers ------------------------------------------------------------------
    def upload(self, data: bytes) -> dict:
        """POST one DICOM file; Orthanc's answer (ID, Status...)."""
        r = requests.post(f"{self.url}/instances", data=data, timeout=30)
        r.raise_for_status()
        return r.json()

    def instances(self) -> list[str]:
        return requests.get(f"{self.url}/instances", timeout=30).json()

    def tags(self, orthanc_id: str) -> dict:
        return requests.get(f"{self.url}/instances/{orthanc_id}/simplified-tags", timeout=30).json()

    def file(self, orthanc_id: str) -> bytes:
        return requests.get(f"{self.url}/instances/{orthanc_id}/file", timeout=30).content

    def by_modality(self, modality: str) -> list[str]:
        """Orthanc ids of the instances whose Modality is ``modality``."""
        return [i for i in self.instances() if self.tags(i).get("Modality") == modality]

    def send_to(self, modality: str, orthanc_ids: list[str]) -> dict:
        """Ask Orthanc to C-STORE these instances to one of its modalities (as a PACS routes)."""
        r = requests.post(f"{self.url}/modalities/{modality}/store", json={"Resources": orthanc_ids}, timeout=60)
        r.raise_for_status()
        return r.json()

    def clear(self) -> None:
        for i in self.instances():
            requests.delete(f"{self.url}/instances/{i}", timeout=30)


def synthetic_mr_series(n: int = 3, seed: int = 0, shape: tuple[int, int] = (256, 256)) -> list[bytes]:
    """``n`` axial brain-MR slices of one new study/series, as DICOM files (pydicom), tumour drawn in."""
    import io

    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    from tests.conftest import draw_synthetic_slice

    study, series, frame_of_ref = generate_uid(), generate_uid(), generate_uid()
    out = []
    for i in range(n):
        img, _ = draw_synthetic_slice(shape, seed=seed * 1000 + i, tumor_radius=18 + i)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_ref
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Synthetic", f"SYN{seed}", "", "O"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20261202", "120000", f"ACC{seed}", "1"
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.BodyPartExamined, ds.SeriesNumber, ds.InstanceNumber = "MR", "BRAIN", 1, i + 1
        ds.SeriesDescription = "synthetic T1 axial"
        ds.Manufacturer = "synthetic"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [-128.0, -128.0, 5.0 * i]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 5.0
        ds.Rows, ds.Columns = shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = np.ascontiguousarray(img).tobytes()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out
