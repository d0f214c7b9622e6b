"""A wall-clock limit on decoding one upload (issue 22, second round, item 6 continued).

A decoder stuck in C code (a pathological TIFF, a JPEG 2000 frame, a DICOM with thousands of
compressed fragments) cannot be interrupted inside a thread. Uploads are therefore decoded in
worker processes (``python -c`` children of the server that import only the decoders; not
``multiprocessing``, whose workers import the parent's main module, which under ``streamlit run``
is the app itself) and a decode that takes longer than the limit is stopped by killing its
worker: the upload gets a clear reason and the rest of the batch goes on. A worker that dies (a
decoder crash, the kernel's OOM killer) is a refusal of that file too, never of the server.

The protocol on the worker's stdin/stdout, both ways: a JSON header and a binary body, each
after its 8-byte big-endian length (no pickle: nothing a decoder could forge is ever executed).
The request's body is the upload, the answer's the decoded frames' pixels one after the other.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import struct
import subprocess
import sys
import threading
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from triage.config import Settings
from triage.errors import InvalidScanError
from triage.records import Scan

log = logging.getLogger(__name__)

WORKERS = 2  # idle workers kept (two cores: two sessions can decode at once)
START_TIMEOUT_S = 300.0  # imports on a busy machine; not counted in the limit
_REPO = Path(__file__).resolve().parent.parent
_SERVE = "from triage.decode_limit import serve; serve()"
_idle: list[_Worker] = []
_idle_lock = threading.Lock()


class _WorkerGone(Exception):
    """The worker died or stopped answering."""


def _send(fh, header: dict, body: bytes = b"") -> None:
    head = json.dumps(header).encode("utf-8")
    fh.write(struct.pack(">Q", len(head)) + head + struct.pack(">Q", len(body)))
    fh.write(body)
    fh.flush()


def _read_exact(fh, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = fh.read(n - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return bytes(out)


def _read_message(read) -> tuple[dict, bytes]:
    """(header, body) with ``read(n)`` returning exactly n bytes."""
    (n,) = struct.unpack(">Q", read(8))
    header = json.loads(read(n).decode("utf-8"))
    (m,) = struct.unpack(">Q", read(8))
    return header, read(m)


def _settings_dict(settings: Settings) -> dict:
    return {f.name: str(v) if isinstance(v, Path) else v for f in fields(settings) for v in [getattr(settings, f.name)]}


def _settings_from(values: dict) -> Settings:
    base = Settings()
    return replace(base, **{k: Path(v) if isinstance(getattr(base, k), Path) else v for k, v in values.items()})


def _scans_message(scans: list[Scan]) -> tuple[dict, bytes]:
    arrays = [np.ascontiguousarray(s.pixels) for s in scans]
    header = {
        "kind": "ok",
        "scans": [
            {
                "scan_id": s.scan_id,
                "name": s.name,
                "pixel_spacing": list(s.pixel_spacing) if s.pixel_spacing else None,
                "source_format": s.source_format,
                "frame": s.frame,
                "meta": s.meta,
                "shape": list(a.shape),
                "dtype": a.dtype.str,
            }
            for s, a in zip(scans, arrays)
        ],
    }
    return header, b"".join(a.tobytes() for a in arrays)


def _scans_from(header: dict, body: bytes) -> list[Scan]:
    scans, at = [], 0
    for s in header["scans"]:
        dtype = np.dtype(s["dtype"])
        size = int(np.prod(s["shape"])) * dtype.itemsize
        pixels = np.frombuffer(body[at : at + size], dtype=dtype).reshape(s["shape"]).copy()
        at += size
        spacing = tuple(s["pixel_spacing"]) if s["pixel_spacing"] else None
        scans.append(Scan(s["scan_id"], s["name"], pixels, spacing, s["source_format"], s["frame"], s["meta"]))
    return scans


def _warm_up(read_scans) -> None:
    """One small decode loads what the decoders import lazily, before the worker says it is ready."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64), 100, np.uint8)).save(buf, "PNG")
    try:
        read_scans(buf.getvalue(), "warm-up.png")
    except Exception:  # a blank image may be refused; the imports are what matters
        pass


