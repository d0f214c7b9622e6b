"""Backup while the worklist is being written, and restore (issue 19, item 4)."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import closing

import pytest

from triage.backup import DB_NAME, BackupError, backup, last_backup, restore
from triage.config import get_settings
from triage.worklist import Worklist


def _case(i: int, stored: str) -> dict:
    return {
        "scan_id": f"{i:064x}",
        "name": f"slice{i}.png",
        "stored_path": stored,
        "label": "glioma",
        "risk": 0.5,
        "flags": [],
        "p_no_tumor": 0.1,
        "p_glioma": 0.7,
        "p_meningioma": 0.1,
        "p_pituitary": 0.1,
    }


@pytest.fixture
def settings(tmp_path):
    s = get_settings(data_dir=tmp_path / "data")
    s.scans_dir.mkdir(parents=True)
    return s


def _add(settings, wl: Worklist, i: int) -> None:
    stored = settings.scans_dir / f"{i:064x}.png"
    stored.write_bytes(b"png %d" % i)  # the file first, then the case, as intake.ingest does
    wl.add_case(_case(i, str(stored)))


def test_a_backup_during_writes_is_consistent_and_holds_every_committed_case(settings, tmp_path) -> None:
    wl = Worklist(settings.db_path)
    for i in range(50):
        _add(settings, wl, i)
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        i = 1000
        while not stop.is_set():
            _add(settings, wl, i)
            written.append(i)
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        summary = backup(settings, tmp_path / "backups")
    finally:
        stop.set()
        t.join()
    assert summary.integrity == "ok" and summary.cases >= 50
    copy = tmp_path / "backups" / summary.folder.rsplit("/", 1)[-1] / DB_NAME
    with closing(sqlite3.connect(copy)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ids = {r[0] for r in conn.execute("SELECT scan_id FROM cases")}
        stored = [r[0] for r in conn.execute("SELECT stored_path FROM cases")]
    assert {f"{i:064x}" for i in range(50)} <= ids  # everything committed before the backup began
    names = {p.name for p in (copy.parent / "scans").iterdir()}
    assert all(p.rsplit("/", 1)[-1] in names for p in stored)  # no case without its upload
    assert last_backup(settings).folder == summary.folder
    # A second backup links the unchanged uploads instead of copying them again.
    again = backup(settings, tmp_path / "backups")
    assert again.files >= summary.files and again.files_copied == again.files - summary.files


def test_restore_brings_the_worklist_back_and_keeps_the_current_one(settings, tmp_path) -> None:
    wl = Worklist(settings.db_path)
    for i in range(5):
        _add(settings, wl, i)
    wl.review(f"{0:064x}", "Dr A", label="meningioma", sign_off=True)
    summary = backup(settings, tmp_path / "b")
    for p in settings.scans_dir.iterdir():
        p.unlink()
    _add(settings, wl, 99)
    with closing(sqlite3.connect(settings.db_path)) as conn:
        conn.execute("DELETE FROM cases WHERE scan_id != ?", (f"{99:064x}",))
        conn.commit()
    restored = restore(settings, summary.folder)
    assert restored.integrity == "ok" and restored.cases == 5
    case = Worklist(settings.db_path).get(f"{0:064x}")
    assert case.review_status == "signed_off" and case.reviewed_label == "meningioma"
    assert len(list(settings.scans_dir.glob("*.png"))) == 6  # the 5 restored uploads and the newer one
    kept = list(settings.data_dir.glob(f"{DB_NAME}.before-restore-*"))
    assert len(kept) == 1


def test_backup_and_restore_refuse_what_they_cannot_do(settings, tmp_path) -> None:
    with pytest.raises(BackupError, match="no worklist"):
        backup(settings, tmp_path / "b")
    Worklist(settings.db_path).list_cases()
    with pytest.raises(BackupError, match="outside the data folder"):
        backup(settings, settings.data_dir / "backups")
    (tmp_path / "bad").mkdir()
    with pytest.raises(BackupError, match="not a complete backup"):
        restore(settings, tmp_path / "bad")
