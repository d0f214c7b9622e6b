"""A wall-clock limit on decoding one upload (issue 22, item 3 of the second round).

A decoder stuck in C code (a pathological TIFF, a JPEG 2000 frame, a DICOM with thousands of
compressed fragments) cannot be interrupted inside a thread. Uploads are therefore decoded in a
small pool of worker processes (``forkserver``: forked from a clean process that has the decoders
imported, never from the multi-threaded server) and a decode that takes longer than the limit is
stopped by killing its worker: the upload gets a clear reason, the pool is rebuilt, and the rest
of the batch goes on. A worker that dies (a decoder crash, the kernel's OOM killer) is a refusal
of that file too, never of the server.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing as mp
import threading
from concurrent.futures.process import BrokenProcessPool

from triage.config import Settings
from triage.errors import InvalidScanError
from triage.records import Scan

log = logging.getLogger(__name__)

WORKERS = 2  # two cores: two sessions can decode at once
_pool: cf.ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _decode(data: bytes, name: str, settings: Settings, frame: int | None) -> list[Scan]:
    from triage.io import read_scans

    return read_scans(data, name, settings, frame=frame)


def _ready() -> bool:
    """Warm a worker: one small decode loads what the decoders import lazily."""
    import io

    import numpy as np
    from PIL import Image

    from triage.io import read_scans

    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64), 100, np.uint8)).save(buf, "PNG")
    try:
        read_scans(buf.getvalue(), "warm-up.png")
    except Exception:  # a blank image may be refused; the imports are what matters
        pass
    return True


def _get_pool() -> cf.ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(["triage.io"])
            pool = cf.ProcessPoolExecutor(max_workers=WORKERS, mp_context=ctx)
            # Start the workers now, so the limit counts the decode, not the start-up (seconds of
            # imports on a busy machine).
            for f in [pool.submit(_ready) for _ in range(WORKERS)]:
                f.result()
            _pool = pool
        return _pool


def _discard(pool: cf.ProcessPoolExecutor) -> None:
    """Kill the pool's workers (a decode that overran) and forget the pool; the next call makes a new one."""
    global _pool
    with _pool_lock:
        if _pool is pool:
            _pool = None
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            proc.kill()
        except Exception:  # already gone
            pass
    pool.shutdown(wait=False, cancel_futures=True)


def read_scans_limited(
    data: bytes, name: str, settings: Settings, time_limit_s: float, frame: int | None = None
) -> list[Scan]:
    """:func:`triage.io.read_scans` in a worker process, stopped after ``time_limit_s`` seconds
    (``<= 0``: in this process, no limit). Raises InvalidScanError for a refused, overrunning or
    crashing decode."""
    if time_limit_s <= 0:
        return _decode(data, name, settings, frame)
    for attempt in range(2):
        pool = _get_pool()
        try:
            future = pool.submit(_decode, data, name, settings, frame)
        except (BrokenProcessPool, RuntimeError):  # a pool another overrun just discarded
            _discard(pool)
            continue
        try:
            return future.result(timeout=time_limit_s)
        except cf.TimeoutError:
            log.warning("decoding %s took over %g s; its worker was stopped", name, time_limit_s)
            _discard(pool)
            raise InvalidScanError(
                f"decoding this file took longer than {time_limit_s:g} s and was stopped "
                "(an unusually complex or damaged file); the rest of the batch goes on"
            ) from None
        except BrokenProcessPool:
            _discard(pool)
            if attempt == 0:  # perhaps another upload's overrun killed this worker: once more
                continue
            raise InvalidScanError(
                "the decoder stopped working on this file (it crashed or ran out of memory)"
            ) from None
    raise InvalidScanError("the decoder could not be started")
