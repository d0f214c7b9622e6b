"""The analysis path's network runner: a version's checked ONNX export under ONNX Runtime.

Why ONNX Runtime rather than torch for analysis (issue 17): importing torch, timm and MONAI costs
about 16 s of start-up, and torch's OpenMP pool spins on cores it does not get, so one busy core
made a slice 20-50x slower. ONNX Runtime imports in a fraction of a second, runs the same
networks 2-5x faster at one thread, and can be told not to spin. The export is made and checked
against the torch outputs when a version is created (:mod:`triage.onnx_export`); a version
without a valid export falls back to torch, with a log line saying why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
ONNX_RECORD = "onnx.json"
BACKENDS = ("auto", "onnx", "torch")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def onnx_problem(folder: Path) -> str | None:
    """Why the version in ``folder`` cannot run on ONNX Runtime, or None when its export is valid:
    the record says the check passed and both the ONNX file and the weights it was exported from
    are the ones on disk now."""
    folder = Path(folder)
    try:
        record = json.loads((folder / ONNX_RECORD).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no ONNX export (run `python -m triage export-onnx`)"
    except (OSError, ValueError) as exc:
        return f"unreadable {ONNX_RECORD}: {exc}"
    if not record.get("ok"):
        return f"the ONNX export failed its check: {record.get('reason', 'unknown reason')}"
    try:
        if file_sha256(folder / ONNX_FILE) != record.get("sha256"):
            return f"{ONNX_FILE} does not match its record (changed or truncated)"
        if file_sha256(folder / "model.safetensors") != record.get("weights_sha256"):
            return "model.safetensors changed after the ONNX export"
    except OSError as exc:
        return f"cannot read the export: {exc.strerror or exc}"
    return None


def session_options(threads: int):
    """Options for a busy workstation: ``threads`` intra-op threads that sleep instead of spinning
    while they wait (a spinning pool on a core another process holds is what made torch 20-50x
    slower), one inter-op thread, all graph optimisations."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3  # warnings about unused initialisers are noise to a user
    return so


def single_thread_blas() -> None:
    """Run NumPy's BLAS on one thread in this process. The analysis multiplies small matrices
    (the resize of stage 2, the OOD distance); with OpenBLAS's default pool of one thread per core
    they took 50-70 ms instead of 0.6 ms while another process held a core, because its threads
    spin on a core they do not get."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


class OnnxNet:
    """One version's ONNX network: float32 (N, 1, S, S) in, its outputs as NumPy arrays out."""

    def __init__(self, folder: Path, threads: int = 1):
        import onnxruntime as ort

        self.path = Path(folder) / ONNX_FILE
        self.session = ort.InferenceSession(
            str(self.path), session_options(threads), providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._lock = threading.Lock()  # one run at a time: the intra-op pool is sized for the machine

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        with self._lock:
            return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})


def onnx_net(folder: Path, backend: str = "auto", threads: int = 1) -> OnnxNet | None:
    """The ONNX runner for a version folder, or None when the torch path is to be used.

    ``backend``: ``auto`` (ONNX when the export is valid, else torch with a warning), ``onnx``
    (an invalid export is an error), ``torch`` (never ONNX).
    """
    if backend not in BACKENDS:
        raise ValueError(f"inference backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return None
    problem = onnx_problem(folder)
    if problem is None:
        try:
            return OnnxNet(folder, threads)
        except Exception as exc:  # a corrupt graph: onnxruntime raises its own exception types
            problem = f"ONNX Runtime cannot load {ONNX_FILE}: {exc}"
    if backend == "onnx":
        from triage.errors import ModelNotFoundError

        raise ModelNotFoundError(f"{Path(folder).name}: {problem}")
    log.warning("%s: %s; using the torch path (slower start-up)", Path(folder), problem)
    return None