def serve() -> None:
    """The worker's loop: a request (name, frame, settings; body: the file) in, decoded scans
    (or the reason they were refused) out."""
    from triage.io import read_scans  # the decoders, imported once

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a decoder that prints must not break the protocol
    _warm_up(read_scans)
    _send(stdout, {"kind": "ready"})
    while True:
        try:
            header, data = _read_message(lambda n: _read_exact(stdin, n))
        except EOFError:
            return
        try:
            scans = read_scans(data, header["name"], _settings_from(header["settings"]), frame=header["frame"])
            answer, body = _scans_message(scans)
        except InvalidScanError as exc:
            answer, body = {"kind": "invalid", "text": str(exc)}, b""
        except Exception as exc:  # an unexpected decoder error: a refusal, with its type only
            answer, body = {"kind": "invalid", "text": f"cannot be decoded ({type(exc).__name__})"}, b""
        try:
            _send(stdout, json.loads(json.dumps(answer, default=str)), body)
        except (TypeError, ValueError):
            _send(stdout, {"kind": "invalid", "text": "cannot be decoded (unreadable header values)"})


class _Worker:
    """One decoding child process."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(_REPO), os.environ.get("PYTHONPATH")) if p)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=str(_REPO)
        )
        self._read(START_TIMEOUT_S)  # "ready": start-up is not counted in a decode's limit

    def _read(self, timeout_s: float) -> tuple[dict, bytes]:
        """The next answer, or _WorkerGone when none comes within ``timeout_s`` or the worker died."""
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)

            def read(n: int) -> bytes:
                buf = bytearray()
                while len(buf) < n:
                    left = deadline - time.monotonic()
                    if left <= 0 or not sel.select(left):
                        raise _WorkerGone("timeout")
                    chunk = os.read(fd, min(1 << 20, n - len(buf)))
                    if not chunk:
                        raise _WorkerGone("died")
                    buf += chunk
                return bytes(buf)

            return _read_message(read)

    def decode(
        self, data: bytes, name: str, settings: Settings, frame: int | None, timeout_s: float
    ) -> tuple[dict, bytes]:
        try:
            _send(self.proc.stdin, {"name": name, "frame": frame, "settings": _settings_dict(settings)}, bytes(data))
        except (BrokenPipeError, OSError) as exc:
            raise _WorkerGone("died") from exc
        return self._read(timeout_s)

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=10)
        except Exception:  # already gone
            pass


def _take() -> _Worker:
    with _idle_lock:
        while _idle:
            worker = _idle.pop()
            if worker.proc.poll() is None:
                return worker
    return _Worker()


def _give_back(worker: _Worker) -> None:
    with _idle_lock:
        if len(_idle) < WORKERS:
            _idle.append(worker)
            return
    worker.kill()


def read_scans_limited(
    data: bytes, name: str, settings: Settings, time_limit_s: float, frame: int | None = None
) -> list[Scan]:
    """:func:`triage.io.read_scans` in a worker process, stopped after ``time_limit_s`` seconds
    (``<= 0``: in this process, no limit). Raises InvalidScanError for a refused, overrunning or
    crashing decode."""
    if time_limit_s <= 0:
        from triage.io import read_scans

        return read_scans(data, name, settings, frame=frame)
    try:
        worker = _take()
    except (_WorkerGone, OSError) as exc:
        raise InvalidScanError("the decoder could not be started (the details are in the server log)") from exc
    try:
        header, body = worker.decode(data, name, settings, frame, time_limit_s)
    except _WorkerGone as exc:
        worker.kill()
        if str(exc) == "timeout":
            log.warning("decoding %s took over %g s; its worker was stopped", name, time_limit_s)
            raise InvalidScanError(
                f"decoding this file took longer than {time_limit_s:g} s and was stopped "
                "(an unusually complex or damaged file); the rest of the batch goes on"
            ) from None
        log.error("the decoder died on %s", name)
        raise InvalidScanError("the decoder stopped working on this file (it crashed or ran out of memory)") from None
    _give_back(worker)
    if header.get("kind") != "ok":
        raise InvalidScanError(str(header.get("text") or "cannot be decoded"))
    return _scans_from(header, body)
