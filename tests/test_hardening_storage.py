"""Issue 22, item 15: storage faults end in a message and lose nothing.

(a) a read-only data folder opens read-only (worklist and case review readable, a banner, uploads
and reviews refused with the reason); (b) a damaged database (garbage bytes, a truncated file):
every page names the file and says to restore a backup, uploads are refused; (c) a database
write-locked by another process for 30 s: the upload waits ("waiting for the database") and is
stored; (d) a full disk (a real 16 MB tmpfs when the tests run as root, else ENOSPC raised by the
writes): a clear reason, no temporary file or orphan left, reads keep working.

The read-only folder is a read-only bind mount as root (root ignores file modes), else chmod.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests import hostile_corpus as hc
from tests.model_fixtures import make_tiny_weights
from triage.config import get_settings
from triage.service import TriageService
from triage.ui import uploads
from triage.worklist import (
    CorruptDatabaseError,
    DiskFullError,
    ReadOnlyStorageError,
    Worklist,
)

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
TIMEOUT = 120
IS_ROOT = os.geteuid() == 0


def _png(seed: int, size: int = 128) -> bytes:
    return hc.encode(hc.Image.fromarray(hc.fake_brain(size, seed=seed)), "PNG")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return make_tiny_weights(tmp_path_factory.mktemp("storage_w") / "w")


def _service(weights: Path, data: Path) -> TriageService:
    return TriageService(get_settings(data_dir=data, weights_dir=weights))


def _fill(service: TriageService, n: int = 3, seed: int = 0) -> list[str]:
    """n accepted cases in the service's worklist; their scan ids."""
    wl = Worklist(service.settings.db_path)
    rows = uploads.process_uploads([(f"s{seed + i}.png", _png(seed + i)) for i in range(n)], service, wl)
    assert [r["status"] for r in rows] == ["accepted"] * n, rows
    return [r["scan_id"] for r in rows]


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` made read-only for this process: a read-only bind mount as root, else chmod."""
    if IS_ROOT:
        subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
            yield
        finally:
            subprocess.run(["umount", str(folder)], check=True)
        return
    modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
    for p in modes:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        yield
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


@pytest.fixture
def app_env(weights, tmp_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv("TRIAGE_WEIGHTS_DIR", str(weights))
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(data))
    monkeypatch.setenv("TRIAGE_HIDE_FILE_NAMES", "0")
    st.cache_resource.clear()
    yield data
    st.cache_resource.clear()


def _texts(at: AppTest) -> str:
    parts = []
    for kind in ("title", "markdown", "caption", "info", "success", "warning", "error"):
        parts.extend(str(e.value) for e in getattr(at, kind))
    return "\n".join(parts).replace("\\", "")


def _pages(case_id: str | None = None) -> dict[str, AppTest]:
    """Every reader page, run once through the router (Case review on ``case_id``)."""
    out = {}
    for page in ("views/worklist.py", "views/new_scans.py", "views/case_review.py", "views/model.py"):
        at = AppTest.from_file(APP, default_timeout=TIMEOUT)
        if case_id is not None:
            at.session_state["selected_case"] = case_id
        at.run()
        if page != "views/worklist.py":
            at.switch_page(page).run()
        out[page] = at
    return out


# ----- (a) read-only data folder ----------------------------------------------------------------


@pytest.mark.slow
def test_a_read_only_data_folder_opens_read_only(weights, app_env) -> None:
    service = _service(weights, app_env)
    ids = _fill(service)
    before = _files(app_env)
    with read_only(app_env):
        st.cache_resource.clear()
        wl = Worklist(app_env / "worklist.sqlite3")
        assert len(wl.list_cases()) == 3 and wl.read_only  # reading works
        with pytest.raises(ReadOnlyStorageError, match="read-only"):
            wl.review(ids[0], "dr.a", label="glioma")
        rows = uploads.receive_and_process([("new.png", _png(50))], _service(weights, app_env), wl)
        assert rows[0]["status"] == "refused" and "read-only" in rows[0]["reason"]
        for page, at in _pages(ids[0]).items():
            assert not at.exception, (page, at.exception)
            assert "Read-only" in _texts(at), page
        new_scans = _pages()["views/new_scans.py"]
        assert "Uploads are refused" in _texts(new_scans)
        assert next(b for b in new_scans.button if b.label.startswith("Analyse")).disabled
        review = _pages(ids[0])["views/case_review.py"]
        assert "file **s0.png**" in _texts(review) and "Calibrated probabilities" in _texts(review)
    assert _files(app_env) == before  # nothing written, nothing lost
    assert Worklist(app_env / "worklist.sqlite3").review(ids[0], "dr.a", label="glioma").reviewed_label == "glioma"


# ----- (b) damaged database ---------------------------------------------------------------------


def _truncate(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = db.stat().st_size
    with db.open("r+b") as fh:
        fh.truncate(size // 2)


def _garbage(db: Path) -> None:
    db.write_bytes(os.urandom(db.stat().st_size))
    for side in ("-wal", "-shm"):
        Path(str(db) + side).unlink(missing_ok=True)


@pytest.mark.parametrize("damage", [_garbage, _truncate], ids=["garbage", "truncated"])
def test_b_a_damaged_database_is_named_and_uploads_are_refused(weights, tmp_path, damage) -> None:
    data = tmp_path / "data"
    service = _service(weights, data)
    _fill(service, n=12)
    damage(service.settings.db_path)
    before = _files(data)
    wl = Worklist(service.settings.db_path)
    with pytest.raises(CorruptDatabaseError) as err:
        wl.list_cases()
    assert str(service.settings.db_path) in str(err.value) and "restore" in str(err.value)
    assert isinstance(wl.storage_problem(), CorruptDatabaseError)
    rows = uploads.receive_and_process([("new.png", _png(60))], service, wl)
    assert rows[0]["status"] == "refused" and "damaged" in rows[0]["reason"]
    assert _files(data) == before  # nothing stored, no pending batch


@pytest.mark.slow
def test_b_every_page_names_the_damaged_file(weights, app_env) -> None:
    service = _service(weights, app_env)
    ids = _fill(service)
    _garbage(service.settings.db_path)
    st.cache_resource.clear()
    for page, at in _pages(ids[0]).items():
        assert not at.exception, (page, at.exception)
        text = _texts(at)
        assert str(service.settings.db_path) in text and "restore the last backup" in text, (page, text)
    new_scans = _pages()["views/new_scans.py"]
    assert next(b for b in new_scans.button if b.label.startswith("Analyse")).disabled


# ----- (c) a database locked by another process --------------------------------------------------

LOCKER = r"""
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


@pytest.mark.slow
def test_c_a_write_locked_database_is_waited_for(weights, tmp_path) -> None:
    service = _service(weights, tmp_path / "data")
    _fill(service, n=1)
    wl = Worklist(service.settings.db_path)
    hold_s = 30.0
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(service.settings.db_path), str(hold_s)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        started = time.monotonic()
        notices: list[str] = []
        files = [(f"late{i}.png", _png(70 + i)) for i in range(2)]
        rows = uploads.receive_and_process(files, service, wl, notice=notices.append)
        waited = time.monotonic() - started
    finally:
        proc.wait(timeout=hold_s + 30)
    assert [r["status"] for r in rows] == ["accepted", "accepted"], rows  # before: "database is locked" after 10 s
    assert waited >= hold_s - 2
    assert notices and all(n.startswith("Waiting for the database") for n in notices)
    assert wl.count() == 3


def test_c_a_lock_held_too_long_is_a_clear_error_and_nothing_half_written(tmp_path) -> None:
    wl = Worklist(tmp_path / "wl.sqlite3", write_wait_s=3.0)
    wl.count()
    holder = sqlite3.connect(tmp_path / "wl.sqlite3", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    waits: list[float] = []
    from triage.worklist import DatabaseBusyError, waiting_for_database

    with waiting_for_database(waits.append), pytest.raises(DatabaseBusyError, match="stayed locked"):
        wl.log_rejection("x.png", "test")
    holder.execute("ROLLBACK")
    holder.close()
    assert waits and wl.rejections() == []


# ----- (d) disk full ----------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(folder: Path, size: str = "16m"):
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def _fill_disk(folder: Path) -> Path:
    filler = folder / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


@pytest.mark.skipif(not IS_ROOT, reason="mounting a small tmpfs needs root")
def test_d_a_full_disk_refuses_uploads_leaves_nothing_and_reads_work(weights, tmp_path, monkeypatch) -> None:
    with tmpfs(tmp_path / "disk") as disk:
        data = disk / "data"
        service = _service(weights, data)
        ids = _fill(service, n=2)
        wl = Worklist(service.settings.db_path)
        filler = _fill_disk(disk)
        before = _files(data)
        # The free-space check first: under twice the batch's size free, the batch is refused at once.
        rows = uploads.receive_and_process([("a.png", _png(80))], service, wl)
        assert rows[0]["status"] == "refused" and "is full" in rows[0]["reason"]
        # A write that meets the full disk anyway (the check passed: free space is used up meanwhile).
        monkeypatch.setattr(uploads, "free_bytes", lambda settings: 10**12)
        rows = uploads.receive_and_process([("a.png", _png(80)), ("b.png", _png(81))], service, wl)
        assert [r["status"] for r in rows] == ["refused", "refused"], rows
        assert all("disk is full" in r["reason"] for r in rows)
        # No zero-byte temporary file, no half-saved batch (SQLite's own -wal / -shm files, which a
        # failed open may leave empty, are not ours: SQLite reuses them).
        journal = ("-wal", "-shm")
        assert {p for p in _files(data) if not p.name.endswith(journal)} == before
        assert not list(data.rglob(".tmp-*"))
        assert [c.scan_id for c in wl.list_cases()] == [c.scan_id for c in wl.list_cases()]  # reads work
        assert {c.scan_id for c in wl.list_cases()} == set(ids)
        filler.unlink()
        rows = uploads.receive_and_process([("a.png", _png(80))], service, wl)
        assert rows[0]["status"] == "accepted"
        assert not (data / "pending").exists() or not any((data / "pending").iterdir())


def test_d_a_case_that_cannot_be_recorded_leaves_no_orphan_file(weights, tmp_path, monkeypatch) -> None:
    service = _service(weights, tmp_path / "data")
    _fill(service, n=1)
    wl = Worklist(service.settings.db_path)
    scans = service.settings.scans_dir
    before = _files(scans)

    def full(case, actor="system"):
        raise DiskFullError("The disk holding the data folder is full")

    monkeypatch.setattr(wl, "add_case", full)
    rows = uploads.process_uploads([("c.png", _png(90))], service, wl)
    assert rows[0]["status"] == "error" and "disk holding the data folder is full" in rows[0]["reason"]
    assert _files(scans) == before  # the stored slice and its mask were removed again


def test_d_sqlite_disk_full_is_a_disk_full_error(tmp_path) -> None:
    wl = Worklist(tmp_path / "wl.sqlite3")
    wl.count()
    err = sqlite3.OperationalError("database or disk is full")
    with pytest.raises(DiskFullError, match="is full"):
        with wl._write():
            raise err
