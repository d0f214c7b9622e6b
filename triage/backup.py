"""Backup and restore of a data folder while the app runs (issue 19, item 4).

A backup is a folder ``DEST/backup-<UTC time>/`` holding ``worklist.sqlite3`` (SQLite's online
backup API: a consistent snapshot even while readers and writers are busy), ``scans/`` (the stored
uploads and masks, copied only when not already in an earlier backup in ``DEST``, hard-linked when
they are: the files are content-addressed and never change) and ``manifest.json`` (time, counts,
``PRAGMA integrity_check``). The database is copied first: every case in it names a file that was
written before the case was added (``intake.ingest``), so the copy never refers to a missing upload.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
from contextlib import closing
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from triage import atomic
from triage.config import Settings
from triage.errors import TriageError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DB_NAME = "worklist.sqlite3"
LAST_BACKUP = "last_backup.json"


class BackupError(TriageError):
    """A backup or restore could not be made (destination, integrity, missing files)."""


@dataclass(frozen=True)
class BackupSummary:
    """What one backup (or restore) holds."""

    folder: str
    created: str
    cases: int
    files: int
    files_copied: int
    bytes_copied: int
    integrity: str


def _integrity(db: Path) -> str:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def _count_cases(db: Path) -> int:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        try:
            return int(conn.execute("SELECT COUNT(*) FROM cases").fetchone()[0])
        except sqlite3.OperationalError:  # a database the app never wrote a case into
            return 0


def _snapshot(src: Path, dst: Path) -> None:
    """Online backup of ``src`` into a new file ``dst`` (readers and writers of ``src`` go on)."""
    with closing(sqlite3.connect(src, timeout=30)) as source, closing(sqlite3.connect(dst)) as target:
        source.backup(target, pages=1024, sleep=0.01)  # in steps, so writers are not locked out long


def _copy_files(src_dir: Path, dst_dir: Path, earlier: list[Path]) -> tuple[int, int, int]:
    """Copy every file under ``src_dir`` that ``dst_dir`` lacks; a file an earlier backup holds is
    hard-linked from it (uploads are content-addressed, so the same name means the same bytes)."""
    files = copied = size = 0
    if not src_dir.is_dir():
        return 0, 0, 0
    for path in sorted(p for p in src_dir.rglob("*") if p.is_file() and not p.name.startswith(".tmp-")):
        rel = path.relative_to(src_dir)
        target = dst_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        files += 1
        if target.is_file() and target.stat().st_size == path.stat().st_size:
            continue
        old = next((e / rel for e in earlier if (e / rel).is_file()), None)
        if old is not None and old.stat().st_size == path.stat().st_size:
            try:
                os.link(old, target)
                continue
            except OSError:  # another file system: copy instead
                pass
        shutil.copy2(path, target)
        copied += 1
        size += path.stat().st_size
    return files, copied, size


def backup(settings: Settings, dest: Path) -> BackupSummary:
    """A consistent copy of the worklist and the stored uploads into a new folder under ``dest``."""
    dest = Path(dest).expanduser().resolve()
    db = settings.db_path
    if not db.is_file():
        raise BackupError(f"there is no worklist to back up at {db}")
    if dest == settings.data_dir.resolve() or settings.data_dir.resolve() in dest.parents:
        raise BackupError("the backup destination must be outside the data folder")
    created = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    dest.mkdir(parents=True, exist_ok=True)
    earlier = sorted((p / "scans" for p in dest.glob("backup-*") if (p / MANIFEST).is_file()), reverse=True)
    tmp = dest / f".backup-{created}.partial"
    tmp.mkdir()
    try:
        _snapshot(db, tmp / DB_NAME)
        integrity = _integrity(tmp / DB_NAME)
        if integrity != "ok":
            raise BackupError(f"the database copy failed its integrity check: {integrity}")
        files, copied, size = _copy_files(settings.scans_dir, tmp / "scans", earlier)
        summary = BackupSummary(
            folder=str(dest / f"backup-{created}"),
            created=created,
            cases=_count_cases(tmp / DB_NAME),
            files=files,
            files_copied=copied,
            bytes_copied=size,
            integrity=integrity,
        )
        (tmp / MANIFEST).write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")
        atomic.replace_dir(tmp, Path(summary.folder))  # a backup folder with a manifest is always complete
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic.write_json(settings.data_dir / LAST_BACKUP, asdict(summary))
    log.info("backup of %d cases and %d files to %s", summary.cases, files, summary.folder)
    return summary


def last_backup(settings: Settings) -> BackupSummary | None:
    """The most recent backup made from this data folder, or None."""
    try:
        return BackupSummary(**json.loads((settings.data_dir / LAST_BACKUP).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def restore(settings: Settings, folder: Path) -> BackupSummary:
    """Bring a backup back: the worklist is replaced through SQLite's backup API (the current one
    is first kept as ``worklist.sqlite3.before-restore-<time>``) and missing uploads are copied."""
    folder = Path(folder).expanduser()
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackupError(f"{folder} is not a complete backup (no readable {MANIFEST}): {exc}") from exc
    source_db = folder / DB_NAME
    integrity = _integrity(source_db) if source_db.is_file() else "missing"
    if integrity != "ok":
        raise BackupError(f"the backup's database is not usable ({integrity}); nothing was changed")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = settings.db_path
    if db.is_file():
        kept = db.with_name(f"{DB_NAME}.before-restore-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}")
        _snapshot(db, kept)
        log.info("the current worklist is kept as %s", kept)
    files, copied, size = _copy_files(folder / "scans", settings.scans_dir, [])
    _snapshot(source_db, db)
    log.info("restored %s (%s cases)", folder, manifest.get("cases"))
    return BackupSummary(
        folder=str(folder),
        created=str(manifest.get("created", "")),
        cases=_count_cases(db),
        files=files,
        files_copied=copied,
        bytes_copied=size,
        integrity=_integrity(db),
    )
