"""PACS receive memory (issue 20): Python memory while the C-STORE receiver takes one large instance.

Starts a private Orthanc (127.0.0.1, free ports, temporary storage) that routes to a receiver in
this process, stores 16-bit MR instances of ``--sizes`` MB of pixel data into Orthanc and has
Orthanc C-STORE each to the receiver. The peak of Python allocations (tracemalloc) during the
transfer is measured for the receiver as built (pynetdicom writes the dataset to a temporary file
as it arrives, ``STORE_RECV_CHUNKED_DATASET``; the handler moves the file into the queue) and, for
comparison, for the in-memory way (``event.encoded_dataset()`` handed over as bytes).

    python bench/pacs_receive_memory.py --sizes 8 32 128
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))

import numpy as np  # noqa: E402
import pydicom  # noqa: E402

from tests.orthanc import Orthanc, free_port, orthanc_missing, synthetic_mr_series  # noqa: E402
from triage.config import get_settings  # noqa: E402
from triage.pacs import PacsQueue, pacs_db_path, receive_bytes  # noqa: E402
from triage.pacs_net import OUT_OF_RESOURCES, SUCCESS, Receiver  # noqa: E402


class InMemoryReceiver(Receiver):
    """The comparison: the whole encoded dataset handed to the queue as one bytes object."""

    def _on_store(self, event) -> int:
        try:
            receive_bytes(self.queue, self.settings, event.encoded_dataset(include_meta=True), "bench")
        except Exception:
            return OUT_OF_RESOURCES
        return SUCCESS

    def start(self) -> None:
        super().start()
        from pynetdicom import _config

        _config.STORE_RECV_CHUNKED_DATASET = False


def large_mr(mb: int, seed: int) -> bytes:
    side = int((mb * 2**20 / 2) ** 0.5)
    ds = pydicom.dcmread(io.BytesIO(synthetic_mr_series(1, seed=seed)[0]))
    ds.Rows = ds.Columns = side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = (np.arange(side * side, dtype=np.uint16) % 4096).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def wait_listening(port: int) -> None:
    for _ in range(300):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def measure(orth: Orthanc, cls, port: int, data_dir: Path, oid: str) -> tuple[float, float]:
    """(peak MB of Python allocations, seconds) while Orthanc sends instance ``oid`` to ``cls``."""
    settings = get_settings(data_dir=data_dir)
    receiver = cls(PacsQueue(pacs_db_path(settings)), settings, "TRIAGE", port, allow=(orth.aet,))
    receiver.start()
    try:
        wait_listening(port)
        tracemalloc.start()
        t = time.perf_counter()
        orth.send_to("triage", [oid])
        secs = time.perf_counter() - t
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        receiver.stop()
    if len(receiver.queue.instances()) != 1:
        raise RuntimeError("the instance was not queued")
    return peak / 2**20, secs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 32, 128], help="pixel data sizes in MB")
    args = p.parse_args()
    why = orthanc_missing()
    if why:
        print(f"skipped: {why}")
        return 3
    tmp = Path(tempfile.mkdtemp(prefix="pacs-mem-"))
    port = free_port()
    orth = Orthanc(tmp / "orthanc", {"triage": ["TRIAGE", "127.0.0.1", port]}).start()
    rows = []
    try:
        for i, mb in enumerate(args.sizes):
            oid = orth.upload(large_mr(mb, seed=200 + i))["ID"]
            chunked = measure(orth, Receiver, port, tmp / f"chunked-{mb}", oid)
            memory = measure(orth, InMemoryReceiver, port, tmp / f"memory-{mb}", oid)
            rows.append((mb, chunked, memory))
    finally:
        orth.stop()
    print("\nPACS receive memory: one 16-bit MR instance C-STOREd by Orthanc to the receiver in this process")
    print(f"machine: {os.cpu_count()} CPUs; peak of Python allocations (tracemalloc) during the transfer\n")
    print("| pixel data (MB) | streamed to disk: peak MB | s | in memory (encoded_dataset): peak MB | s |")
    print("|---|---|---|---|---|")
    for mb, (cp, cs), (mp, ms) in rows:
        print(f"| {mb} | {cp:.1f} | {cs:.1f} | {mp:.1f} | {ms:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
