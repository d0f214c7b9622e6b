"""Data-folder hygiene (issue 19, item 3): disk use, checkpoint clean-up, cache size limit.

What grows in the data folder, and what happens to it:

* ``scans/`` and ``worklist.sqlite3*``: the readers' cases; never removed here (backups are).
* ``runs/<run>/checkpoint.pt`` and ``best.safetensors`` (about 74 MB per run, optimiser state
  included): only needed to resume or inspect a run. A finished run's version lives on in the
  weights folder and a cancelled run keeps nothing, so both lose them at once; a failed run keeps
  them ``Settings.failed_run_keep_days`` days (to resume or look at), then loses them too. Logs
  and curves stay.
* ``cache/``: decoded crops, rebuilt on demand; trimmed oldest first to ``Settings.cache_limit_bytes``.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from triage.config import Settings

log = logging.getLogger(__name__)

CHECKPOINT_FILES = ("checkpoint.pt", "best.safetensors")


@dataclass(frozen=True)
class FolderUsage:
    """Disk use of one part of the data folder."""

    part: str
    path: Path
    bytes: int
    files: int


def _size(paths: list[Path]) -> tuple[int, int]:
    total = count = 0
    for root in paths:
        items = [root] if root.is_file() else (root.rglob("*") if root.is_dir() else [])
        for p in items:
            try:
                if p.is_file() and not p.is_symlink():
                    total += p.stat().st_size
                    count += 1
            except OSError:  # a file removed while we walk
                continue
    return total, count


def data_folder_usage(settings: Settings) -> list[FolderUsage]:
    """Bytes and files per part of the data folder, largest first, with everything else as 'other'."""
    d = Path(settings.data_dir)
    parts = {
        "worklist database": sorted(d.glob("worklist.sqlite3*")),
        "stored scans and masks": [settings.scans_dir],
        "training runs (logs, checkpoints)": [settings.runs_dir],
        "decoded-crop cache": [settings.cache_dir],
        "backups kept inside the data folder": [d / "backups"],
    }
    out, known = [], set()
    for part, paths in parts.items():
        size, files = _size(paths)
        known.update(p.resolve() for p in paths)
        out.append(FolderUsage(part, d, size, files))
    others = [p for p in (d.iterdir() if d.is_dir() else []) if p.resolve() not in known]
    size, files = _size(others)
    out.append(FolderUsage("other (jobs, logs, settings)", d, size, files))
    return sorted(out, key=lambda u: -u.bytes)


# The Status page reruns on every click; walking every stored scan and run file each time made
# it as slow as the data folder is large. One walk per folder serves this long.
USAGE_MAX_AGE_S = 60.0
_USAGE: dict[Path, tuple[float, list[FolderUsage]]] = {}
_USAGE_LOCK = threading.Lock()


def recent_data_folder_usage(settings: Settings, max_age_s: float = USAGE_MAX_AGE_S) -> tuple[list[FolderUsage], float]:
    """:func:`data_folder_usage` measured at most ``max_age_s`` seconds ago, and its age in seconds.

    The walk runs under a lock, so page runs arriving together wait for one walk instead of each
    doing their own."""
    key = Path(settings.data_dir).resolve()
    with _USAGE_LOCK:
        hit = _USAGE.get(key)
        now = time.monotonic()
        if hit is None or now - hit[0] > max_age_s:
            hit = (now, data_folder_usage(settings))
            _USAGE[key] = hit
        return hit[1], now - hit[0]


def free_bytes(settings: Settings) -> int | None:
    """Free space on the data folder's disk (None when it cannot be read)."""
    try:
        d = Path(settings.data_dir)
        return shutil.disk_usage(d if d.exists() else d.parent).free
    except OSError:
        return None


def drop_checkpoints(run_dir: str | Path) -> int:
    """Remove a run's checkpoint files; returns the bytes freed."""
    freed = 0
    for name in CHECKPOINT_FILES:
        p = Path(run_dir) / name
        try:
            size = p.stat().st_size
            p.unlink()
            freed += size
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("could not remove %s: %s", p, exc)
    return freed


def trim_cache(cache_dir: str | Path, limit_bytes: int) -> int:
    """Delete the oldest cache files until the folder holds at most ``limit_bytes``; bytes freed."""
    files = []
    for p in Path(cache_dir).glob("*") if Path(cache_dir).is_dir() else []:
        try:
            if p.is_file():
                st = p.stat()
                files.append((st.st_mtime, st.st_size, p))
        except OSError:
            continue
    total = sum(size for _, size, _ in files)
    freed = 0
    for _, size, p in sorted(files):
        if total - freed <= limit_bytes:
            break
        try:
            p.unlink()
            freed += size
        except OSError as exc:
            log.warning("could not remove cache file %s: %s", p, exc)
    if freed:
        log.info("cache %s trimmed by %.0f MB to the %.0f MB limit", cache_dir, freed / 1e6, limit_bytes / 1e6)
    return freed


def human_bytes(n: int | None) -> str:
    """1536 -> '1.5 kB' (decimal units, as disks are sold)."""
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"
