"""A wall-clock limit on decoding one upload (issue 22, second round, item 6 continued).

A decoder stuck in C code (a pathological TIFF, a JPEG 2000 frame, a DICOM with thousands of
compressed fragments) cannot be interrupted inside a thread. Uploads are therefore decoded in
worker processes (``python -c`` children of the server that import only the decoders; not
``multiprocessing``, whose workers import the parent's main module, which under ``streamlit run``
is the app itself) and a decode that takes longer than the limit is stopped by killing its
worker: the upload gets a clear reason and the rest of the batch goes on. A worker that dies (a
decoder crash, the kernel's OOM killer) is a refusal of that file too, never of the server.

The protocol on the worker's stdin/stdout: 8-byte big-endian length, then a pickle, both ways.
"""

from __future__ import annotations

import logging
import os
import pickle
import selectors
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

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


def _send(fh, obj: object) -> None:
    blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    fh.write(struct.pack(">Q", len(blob)) + blob)
    fh.flush()


def _read_exact(fh, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = fh.read(n - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return bytes(out)


def serve() -> None:
    """The worker's loop: read (data, name, settings, frame), answer ("ok", scans) | ("invalid", text)."""
    from triage.io import read_scans  # the decoders, imported once

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a decoder that prints must not break the protocol
    _send(stdout, ("ready", None))
    while True:
        try:
            (size,) = struct.unpack(">Q", _read_exact(stdin, 8))
            data, name, settings, frame = pickle.loads(_read_exact(stdin, size))
        except EOFError:
            return
        try:
            answer = ("ok", read_scans(data, name, settings, frame=frame))
        except InvalidScanError as exc:
            answer = ("invalid", str(exc))
        except Exception as exc:  # an unexpected decoder error: a refusal, with its type only
            answer = ("invalid", f"cannot be decoded ({type(exc).__name__})")
        _send(stdout, answer)


class _Worker:
    """One decoding child process."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(_REPO), os.environ.get("PYTHONPATH")) if p)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=str(_REPO)
        )
        self._read(START_TIMEOUT_S)  # "ready": start-up is not counted in a decode's limit

    def _read(self, timeout_s: float) -> tuple:
        """The next answer, or _WorkerGone when none comes within ``timeout_s`` or the worker died."""
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        buf = bytearray()
        need = 8
        size = None
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while len(buf) < need:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise _WorkerGone("timeout")
                chunk = os.read(fd, min(1 << 20, need - len(buf)))
                if not chunk:
                    raise _WorkerGone("died")
                buf += chunk
                if size is None and len(buf) >= 8:
                    (size,) = struct.unpack(">Q", bytes(buf[:8]))
                    need = 8 + size
        return pickle.loads(bytes(buf[8:]))

    def decode(self, data: bytes, name: str, settings: Settings, frame: int | None, timeout_s: float) -> tuple:
        try:
            _send(self.proc.stdin, (data, name, settings, frame))
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
        kind, value = worker.decode(data, name, settings, frame, time_limit_s)
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
    if kind == "invalid":
        raise InvalidScanError(value)
    return value
