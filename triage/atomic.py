"""Atomic file writes: the one way a file is written so that a crash leaves the old file or the new
one, never half of either.

The recipe: write a temporary file in the target's own folder (a rename across file systems is
not atomic), flush and fsync it, ``os.replace`` it over the target, then fsync the folder so the
rename itself survives a power cut. A failed write removes its temporary file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMP_PREFIX = ".tmp-"


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows, which cannot open a folder; its renames are journalled
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` for writers that want a file name (``np.savez``,
    ``torch.save``, ``pq.write_table``, an exporter); when the block ends without an exception the
    file is fsynced and renamed over ``path``, else it is removed.

    ``suffix`` keeps the extension some writers insist on (``np.savez`` appends ``.npz`` otherwise).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # ".tmp-": the one mark of an unfinished write (backups skip such files; crash tests count them).
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:  # disk full, read-only folder, a failed writer: no temporary file is left
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any, **dumps: Any) -> None:
    """Write ``obj`` as JSON (``json.dumps`` options in ``dumps``, a final newline) atomically."""
    write_text(path, json.dumps(obj, **dumps) + "\n")


def replace_dir(tmp: Path, folder: Path) -> None:
    """Rename a folder written under a temporary name into place and make the rename durable."""
    os.replace(tmp, folder)
    fsync_dir(Path(folder).parent)
