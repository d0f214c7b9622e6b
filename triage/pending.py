"""Received uploads are kept on disk until they are analysed (issue 22, item 16).

A batch from the New scans page is written to ``<data_dir>/pending/<batch id>/`` before anything
is analysed: each file (``f00000``), each mask (``m00000``), then ``batch.json`` (names and
options) last, every one written to a temporary file, flushed to disk and renamed, so a batch
either has its ``batch.json`` and all its files or is an unfinished save. The process working on a
batch holds an exclusive ``flock`` on its ``lock`` file; the kernel drops it when the process dies,
even by SIGKILL. At the next start of the app :func:`claim_orphans` takes the batches nobody
holds (another server sharing the data folder keeps its own), and they are analysed again: files
that were already analysed before the crash are found in the worklist by their content id, so
every file ends up in the worklist exactly once. A finished batch is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from triage import atomic

log = logging.getLogger(__name__)

PENDING_DIR = "pending"
MANIFEST = "batch.json"
LOCK = "lock"
FORMAT = 1
# An unlocked folder without batch.json younger than this may be a batch another process has just
# made and not locked yet; older ones are saves whose process died, and are removed.
UNFINISHED_GRACE_S = 60.0


@dataclass(frozen=True)
class BatchOptions:
    """How the batch was to be analysed (the New scans page's choices)."""

    truth_label: str | None = None
    label_from_folder: bool = False


@dataclass
class PendingBatch:
    """One received batch on disk, locked by this process while it exists (close() unlocks)."""

    folder: Path
    names: list[str]
    mask_names: list[str]
    options: BatchOptions
    received_at: str
    _lock_fd: int | None = field(default=None, repr=False)

    @property
    def batch_id(self) -> str:
        return self.folder.name

    def files(self) -> list[tuple[str, bytes]]:
        """The received (name, bytes) pairs, in the order they came."""
        return [(n, (self.folder / f"f{i:05d}").read_bytes()) for i, n in enumerate(self.names)]

    def masks(self) -> list[tuple[str, bytes]]:
        """The received mask (name, bytes) pairs."""
        return [(n, (self.folder / f"m{i:05d}").read_bytes()) for i, n in enumerate(self.mask_names)]

    def finish(self) -> None:
        """The batch is analysed: remove it (the manifest first, so a crash halfway leaves an
        unfinished folder, which is cleaned up, never a batch analysed twice with missing files)."""
        (self.folder / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.close()

    def close(self) -> None:
        """Release the lock (the batch stays on disk for the next start when not finished)."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None


def pending_root(data_dir: Path) -> Path:
    """The folder holding the received, not yet analysed batches."""
    return Path(data_dir) / PENDING_DIR


def _lock(folder: Path, blocking: bool) -> int | None:
    """An fd holding an exclusive flock on the batch's lock file, or None when another holds it."""
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def save_batch(
    data_dir: Path,
    files: Sequence[tuple[str, bytes]],
    masks: Sequence[tuple[str, bytes]] = (),
    options: BatchOptions | None = None,
) -> PendingBatch:
    """Store a received batch durably and return it, locked by this process. Raises OSError (disk
    full, read-only folder): then nothing of the batch is left on disk."""
    options = options or BatchOptions()
    root = pending_root(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    received = datetime.now(UTC)
    folder = root / f"{received.strftime('%Y%m%dT%H%M%S%f')}-{secrets.token_hex(4)}"
    folder.mkdir()
    fd = None
    try:
        fd = _lock(folder, blocking=True)
        for i, (_, data) in enumerate(files):
            atomic.write_bytes(folder / f"f{i:05d}", bytes(data))
        for i, (_, data) in enumerate(masks):
            atomic.write_bytes(folder / f"m{i:05d}", bytes(data))
        manifest = {
            "format": FORMAT,
            "received_at": received.isoformat(timespec="microseconds"),
            "names": [str(n) for n, _ in files],
            "mask_names": [str(n) for n, _ in masks],
            "truth_label": options.truth_label,
            "label_from_folder": bool(options.label_from_folder),
        }
        atomic.write_bytes(folder / MANIFEST, json.dumps(manifest).encode("utf-8"))
        atomic.fsync_dir(folder)
        atomic.fsync_dir(root)
    except BaseException:
        if fd is not None:
            os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    log.info("pending: batch %s of %d files (%d masks) stored before analysis", folder.name, len(files), len(masks))
    return PendingBatch(
        folder, manifest["names"], manifest["mask_names"], options, manifest["received_at"], _lock_fd=fd
    )


def _load(folder: Path, fd: int) -> PendingBatch | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        names, masks = list(manifest["names"]), list(manifest["mask_names"])
        expected = [f"f{i:05d}" for i in range(len(names))] + [f"m{i:05d}" for i in range(len(masks))]
        missing = [f for f in expected if not (folder / f).is_file()]
        if missing:
            raise ValueError(f"{len(missing)} files missing")
        options = BatchOptions(manifest.get("truth_label"), bool(manifest.get("label_from_folder")))
        return PendingBatch(folder, names, masks, options, str(manifest.get("received_at") or ""), _lock_fd=fd)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.error("pending: batch %s is unreadable (%s); it is kept for an administrator", folder.name, exc)
        return None


def claim_orphans(data_dir: Path) -> list[PendingBatch]:
    """The received batches no live process is working on (their process died), oldest first,
    each now locked by this process. Unfinished saves (no ``batch.json``: the process died while
    receiving, before anything was analysed) are removed."""
    root = pending_root(data_dir)
    if not root.is_dir():
        return []
    claimed: list[PendingBatch] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            age = time.time() - folder.stat().st_mtime  # before the lock file below touches the folder
            fd = _lock(folder, blocking=False)
        except OSError as exc:  # a read-only folder: nothing can be claimed now
            log.warning("pending: cannot lock %s: %s", folder.name, exc)
            continue
        if fd is None:
            continue  # another process (or another session of this one) is working on it
        if not (folder / MANIFEST).is_file():
            if age < UNFINISHED_GRACE_S:
                os.close(fd)
                continue
            log.info("pending: removing %s, a batch whose process died while it was being received", folder.name)
            shutil.rmtree(folder, ignore_errors=True)
            os.close(fd)
            continue
        batch = _load(folder, fd)
        if batch is None:
            os.close(fd)
            continue
        claimed.append(batch)
    return claimed


def pending_count(data_dir: Path) -> int:
    """How many received batches are on disk (being analysed or waiting for the next start)."""
    root = pending_root(data_dir)
    return sum(1 for p in root.iterdir() if (p / MANIFEST).is_file()) if root.is_dir() else 0
