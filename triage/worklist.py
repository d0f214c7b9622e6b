"""The worklist: a persistent, risk-ordered queue of analysed cases in SQLite.

Safe for several threads (Streamlit sessions) and processes: every operation opens its own
connection, the database runs in WAL mode with a busy timeout, and every write is a single
``BEGIN IMMEDIATE`` transaction, so a crash (even SIGKILL) never leaves a half-written case.
The ``audit`` table is append-only (enforced by triggers) and records who changed what.
Rejected uploads go to ``rejections``; they never become cases.

Storage faults (issue 22, item 15) become :class:`StorageError` subclasses with a message a reader
can act on: a read-only data folder opens the worklist read-only (reads work, writes are refused),
a damaged database file is named with what to do (restore a backup), a full disk is said so, and
a database write-locked by another program is waited for (retried with back-off for up to
``write_wait_s``, telling a registered :func:`waiting_for_database` callback) instead of failing
after the busy timeout.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import fields
from pathlib import Path

from triage.clock import utc_now
from triage.config import get_settings
from triage.errors import CaseNotFoundError, ReviewConflictError, SignedOffError, WorklistError
from triage.export import csv_row
from triage.privacy import case_ref, shown_name
from triage.records import (
    INPUT_FIELDS,
    PROB_COLUMNS,
    REVIEW_FIELDS,
    REVIEW_STATUSES,
    Case,
    ReviewState,
    check_label,
    dumps,
    finite,
)

log = logging.getLogger(__name__)

CASE_COLUMNS: tuple[str, ...] = (
    "scan_id",
    "name",
    "stored_path",
    "received_at",
    "label",
    *PROB_COLUMNS,
    "risk",
    "flags",
    "ood",
    "tumor_area_px",
    "tumor_area_mm2",
    "mask_path",
    "thumbnail",
    "classifier_version",
    "segmenter_version",
    "truth_label",
    "truth_mask_path",
    "review_status",
    "reviewed_label",
    "mask_rejected",
    "note",
    "reviewer",
    "reviewed_at",
    "extra",
    "revision",
    "study_key",
    "series_key",
    "instance_key",
    "slice_order",
)
CSV_COLUMNS: tuple[str, ...] = tuple(c for c in CASE_COLUMNS if c != "thumbnail")

BUSY_TIMEOUT_S = 10.0
# A write waits this long in all for a lock held by another program (a backup tool, a second
# server, sqlite3 at a prompt) before it gives up; each try waits WRITE_TRY_S in SQLite, then the
# waiting callback is told and the next try starts (issue 22, item 15: a 30 s lock lost an upload).
WRITE_WAIT_S = 180.0
WRITE_TRY_S = 2.0
SQLITE_MAGIC = b"SQLite format 3\x00"
MAX_NOTE_CHARS = 10_000

_SCHEMA_V1: tuple[str, ...] = (
    f"""CREATE TABLE IF NOT EXISTS cases (
        scan_id TEXT PRIMARY KEY NOT NULL CHECK (length(scan_id) > 0),
        name TEXT NOT NULL DEFAULT '',
        stored_path TEXT NOT NULL DEFAULT '',
        received_at TEXT NOT NULL,
        label TEXT NOT NULL,
        {", ".join(f"{c} REAL NOT NULL" for c in PROB_COLUMNS)},
        risk REAL NOT NULL,
        flags TEXT NOT NULL DEFAULT '[]',
        ood INTEGER NOT NULL DEFAULT 0 CHECK (ood IN (0, 1)),
        tumor_area_px INTEGER NOT NULL DEFAULT 0,
        tumor_area_mm2 REAL,
        mask_path TEXT,
        thumbnail BLOB,
        classifier_version TEXT NOT NULL DEFAULT '',
        segmenter_version TEXT NOT NULL DEFAULT '',
        truth_label TEXT,
        truth_mask_path TEXT,
        review_status TEXT NOT NULL DEFAULT 'unreviewed'
            CHECK (review_status IN ({", ".join(f"'{s}'" for s in REVIEW_STATUSES)})),
        reviewed_label TEXT,
        mask_rejected INTEGER NOT NULL DEFAULT 0 CHECK (mask_rejected IN (0, 1)),
        note TEXT NOT NULL DEFAULT '',
        reviewer TEXT,
        reviewed_at TEXT,
        extra TEXT NOT NULL DEFAULT '{{}}'
    )""",
    "CREATE INDEX IF NOT EXISTS idx_cases_risk ON cases (risk DESC, received_at ASC)",
    """CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        scan_id TEXT NOT NULL REFERENCES cases (scan_id),
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        field TEXT,
        old_value TEXT,
        new_value TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS idx_audit_scan ON audit (scan_id, id)",
    """CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
       BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
       BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END""",
    """CREATE TABLE IF NOT EXISTS rejections (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        received_at TEXT NOT NULL,
        name TEXT NOT NULL,
        reason TEXT NOT NULL,
        sha256 TEXT
    )""",
)
# v2: a revision counter per case, raised by every review in the same transaction, so a save made
# from a stale page (another reader changed the case since) is refused instead of overwriting it.
_SCHEMA_V2: tuple[str, ...] = ("ALTER TABLE cases ADD COLUMN revision INTEGER NOT NULL DEFAULT 0",)
# v3 (issue 18): studies and series. A case is one slice; it may belong to a series (hashed
# SeriesInstanceUID, volume or folder) of a study, at ``slice_order`` along the stack. Cases from
# before v3 have no series: each is a one-slice study of its own. ``series`` holds what is known
# of a series as a whole (no PHI: the keys are hashes).
_SCHEMA_V3: tuple[str, ...] = (
    "ALTER TABLE cases ADD COLUMN study_key TEXT",
    "ALTER TABLE cases ADD COLUMN series_key TEXT",
    "ALTER TABLE cases ADD COLUMN instance_key TEXT",
    "ALTER TABLE cases ADD COLUMN slice_order REAL",
    "CREATE INDEX IF NOT EXISTS idx_cases_series ON cases (series_key, slice_order)",
    "CREATE INDEX IF NOT EXISTS idx_cases_study ON cases (study_key)",
    "CREATE INDEX IF NOT EXISTS idx_cases_instance ON cases (instance_key)",
    """CREATE TABLE IF NOT EXISTS series (
        series_key TEXT PRIMARY KEY NOT NULL CHECK (length(series_key) > 0),
        study_key TEXT NOT NULL,
        patient_key TEXT NOT NULL DEFAULT '',
        source TEXT NOT NULL DEFAULT '',
        description TEXT NOT NULL DEFAULT '',
        modality TEXT NOT NULL DEFAULT '',
        study_description TEXT NOT NULL DEFAULT '',
        spacing_mm REAL,
        positions_in_mm INTEGER NOT NULL DEFAULT 0 CHECK (positions_in_mm IN (0, 1)),
        created_at TEXT NOT NULL,
        extra TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX IF NOT EXISTS idx_series_study ON series (study_key)",
    # One sign-off per study: who signed the study, when, and the study's note. The slices are
    # signed off with it (each audited); per-slice corrections made before stay as they were.
    """CREATE TABLE IF NOT EXISTS study_reviews (
        study_key TEXT PRIMARY KEY NOT NULL CHECK (length(study_key) > 0),
        review_status TEXT NOT NULL CHECK (review_status IN ('signed_off')),
        reviewer TEXT NOT NULL,
        reviewed_at TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        slices INTEGER NOT NULL DEFAULT 0
    )""",
)
# MIGRATIONS[i] upgrades a database from user_version i to i + 1. Append, never edit.
MIGRATIONS: tuple[tuple[str, ...], ...] = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3)
SCHEMA_VERSION = len(MIGRATIONS)


class StorageError(WorklistError):
    """The worklist's storage cannot do what was asked (read-only, damaged, full, locked)."""


class ReadOnlyStorageError(StorageError):
    """The data folder (or the database file) cannot be written: the worklist is read-only."""


class CorruptDatabaseError(StorageError):
    """The database file is damaged or is not a worklist database at all."""


class DiskFullError(StorageError):
    """The disk holding the data folder is full."""


class DatabaseBusyError(StorageError):
    """Another program held the database's write lock for longer than the worklist waits."""


def read_only_message(db_path: Path) -> str:
    """What a reader is told when the data folder cannot be written."""
    return (
        f"The data folder {db_path.parent} is read-only: the worklist can be read, but uploads, reviews and "
        "sign-offs are refused until an administrator makes the folder writable again."
    )


def corrupt_message(db_path: Path, detail: str) -> str:
    """What a reader is told when the database file is damaged (``detail``: SQLite's words)."""
    return (
        f"The worklist database {db_path} is damaged ({detail}). Nothing can be read from it or added to it. "
        "Stop the app and restore the last backup (python -m triage restore <backup folder>; "
        "the damaged file is kept beside it as worklist.sqlite3.before-restore-<time>)."
    )


def disk_full_message(db_path: Path) -> str:
    """What a reader is told when the data folder's disk is full."""
    return (
        f"The disk holding the data folder {db_path.parent} is full: nothing new can be stored (uploads and "
        "reviews are refused, nothing half-written is kept). Free some space, then try again."
    )


_WAIT_HOOK = threading.local()


@contextmanager
def waiting_for_database(callback: Callable[[float], None]) -> Iterator[None]:
    """While the block runs in this thread, ``callback(seconds waited so far)`` is called each time a
    write finds the database locked by another program and tries again."""
    previous = getattr(_WAIT_HOOK, "callback", None)
    _WAIT_HOOK.callback = callback
    try:
        yield
    finally:
        _WAIT_HOOK.callback = previous


def _classify(exc: BaseException, db_path: Path) -> StorageError | None:
    """The storage error a SQLite or OS error stands for, or None when it is something else."""
    if isinstance(exc, StorageError):
        return exc
    text = str(exc).lower()
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(disk_full_message(db_path))
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return ReadOnlyStorageError(read_only_message(db_path))
    if not isinstance(exc, sqlite3.DatabaseError):
        return None
    if "not a database" in text or "malformed" in text or "file is encrypted" in text:
        return CorruptDatabaseError(corrupt_message(db_path, str(exc)))
    if "disk is full" in text or "database or disk is full" in text:
        return DiskFullError(disk_full_message(db_path))
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return ReadOnlyStorageError(read_only_message(db_path))
    if "disk i/o error" in text:
        return StorageError(
            f"The worklist database {db_path} cannot be read or written (disk I/O error); "
            "check the disk of the data folder."
        )
    return None


def _column_values(case: Case) -> dict:
    """The columns ``add_case`` writes for a (checked) case: flags and extra as JSON, bools as 0/1."""
    values = {c: getattr(case, c) for c in INPUT_FIELDS}  # Case's own list of them, not a copy
    values.update(zip(PROB_COLUMNS, case.probs))
    values["flags"] = json.dumps([str(f) for f in case.flags])
    values["ood"] = int(case.ood)
    values["extra"] = dumps(case.extra)
    return values


def _row_to_case(row: sqlite3.Row) -> Case:
    """The :class:`Case` of a ``cases`` row (flags/extra decoded)."""
    values = dict(row)
    values["flags"] = json.loads(values["flags"] or "[]")
    values["extra"] = json.loads(values["extra"] or "{}")
    return Case.from_stored(values)


def _series_row(row: sqlite3.Row) -> dict:
    record = dict(row)
    record["extra"] = json.loads(record.get("extra") or "{}")
    record["positions_in_mm"] = bool(record.get("positions_in_mm"))
    return record


def _audit_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return str(int(value))
    return str(value)


SEARCH_FIELDS: tuple[str, ...] = ("name", "scan_id")


def _filter_sql(
    label: str | None, review_status: str | None, flag: str | None, search: str | None, search_in: str = "name"
) -> tuple[str, list]:
    """WHERE clause and parameters for the list filters (label = effective label; ``search`` looks
    in the file name, or in the case id when ``search_in="scan_id"``)."""
    clauses: list[str] = []
    params: list = []
    if label is not None:
        clauses.append("COALESCE(reviewed_label, label) = ?")
        params.append(check_label(label))
    if review_status is not None:
        if review_status not in REVIEW_STATUSES:
            raise WorklistError(f"review_status must be one of {', '.join(REVIEW_STATUSES)}")
        clauses.append("review_status = ?")
        params.append(review_status)
    if flag is not None:
        clauses.append("EXISTS (SELECT 1 FROM json_each(cases.flags) WHERE json_each.value = ?)")
        params.append(flag)
    if search_in not in SEARCH_FIELDS:
        raise WorklistError(f"search_in must be one of {', '.join(SEARCH_FIELDS)}")
    if search:
        clauses.append(f"instr(py_casefold({search_in}), ?) > 0")  # one of SEARCH_FIELDS, not user text
        params.append(search.casefold())
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


_ORDER_SQL = " ORDER BY risk DESC, received_at ASC, scan_id ASC"
# The review fields of a case nobody reviewed yet (what add_case requires).
_UNREVIEWED = {f.name: f.default for f in fields(Case) if f.name in REVIEW_FIELDS}


class Worklist:
    """Risk-ordered case queue in one SQLite file. Cheap to construct; the schema is made lazily."""

    def __init__(
        self, db_path: Path | str, busy_timeout_s: float = BUSY_TIMEOUT_S, write_wait_s: float = WRITE_WAIT_S
    ) -> None:
        self.db_path = Path(db_path).expanduser()
        self.busy_timeout_s = busy_timeout_s
        self.write_wait_s = write_wait_s
        # True once the data folder or the file turned out not to be writable: reads go through a
        # read-only connection, writes raise ReadOnlyStorageError (checked again now and then).
        self.read_only = False
        self._read_only_since = 0.0
        self._ready = False
        self._ready_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Worklist({str(self.db_path)!r})"

    # -- connections -------------------------------------------------------------------

    def _open(self, busy_timeout_s: float | None = None, read_only: bool | None = None) -> sqlite3.Connection:
        """A new autocommit connection with the per-connection pragmas applied (read-only in a
        read-only data folder, or when ``read_only``)."""
        timeout = self.busy_timeout_s if busy_timeout_s is None else busy_timeout_s
        read_only = self.read_only if read_only is None else read_only
        if read_only:
            conn = self._open_read_only(timeout)
        else:
            conn = sqlite3.connect(self.db_path, timeout=timeout, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        if not read_only:
            conn.execute("PRAGMA synchronous = NORMAL")
        conn.create_function("py_casefold", 1, lambda s: None if s is None else str(s).casefold(), deterministic=True)
        return conn

    def _open_read_only(self, timeout: float) -> sqlite3.Connection:
        """A read-only connection. A WAL database needs its -shm file; in a read-only folder that
        cannot be created, so the file is then opened as immutable (nobody can write it anyway)."""
        uri = "file:" + urllib.parse.quote(str(self.db_path))
        conn = sqlite3.connect(uri + "?mode=ro", timeout=timeout, isolation_level=None, uri=True)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError:
            conn.close()
        return sqlite3.connect(uri + "?mode=ro&immutable=1", timeout=timeout, isolation_level=None, uri=True)

    def _fail(self, exc: BaseException) -> None:
        """Raise the storage error ``exc`` stands for (when it is one), naming the file."""
        storage = _classify(exc, self.db_path)
        if storage is None or storage is exc:
            return
        if isinstance(storage, ReadOnlyStorageError) and self.db_path.is_file():
            self._enter_read_only()
        log.error("worklist %s: %s (%s: %s)", self.db_path, type(storage).__name__, type(exc).__name__, exc)
        raise storage from exc

    def _enter_read_only(self) -> None:
        if not self.read_only:
            log.warning("worklist %s: the data folder is read-only; opening the worklist read-only", self.db_path)
        self.read_only, self._read_only_since = True, time.monotonic()

    def _folder_writable(self) -> bool:
        """Whether new files can be made beside the database (os.access sees read-only mounts,
        even for root; a chmod-ed folder for other users)."""
        folder = self.db_path.parent
        if not folder.exists():
            return os.access(folder.parent if folder.parent.exists() else folder.anchor, os.W_OK)
        writable = os.access(folder, os.W_OK)
        if writable and self.db_path.exists():
            writable = os.access(self.db_path, os.W_OK)
        return writable

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        conn = self._read_connection()
        try:
            with closing(conn):
                yield conn
        except (sqlite3.DatabaseError, OSError) as exc:
            self._fail(exc)
            raise

    def _read_connection(self) -> sqlite3.Connection:
        """A connection for reading. On a full disk SQLite cannot make the WAL index (-shm) that a
        normal connection needs, and every read failed (issue 22, item 15): the file is then read
        through a read-only connection instead (the last writer's close folded the WAL into it)."""
        try:
            self._ensure_schema()
            conn = self._open()
            try:
                conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # opens the WAL index
            except BaseException:
                conn.close()
                raise
            return conn
        except (StorageError, sqlite3.DatabaseError, OSError) as exc:
            storage = _classify(exc, self.db_path)
            degraded = isinstance(storage, DiskFullError) or type(storage) is StorageError
            if not degraded or self.read_only or not self.db_path.is_file():
                if isinstance(exc, StorageError):
                    raise
                self._fail(exc)
                raise
            log.warning("worklist %s: %s; reading it through a read-only connection", self.db_path, exc)
            try:
                return self._open(read_only=True)
            except (sqlite3.DatabaseError, OSError) as again:
                self._fail(again)
                raise

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on error. A lock
        held by another program is waited for (up to ``write_wait_s``), never a lost write."""
        self._ensure_schema()
        if self.read_only and time.monotonic() - self._read_only_since > 10 and self._folder_writable():
            self._ready, self.read_only = False, False  # the folder became writable again
            self._ensure_schema()
        if self.read_only:
            raise ReadOnlyStorageError(read_only_message(self.db_path))
        try:
            with closing(self._open(busy_timeout_s=min(WRITE_TRY_S, self.write_wait_s))) as conn:
                self._begin_waiting(conn)
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
                try:
                    yield conn
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        except (sqlite3.DatabaseError, OSError) as exc:
            self._fail(exc)
            raise

    def _begin_waiting(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, tried again with back-off while another program holds the write lock."""
        started = time.monotonic()
        pause = 0.1
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                if time.monotonic() - started > WRITE_TRY_S:
                    log.info("worklist %s: got the write lock after %.1f s", self.db_path, time.monotonic() - started)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc).lower() and "busy" not in str(exc).lower():
                    raise
                waited = time.monotonic() - started
                if waited >= self.write_wait_s:
                    raise DatabaseBusyError(
                        f"The worklist database {self.db_path} stayed locked by another program for "
                        f"{waited:.0f} s; nothing was written. Try again, or close the program holding it."
                    ) from exc
                log.warning("worklist %s: locked by another program for %.1f s; waiting", self.db_path, waited)
                callback = getattr(_WAIT_HOOK, "callback", None)
                if callback is not None:
                    callback(waited)
                time.sleep(min(pause, max(0.0, self.write_wait_s - waited)))
                pause = min(pause * 2, 2.0)

    def _ensure_schema(self) -> None:
        """Create the folder, switch to WAL and apply pending migrations (once per instance). A
        read-only data folder holding a database opens it read-only; a damaged file raises
        :class:`CorruptDatabaseError`."""
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            self._check_header()
            if self.db_path.is_file() and not self._folder_writable():
                self._enter_read_only()
            try:
                if self.read_only:
                    with closing(self._open()) as conn:
                        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                        if _user_version(conn) > SCHEMA_VERSION:
                            raise WorklistError(f"worklist {self.db_path} has a newer schema; update the app.")
                else:
                    self.db_path.parent.mkdir(parents=True, exist_ok=True)
                    with closing(self._open()) as conn:
                        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                        if str(mode).lower() != "wal":
                            log.warning("worklist %s: journal_mode is %s, not wal", self.db_path, mode)
                        self._migrate(conn)
            except (sqlite3.DatabaseError, OSError) as exc:
                self._fail(exc)
                raise
            self._ready = True

    def _check_header(self) -> None:
        """A file that does not start like a SQLite database is damaged (garbage, a zeroed file)."""
        try:
            with self.db_path.open("rb") as fh:
                head = fh.read(len(SQLITE_MAGIC))
        except FileNotFoundError:
            return
        except OSError as exc:
            self._fail(exc)
            raise
        if head and head != SQLITE_MAGIC:
            raise CorruptDatabaseError(corrupt_message(self.db_path, "file is not a database"))

    def storage_problem(self) -> StorageError | None:
        """Why nothing can be added to the worklist now (read-only, damaged, full), or None.

        Cheap enough for every page run (the file's header, one count, the folder's write
        permission); damage deeper in the file is reported by the read or write that meets it."""
        try:
            with self._read() as conn:
                conn.execute("SELECT count(*) FROM cases").fetchone()
        except StorageError as exc:
            return exc
        if self.read_only:
            return ReadOnlyStorageError(read_only_message(self.db_path))
        if not self._folder_writable():
            self._enter_read_only()
            return ReadOnlyStorageError(read_only_message(self.db_path))
        return None

    def _migrate(self, conn: sqlite3.Connection) -> None:
        if _user_version(conn) == SCHEMA_VERSION:
            return
        with _immediate(conn):
            version = _user_version(conn)
            if version > SCHEMA_VERSION:
                raise WorklistError(
                    f"worklist {self.db_path} has schema v{version}; this app knows v{SCHEMA_VERSION}. Update the app."
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target - 1]:
                    conn.execute(statement)
                log.info("worklist %s: migrated schema to v%d", self.db_path, target)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- cases -------------------------------------------------------------------------

    def add_case(self, case: Case | Mapping, actor: str = "system") -> bool:
        """Insert a new case; False (and nothing written) when its scan_id is already present.

        A mapping of columns is taken too (converted by :meth:`Case.from_mapping`). A case that
        carries a review is refused: only :meth:`review` and friends write the review fields."""
        if not isinstance(case, Case):
            case = Case.from_mapping(case)
        reviewed = [f for f in REVIEW_FIELDS if getattr(case, f) != _UNREVIEWED[f]]
        if reviewed:
            raise WorklistError(f"add_case cannot set review fields {reviewed}; use review()")
        values = _column_values(case)
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self._write() as conn:
            cur = conn.execute(
                f"INSERT INTO cases ({cols}) VALUES ({marks}) ON CONFLICT (scan_id) DO NOTHING", tuple(values.values())
            )
            if cur.rowcount == 0:
                log.info("worklist: case %s already present, not added", values["scan_id"])
                return False
            _append_audit(conn, values["scan_id"], actor, "added", None, None, values["label"])
        log.info("worklist: added case %s (%s, risk %.3f)", values["scan_id"], values["label"], values["risk"])
        return True

    def get(self, scan_id: str) -> Case | None:
        """The case, or None."""
        with self._read() as conn:
            row = conn.execute("SELECT * FROM cases WHERE scan_id = ?", (scan_id,)).fetchone()
        return None if row is None else _row_to_case(row)

    def list_cases(
        self,
        label: str | None = None,
        review_status: str | None = None,
        flag: str | None = None,
        search: str | None = None,
        limit: int | None = None,
        search_in: str = "name",
    ) -> list[Case]:
        """Cases by risk (highest first), then arrival (oldest first), optionally filtered."""
        where, params = _filter_sql(label, review_status, flag, search, search_in)
        sql = "SELECT * FROM cases" + where + _ORDER_SQL + " LIMIT ?"
        with self._read() as conn:
            rows = conn.execute(sql, [*params, -1 if limit is None else int(limit)]).fetchall()
        return [_row_to_case(r) for r in rows]

    def neighbours(
        self,
        scan_id: str,
        label: str | None = None,
        review_status: str | None = None,
        flag: str | None = None,
        search: str | None = None,
        search_in: str = "name",
    ) -> tuple[str | None, str | None]:
        """(previous, next) scan_ids around ``scan_id`` in the filtered list order."""
        where, params = _filter_sql(label, review_status, flag, search, search_in)
        with self._read() as conn:
            ids = [r[0] for r in conn.execute("SELECT scan_id FROM cases" + where + _ORDER_SQL, params)]
        if scan_id not in ids:
            return None, None
        i = ids.index(scan_id)
        return (ids[i - 1] if i > 0 else None), (ids[i + 1] if i + 1 < len(ids) else None)

    def referenced_paths(self, paths: Sequence[str]) -> set[Path]:
        """Those of ``paths`` that a case stores as its slice, mask or truth mask."""
        wanted = [str(p) for p in paths]
        marks = ", ".join("?" for _ in wanted)
        sql = (
            f"SELECT stored_path, mask_path, truth_mask_path FROM cases WHERE stored_path IN ({marks})"
            f" OR mask_path IN ({marks}) OR truth_mask_path IN ({marks})"
        )
        with self._read() as conn:
            rows = conn.execute(sql, wanted * 3).fetchall()
        used = {v for row in rows for v in row if v}
        return {Path(p) for p in wanted if p in used}

    def count(self) -> int:
        """Number of cases."""
        with self._read() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM cases").fetchone()[0])

    def revision(self) -> int:
        """A number that grows with every change to the cases (the last audit row: each add, review,
        sign-off and addendum writes one). Cheap to poll: a tab compares it to see if it must redraw."""
        with self._read() as conn:
            return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM audit").fetchone()[0])

    def reviewed_cases(self) -> list[Case]:
        """Cases a reviewer has looked at (status != unreviewed), for retraining."""
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM cases WHERE review_status != 'unreviewed'" + _ORDER_SQL).fetchall()
        return [_row_to_case(r) for r in rows]

    # -- studies and series (schema v3) -----------------------------------------------

    def add_series(self, series: dict) -> bool:
        """Record a series (keys ``series_key``, ``study_key`` and optional ``patient_key``,
        ``source``, ``description``, ``modality``, ``study_description``, ``spacing_mm``,
        ``positions_in_mm``, ``extra``). False (nothing changed) when it is already known: a
        series that arrives in several uploads keeps its first record."""
        key, study = str(series.get("series_key") or ""), str(series.get("study_key") or "")
        if not key or not study:
            raise WorklistError("a series needs a series_key and a study_key")
        spacing = series.get("spacing_mm")
        values = (
            key,
            study,
            str(series.get("patient_key") or ""),
            str(series.get("source") or ""),
            str(series.get("description") or "")[:200],
            str(series.get("modality") or "")[:32],
            str(series.get("study_description") or "")[:200],
            None if spacing is None else finite(spacing, "spacing_mm"),
            int(bool(series.get("positions_in_mm"))),
            utc_now(),
            dumps(series.get("extra") or {}),
        )
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO series (series_key, study_key, patient_key, source, description, modality,"
                " study_description, spacing_mm, positions_in_mm, created_at, extra)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (series_key) DO NOTHING",
                values,
            )
            return cur.rowcount > 0

    def get_series(self, series_key: str) -> dict | None:
        """The series record (``extra`` decoded), or None."""
        with self._read() as conn:
            row = conn.execute("SELECT * FROM series WHERE series_key = ?", (series_key,)).fetchone()
        return None if row is None else _series_row(row)

    def all_series(self) -> list[dict]:
        """Every series record (for the study list)."""
        with self._read() as conn:
            return [_series_row(r) for r in conn.execute("SELECT * FROM series ORDER BY created_at")]

    def series_cases(self, series_key: str) -> list[Case]:
        """The cases (slices) of a series in stack order."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT * FROM cases WHERE series_key = ? ORDER BY slice_order ASC, received_at ASC", (series_key,)
            ).fetchall()
        return [_row_to_case(r) for r in rows]

    def find_instance(self, instance_key: str) -> Case | None:
        """The case holding a DICOM instance (hashed SOPInstanceUID and frame), or None."""
        with self._read() as conn:
            row = conn.execute("SELECT * FROM cases WHERE instance_key = ? LIMIT 1", (instance_key,)).fetchone()
        return None if row is None else _row_to_case(row)

    def sign_off_study(
        self, study_key: str, reviewer: str, note: str = "", expected_revisions: dict[str, int] | None = None
    ) -> dict:
        """Sign off a whole study in one transaction: every slice not yet signed off is signed off
        with its current (possibly corrected) label, one audit row per changed field (action
        ``study_sign_off``), and the study's note and reviewer are recorded once. Returns the study
        review. ``expected_revisions`` ({scan_id: revision} the reader's page shows): when a slice
        changed since, :class:`ReviewConflictError` is raised and nothing is written. A study that
        is already signed off raises :class:`SignedOffError`."""
        reviewer = _check_reviewer(reviewer)
        note = note or ""
        if len(note) > MAX_NOTE_CHARS:
            raise WorklistError(f"note is longer than {MAX_NOTE_CHARS} characters")
        with self._write() as conn:
            rows = conn.execute(
                "SELECT * FROM cases WHERE study_key = ? ORDER BY slice_order, scan_id", (study_key,)
            ).fetchall()
            if not rows:
                raise CaseNotFoundError(f"no study {study_key!r} in the worklist")
            done = conn.execute("SELECT * FROM study_reviews WHERE study_key = ?", (study_key,)).fetchone()
            if done is not None:
                raise SignedOffError(
                    f"the study was signed off by {done['reviewer']} at {done['reviewed_at'][:19].replace('T', ' ')} "
                    "UTC and is read-only; add an addendum to a slice instead"
                )
            for row in rows:
                if expected_revisions and row["scan_id"] in expected_revisions:
                    _check_current(row, expected_revisions[row["scan_id"]])
            now = utc_now()
            for row in rows:
                if row["review_status"] == "signed_off":
                    continue
                new = _review_values(row, reviewer, None, None, None, sign_off=True)
                changed = {k: v for k, v in new.items() if row[k] != v}
                _update(conn, row["scan_id"], {**changed, "reviewed_at": now, "revision": row["revision"] + 1})
                for field, value in changed.items():
                    _append_audit(conn, row["scan_id"], reviewer, "study_sign_off", field, row[field], value)
            if note.strip():
                _append_audit(conn, rows[0]["scan_id"], reviewer, "study_sign_off", "study_note", None, note.strip())
            conn.execute(
                "INSERT INTO study_reviews (study_key, review_status, reviewer, reviewed_at, note, slices)"
                " VALUES (?, 'signed_off', ?, ?, ?, ?)",
                (study_key, reviewer, now, note.strip(), len(rows)),
            )
            record = dict(conn.execute("SELECT * FROM study_reviews WHERE study_key = ?", (study_key,)).fetchone())
        log.info("worklist: study %s (%d slices) signed off by %s", study_key, len(rows), reviewer)
        return record

    def study_review(self, study_key: str) -> dict | None:
        """The study's sign-off (reviewer, reviewed_at, note, slices), or None."""
        with self._read() as conn:
            row = conn.execute("SELECT * FROM study_reviews WHERE study_key = ?", (study_key,)).fetchone()
        return None if row is None else dict(row)

    # -- review and ground truth -------------------------------------------------------

    def review(
        self,
        scan_id: str,
        reviewer: str,
        label: str | None = None,
        mask_rejected: bool | None = None,
        note: str | None = None,
        sign_off: bool = False,
        expected_revision: int | None = None,
    ) -> Case:
        """Record a reviewer's decision; one audit row per changed field. Returns the case.

        ``expected_revision``: the case's ``revision`` when the reader opened it. If another save
        happened since, :class:`ReviewConflictError` is raised and nothing is written (checked in the
        same transaction as the write). A signed-off case refuses every review
        (:class:`SignedOffError`); use :meth:`addendum`.
        """
        reviewer = _check_reviewer(reviewer)
        if label is not None:
            check_label(label)
        if note is not None and len(note) > MAX_NOTE_CHARS:
            raise WorklistError(f"note is longer than {MAX_NOTE_CHARS} characters")
        action = "sign_off" if sign_off else "review"
        with self._write() as conn:
            row = _fetch(conn, scan_id)
            _check_current(row, expected_revision)
            if row["review_status"] == "signed_off":
                raise SignedOffError(
                    f"case {row['name'] or scan_id} was signed off by {row['reviewer']} at "
                    f"{(row['reviewed_at'] or '')[:19].replace('T', ' ')} UTC and is read-only; add an addendum instead"
                )
            new = _review_values(row, reviewer, label, mask_rejected, note, sign_off)
            changed = {k: v for k, v in new.items() if row[k] != v}
            if changed:
                _update(conn, scan_id, {**changed, "reviewed_at": utc_now(), "revision": row["revision"] + 1})
                for field, value in changed.items():
                    _append_audit(conn, scan_id, reviewer, action, field, row[field], value)
            result = _row_to_case(_fetch(conn, scan_id))
        log.info("worklist: %s of %s by %s changed %s", action, scan_id, reviewer, sorted(changed))
        return result

    def addendum(self, scan_id: str, reviewer: str, text: str, expected_revision: int | None = None) -> Case:
        """Append a remark to a signed-off case: its own audit row (action ``addendum``); the signed
        fields stay as signed. Returns the case."""
        reviewer = _check_reviewer(reviewer)
        if not isinstance(text, str) or not text.strip():
            raise WorklistError("an addendum needs some text")
        if len(text) > MAX_NOTE_CHARS:
            raise WorklistError(f"addendum is longer than {MAX_NOTE_CHARS} characters")
        with self._write() as conn:
            row = _fetch(conn, scan_id)
            _check_current(row, expected_revision)
            if row["review_status"] != "signed_off":
                raise WorklistError("addenda are for signed-off cases; save the review instead")
            _update(conn, scan_id, {"revision": row["revision"] + 1})
            _append_audit(conn, scan_id, reviewer, "addendum", "note", None, text.strip())
            return _row_to_case(_fetch(conn, scan_id))

    def addenda(self, scan_id: str) -> list[dict]:
        """The addenda of a case, oldest first."""
        return [a for a in self.audit(scan_id) if a["action"] == "addendum"]

    def set_truth(
        self, scan_id: str, truth_label: str | None, truth_mask_path: str | Path | None = None, actor: str = "system"
    ) -> Case:
        """Attach the ground-truth label and/or mask path to a case; audited. Returns the case."""
        if truth_label is None and truth_mask_path is None:
            raise WorklistError("set_truth needs a truth label or a truth mask")
        new = {} if truth_label is None else {"truth_label": check_label(truth_label, "truth_label")}
        if truth_mask_path is not None:
            new["truth_mask_path"] = str(truth_mask_path)
        with self._write() as conn:
            row = _fetch(conn, scan_id)
            changed = {k: v for k, v in new.items() if row[k] != v}
            if changed:
                _update(conn, scan_id, changed)
                for field, value in changed.items():
                    _append_audit(conn, scan_id, actor, "truth", field, row[field], value)
            return _row_to_case(_fetch(conn, scan_id))

    # -- audit and rejections ----------------------------------------------------------

    def audit(self, scan_id: str | None = None) -> list[dict]:
        """Audit rows, oldest first (all cases, or one)."""
        sql = "SELECT * FROM audit" + (" WHERE scan_id = ?" if scan_id is not None else "") + " ORDER BY id"
        with self._read() as conn:
            rows = conn.execute(sql, () if scan_id is None else (scan_id,)).fetchall()
        return [dict(r) for r in rows]

    def log_rejection(self, name: str, reason: str, sha256: str | None = None) -> int:
        """Record a refused upload (it does not become a case). Returns the row id."""
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO rejections (received_at, name, reason, sha256) VALUES (?, ?, ?, ?)",
                (utc_now(), str(name), str(reason), sha256),
            )
            row_id = int(cur.lastrowid or 0)
        log.warning("worklist: rejected %r: %s", shown_name(name, sha256 and sha256[:32]), reason)
        return row_id

    def rejections(self, limit: int = 100) -> list[dict]:
        """Refused uploads, newest first."""
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM rejections ORDER BY id DESC LIMIT ?", (int(limit),)).fetchall()
        return [dict(r) for r in rows]

    # -- maintenance and export --------------------------------------------------------

    def integrity_check(self) -> str:
        """'ok' when SQLite finds no corruption, else its messages joined by newlines."""
        with self._read() as conn:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
        return "\n".join(str(r[0]) for r in rows)

    def export_csv(self, rows: Sequence[Case | dict] | None = None, hide_names: bool | None = None) -> bytes:
        """UTF-8 CSV of ``rows`` (cases, or dicts of columns; default: the whole worklist in order),
        without thumbnails.

        Cells go through :func:`triage.export.csv_cell` (formulas defused, one row per case).
        ``hide_names`` (default: :attr:`Settings.file_names_hidden`) writes ``case <id>`` in the
        name column."""
        if rows is None:
            rows = self.list_cases()
        if hide_names is None:
            hide_names = get_settings().file_names_hidden
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            if isinstance(row, Case):
                row = row.as_row()
            if hide_names:
                row = {**row, "name": case_ref(row.get("scan_id"))}
            writer.writerow(csv_row(row, CSV_COLUMNS))
        return buf.getvalue().encode("utf-8")


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK if the block raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _fetch(conn: sqlite3.Connection, scan_id: str) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM cases WHERE scan_id = ?", (scan_id,)).fetchone()
    if row is None:
        raise CaseNotFoundError(f"no case {scan_id!r} in the worklist")
    return row


def _update(conn: sqlite3.Connection, scan_id: str, values: dict) -> None:
    assignments = ", ".join(f"{col} = ?" for col in values)  # column names are ours, not user input
    conn.execute(f"UPDATE cases SET {assignments} WHERE scan_id = ?", [*values.values(), scan_id])


def _append_audit(
    conn: sqlite3.Connection, scan_id: str, actor: str, action: str, field: str | None, old: object, new: object
) -> None:
    conn.execute(
        "INSERT INTO audit (scan_id, at, actor, action, field, old_value, new_value) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (scan_id, utc_now(), actor, action, field, _audit_text(old), _audit_text(new)),
    )


def _check_current(row: sqlite3.Row, expected_revision: int | None) -> None:
    """Refuse a write made from a page that shows an older revision of the case."""
    if expected_revision is None or int(row["revision"]) == int(expected_revision):
        return
    who = row["reviewer"] or "another reader"
    when = (row["reviewed_at"] or "")[:19].replace("T", " ")
    raise ReviewConflictError(
        f"{case_ref(row['scan_id'])} changed since you opened it ({who}, {when} UTC, now "
        f"{REVIEW_LABELS.get(row['review_status'], row['review_status'])}); nothing was saved. "
        "Reload the case and apply your changes again.",
        _row_to_case(row),
    )


REVIEW_LABELS = {
    "unreviewed": "unreviewed",
    "confirmed": "confirmed",
    "corrected": "corrected",
    "signed_off": "signed off",
}


def _check_reviewer(reviewer: object) -> str:
    if not isinstance(reviewer, str) or not reviewer.strip():
        raise WorklistError("a reviewer name is required")
    return reviewer.strip()


def _review_values(
    row: sqlite3.Row, reviewer: str, label: str | None, mask_rejected: bool | None, note: str | None, sign_off: bool
) -> dict:
    """New values of the review fields. The reviewed label defaults to the current effective one."""
    reviewed_label = label if label is not None else (row["reviewed_label"] or row["label"])
    if sign_off:
        status = ReviewState.SIGNED_OFF
    else:
        status = ReviewState.CORRECTED if reviewed_label != row["label"] else ReviewState.CONFIRMED
    return {
        "reviewed_label": reviewed_label,
        "mask_rejected": row["mask_rejected"] if mask_rejected is None else int(bool(mask_rejected)),
        "note": row["note"] if note is None else note,
        "review_status": status,
        "reviewer": reviewer,
    }
