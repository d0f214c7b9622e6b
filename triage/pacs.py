"""PACS connection core: the persistent receive queue, the outbox of results and the status (no streamlit).

Everything lives in ``<data_dir>/pacs.sqlite3``, a file of its own so the worklist's schema is not
touched: the instances received (C-STORE or DICOMweb poll) and not yet analysed, the poll cursor,
the results waiting to be stored back into the PACS with their retry schedule, and the status the
app's panel shows. A received instance is written to ``<data_dir>/pacs/incoming/`` and queued in
one step before the sender is told "stored", so a crash loses nothing; it is analysed through the
same :func:`triage.intake.ingest` as an upload (same refusals, same PHI rule) and marked done in one
transaction, so a restart never analyses it twice (and the worklist ignores a scan it already has).
Queued instances are analysed per series (:func:`triage.series.group_files` and
:func:`triage.studies.ingest_series`, as a multi-file upload), and the results sent back are one SEG /
SC / SR set per analysed series. A C-STORE instance is streamed to disk by pynetdicom and moved
into the incoming folder (:func:`receive_file`), never held whole in memory.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from triage import atomic
from triage.config import Settings
from triage.errors import ModelNotFoundError, TriageError

log = logging.getLogger(__name__)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS instances (
        sop_instance_uid TEXT PRIMARY KEY,
        study_instance_uid TEXT,
        series_instance_uid TEXT,
        sop_class_uid TEXT,
        source TEXT NOT NULL,
        path TEXT,
        sha256 TEXT,
        status TEXT NOT NULL DEFAULT 'received',
        reason TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        scan_ids TEXT,
        received_at REAL NOT NULL,
        done_at REAL)""",
    "CREATE INDEX IF NOT EXISTS idx_instances_status ON instances (status, received_at)",
    """CREATE TABLE IF NOT EXISTS outbox (
        id INTEGER PRIMARY KEY,
        source_sop_uid TEXT NOT NULL,
        kind TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL,
        path TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_try_at REAL NOT NULL DEFAULT 0,
        last_error TEXT,
        created_at REAL NOT NULL,
        sent_at REAL,
        UNIQUE (source_sop_uid, kind))""",
    """CREATE TABLE IF NOT EXISTS cursor (name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL)""",
    """CREATE TABLE IF NOT EXISTS seen_studies (
        source TEXT NOT NULL, study_instance_uid TEXT NOT NULL, instances INTEGER NOT NULL,
        PRIMARY KEY (source, study_instance_uid))""",
    """CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY, at REAL NOT NULL, component TEXT NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS status (
        component TEXT PRIMARY KEY, state TEXT NOT NULL, detail TEXT, at REAL NOT NULL)""",
)
# An instance whose analysis raised this many times is set aside as 'failed' (kept, with its file).
MAX_ANALYSIS_ATTEMPTS = 3
# Retry schedule for storing results: 2 s, 4 s, 8 s ... capped at 5 min; never given up on.
BACKOFF_BASE_S = 2.0
BACKOFF_MAX_S = 300.0
EVENTS_KEPT = 500


def pacs_db_path(settings: Settings) -> Path:
    """Where the PACS queue lives: beside the worklist in the data folder."""
    return Path(settings.data_dir) / "pacs.sqlite3"


def incoming_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) / "pacs" / "incoming"


def outbox_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) / "pacs" / "outbox"


def backoff_s(attempts: int) -> float:
    """Seconds to wait before retry number ``attempts`` (1, 2, ...): doubling, capped."""
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** max(0, attempts - 1))


def write_atomic(folder: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to ``folder/name`` atomically (:func:`triage.atomic.write_bytes`)."""
    path = Path(folder) / name
    atomic.write_bytes(path, data)
    return path


@dataclass(frozen=True)
class Received:
    """One instance as it arrived: its UIDs (from the header) and where its bytes were written."""

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    source: str
    path: Path
    sha256: str


@dataclass(frozen=True)
class Outcome:
    """What became of one queued instance: analysed (with its worklist cases) or rejected (why)."""

    sop_instance_uid: str
    status: str  # analysed | rejected | failed
    reason: str = ""
    scan_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutboxItem:
    """One result object waiting to be stored into the PACS."""

    id: int
    source_sop_uid: str
    kind: str
    sop_instance_uid: str
    path: Path
    attempts: int


@dataclass(frozen=True)
class PacsStatus:
    """What the status panel shows: counts per state, component states and the latest errors."""

    counts: dict = field(default_factory=dict)  # received / analysed / rejected / failed
    outbox: dict = field(default_factory=dict)  # pending / sent
    components: dict = field(default_factory=dict)  # component -> (state, detail, at)
    last_poll: float | None = None
    errors: list = field(default_factory=list)  # (at, component, message), newest first


class PacsQueue:
    """The SQLite queue of received instances, results to send, poll cursor and status."""

    def __init__(self, db_path: Path | str):
        self.db_path = Path(db_path)
        self._ready = False
        self._lock = threading.Lock()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    @contextmanager
    def _conn(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        if not self._ready:
            with self._lock:
                if not self._ready:
                    self.db_path.parent.mkdir(parents=True, exist_ok=True)
                    with closing(self._open()) as c:
                        c.execute("PRAGMA journal_mode = WAL")
                        for stmt in SCHEMA:
                            c.execute(stmt)
                    self._ready = True
        with closing(self._open()) as conn:
            if not write:
                yield conn
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # -- receiving ----------------------------------------------------------------------
    def known(self, sop_instance_uid: str) -> bool:
        """Whether this SOP Instance UID was received before (whatever became of it) or is one of our
        own results (a PACS that routes them back, or a poll that lists them, must not queue them)."""
        with self._conn() as c:
            return (
                c.execute(
                    "SELECT 1 FROM instances WHERE sop_instance_uid = ?"
                    " UNION ALL SELECT 1 FROM outbox WHERE sop_instance_uid = ?",
                    (sop_instance_uid, sop_instance_uid),
                ).fetchone()
                is not None
            )

    def enqueue(self, item: Received) -> bool:
        """Queue a received instance; False (and its file removed) when the SOP Instance UID is known."""
        with self._conn(write=True) as c:
            cur = c.execute(
                "INSERT INTO instances (sop_instance_uid, study_instance_uid, series_instance_uid, sop_class_uid,"
                " source, path, sha256, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (sop_instance_uid) DO NOTHING",
                (
                    item.sop_instance_uid,
                    item.study_instance_uid,
                    item.series_instance_uid,
                    item.sop_class_uid,
                    item.source,
                    str(item.path),
                    item.sha256,
                    time.time(),
                ),
            )
            added = cur.rowcount > 0
        if not added:
            log.info("pacs: instance %s already received, not queued again", item.sop_instance_uid)
            if item.path.exists() and not self._path_in_use(item.path):
                item.path.unlink()
        return added

    def _path_in_use(self, path: Path) -> bool:
        with self._conn() as c:
            return c.execute("SELECT 1 FROM instances WHERE path = ?", (str(path),)).fetchone() is not None

    def pending(self, limit: int = 2000) -> list[sqlite3.Row]:
        """Received instances not analysed yet, oldest first."""
        with self._conn() as c:
            return c.execute(
                "SELECT * FROM instances WHERE status = 'received' ORDER BY received_at LIMIT ?", (int(limit),)
            ).fetchall()

    def finish(self, sop_uid: str, status: str, reason: str, scan_ids: list[str], results: list[tuple]) -> None:
        """Mark one instance analysed / rejected and queue result objects (see :meth:`finish_many`)."""
        self.finish_many([Outcome(sop_uid, status, reason, tuple(scan_ids))], results, sop_uid)

    def finish_many(self, outcomes: list[Outcome], results: list[tuple], result_key: str = "") -> None:
        """Mark instances analysed / rejected and queue their result objects, in one transaction.

        results: (kind, result SOP Instance UID, path of the written object), all of one result set
        named ``result_key`` (a series and its analysed instances): a set queued twice is one set."""
        now = time.time()
        with self._conn(write=True) as c:
            for o in outcomes:
                c.execute(
                    "UPDATE instances SET status = ?, reason = ?, scan_ids = ?, done_at = ?, path = NULL"
                    " WHERE sop_instance_uid = ?",
                    (o.status, o.reason, ",".join(o.scan_ids), now, o.sop_instance_uid),
                )
            for kind, uid, path in results:
                c.execute(
                    "INSERT INTO outbox (source_sop_uid, kind, sop_instance_uid, path, created_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (source_sop_uid, kind) DO NOTHING",
                    (result_key, kind, uid, str(path), now),
                )

    def attempt_failed(self, sop_uid: str, reason: str) -> str:
        """Count a failed analysis; after :data:`MAX_ANALYSIS_ATTEMPTS` the instance is 'failed'."""
        with self._conn(write=True) as c:
            c.execute(
                "UPDATE instances SET attempts = attempts + 1, reason = ? WHERE sop_instance_uid = ?", (reason, sop_uid)
            )
            c.execute(
                "UPDATE instances SET status = 'failed', done_at = ? WHERE sop_instance_uid = ? AND attempts >= ?",
                (time.time(), sop_uid, MAX_ANALYSIS_ATTEMPTS),
            )
            return c.execute("SELECT status FROM instances WHERE sop_instance_uid = ?", (sop_uid,)).fetchone()[0]

    def instances(self, status: str | None = None) -> list[dict]:
        """Every received instance (optionally of one status), oldest first."""
        with self._conn() as c:
            sql = "SELECT * FROM instances" + (" WHERE status = ?" if status else "") + " ORDER BY received_at"
            return [dict(r) for r in c.execute(sql, (status,) if status else ())]

    # -- outbox -------------------------------------------------------------------------
    def due(self, now: float | None = None, limit: int = 100) -> list[OutboxItem]:
        """Result objects whose next try is due, oldest first."""
        now = time.time() if now is None else now
        with self._conn() as c:
            rows = c.execute(
                "SELECT * FROM outbox WHERE status = 'pending' AND next_try_at <= ? ORDER BY id LIMIT ?",
                (now, int(limit)),
            ).fetchall()
        return [
            OutboxItem(r["id"], r["source_sop_uid"], r["kind"], r["sop_instance_uid"], Path(r["path"]), r["attempts"])
            for r in rows
        ]

    def sent(self, item_id: int) -> None:
        with self._conn(write=True) as c:
            row = c.execute("SELECT path FROM outbox WHERE id = ?", (item_id,)).fetchone()
            c.execute(
                "UPDATE outbox SET status = 'sent', sent_at = ?, last_error = NULL WHERE id = ?", (time.time(), item_id)
            )
        if row is not None:
            Path(row["path"]).unlink(missing_ok=True)

    def send_failed(self, item_id: int, error: str) -> float:
        """Schedule the next try (back-off); returns the delay in seconds."""
        with self._conn(write=True) as c:
            attempts = c.execute("SELECT attempts FROM outbox WHERE id = ?", (item_id,)).fetchone()[0] + 1
            delay = backoff_s(attempts)
            c.execute(
                "UPDATE outbox SET attempts = ?, next_try_at = ?, last_error = ? WHERE id = ?",
                (attempts, time.time() + delay, error[:500], item_id),
            )
        return delay

    def outbox(self) -> list[dict]:
        with self._conn() as c:
            return [dict(r) for r in c.execute("SELECT * FROM outbox ORDER BY id")]

    # -- cursor, seen studies, status ---------------------------------------------------
    def get_cursor(self, name: str) -> str | None:
        with self._conn() as c:
            row = c.execute("SELECT value FROM cursor WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_cursor(self, name: str, value: str) -> None:
        with self._conn(write=True) as c:
            c.execute(
                "INSERT INTO cursor (name, value, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (name, value, time.time()),
            )

    def seen_count(self, source: str, study_uid: str) -> int | None:
        with self._conn() as c:
            row = c.execute(
                "SELECT instances FROM seen_studies WHERE source = ? AND study_instance_uid = ?", (source, study_uid)
            ).fetchone()
        return None if row is None else int(row[0])

    def set_seen(self, source: str, study_uid: str, instances: int) -> None:
        with self._conn(write=True) as c:
            c.execute(
                "INSERT INTO seen_studies VALUES (?, ?, ?)"
                " ON CONFLICT (source, study_instance_uid) DO UPDATE SET instances = excluded.instances",
                (source, study_uid, int(instances)),
            )

    def set_state(self, component: str, state: str, detail: str = "") -> None:
        """Record a component's state (e.g. 'poll', 'ok', 'last poll found 3') for the panel."""
        with self._conn(write=True) as c:
            c.execute(
                "INSERT INTO status VALUES (?, ?, ?, ?) ON CONFLICT (component) DO UPDATE SET"
                " state = excluded.state, detail = excluded.detail, at = excluded.at",
                (component, state, detail[:500], time.time()),
            )

    def event(self, component: str, level: str, message: str) -> None:
        """Log an event (kept: the latest :data:`EVENTS_KEPT`)."""
        getattr(log, "warning" if level == "error" else "info")("pacs %s: %s", component, message)
        with self._conn(write=True) as c:
            c.execute(
                "INSERT INTO events (at, component, level, message) VALUES (?, ?, ?, ?)",
                (time.time(), component, level, message[:1000]),
            )
            c.execute("DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?", (EVENTS_KEPT,))

    def status(self, errors: int = 10) -> PacsStatus:
        """Counts, component states and the latest errors, for the app's panel."""
        with self._conn() as c:
            counts = {r[0]: r[1] for r in c.execute("SELECT status, COUNT(*) FROM instances GROUP BY status")}
            out = {r[0]: r[1] for r in c.execute("SELECT status, COUNT(*) FROM outbox GROUP BY status")}
            comps = {r[0]: (r[1], r[2], r[3]) for r in c.execute("SELECT * FROM status")}
            errs = [
                (r[0], r[1], r[2])
                for r in c.execute(
                    "SELECT at, component, message FROM events WHERE level = 'error' ORDER BY id DESC LIMIT ?",
                    (int(errors),),
                )
            ]
            row = c.execute(
                "SELECT updated_at FROM cursor WHERE name LIKE 'poll:%' ORDER BY updated_at DESC"
            ).fetchone()
        return PacsStatus(counts, out, comps, row[0] if row else None, errs)


def _header(source) -> tuple[str, str, str, str]:
    """(SOP Instance, Study, Series, SOP Class UID) from a DICOM header (no pixels read)."""
    import pydicom

    try:
        ds = pydicom.dcmread(source, stop_before_pixels=True, force=True)
        uids = tuple(
            str(ds.get(k, "") or "").strip()
            for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID")
        )
    except Exception as exc:
        raise TriageError(f"received object is not readable DICOM ({type(exc).__name__}: {exc})") from exc
    return uids  # type: ignore[return-value]


def _queue_file(queue: PacsQueue, path: Path, uids: tuple[str, str, str, str], digest: str, source: str) -> bool:
    sop, study, series, sop_class = uids
    item = Received(sop or f"nouid-{digest}", study, series, sop_class, source, path, digest)
    return queue.enqueue(item)


def receive_bytes(queue: PacsQueue, settings: Settings, data: bytes, source: str) -> tuple[bool, str]:
    """Write an arrived instance to the incoming folder and queue it. Returns (queued, SOP Instance UID).

    Only the header is read here (no pixels): a malformed instance is still queued, so the intake
    refuses it with its reason like an upload. Bytes that are no DICOM at all raise TriageError."""
    uids = _header(io.BytesIO(data))
    digest = hashlib.sha256(data).hexdigest()
    sop = uids[0] or f"nouid-{digest}"  # still queued: the intake gives the reader-facing reason
    if queue.known(sop):
        log.info("pacs: instance %s already received, not queued again", sop)
        return False, sop
    path = write_atomic(incoming_dir(settings), f"{digest}.dcm", data)
    return _queue_file(queue, path, uids, digest, source), sop


def receive_file(queue: PacsQueue, settings: Settings, received: Path, source: str) -> tuple[bool, str]:
    """Queue an instance that is already a file (pynetdicom's chunked C-STORE temp file).

    The file is hashed and copied into the incoming folder in chunks (moved when on the same file
    system), so memory use does not grow with the instance's size; the header alone is parsed.
    Returns (queued, SOP Instance UID). The caller's file is left where it was unless moved."""
    received = Path(received)
    uids = _header(received)
    with open(received, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    sop = uids[0] or f"nouid-{digest}"
    if queue.known(sop):
        log.info("pacs: instance %s already received, not queued again", sop)
        return False, sop
    folder = incoming_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}.dcm"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    os.close(fd)
    try:
        try:
            os.replace(received, tmp)  # same file system: a rename, no copy at all
        except OSError:
            shutil.copyfile(received, tmp)  # streamed in chunks (sendfile on Linux)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return _queue_file(queue, path, uids, digest, source), sop


def process_pending(
    service, worklist, queue: PacsQueue, send: bool = False, limit: int = 2000, settle_s: float = 0.0
) -> int:
    """Analyse queued instances series by series through the upload intake; with ``send`` queue one
    SEG / SC / SR set per analysed series.

    ``settle_s``: a series whose latest instance arrived less than this long ago is left for a later
    pass (a C-STORE sender is still sending it), so a series is analysed, and its results built, whole.
    Returns how many instances were finished (analysed or refused). No usable model leaves the
    queue as it is (analysed once a model is promoted)."""
    groups: dict[str, list[sqlite3.Row]] = defaultdict(list)
    for row in queue.pending(limit):
        groups[row["series_instance_uid"] or f"instance:{row['sop_instance_uid']}"].append(row)
    now = time.time()
    done = 0
    for members in groups.values():
        if settle_s > 0 and now - max(r["received_at"] for r in members) < settle_s:
            continue
        try:
            done += _process_group(service, worklist, queue, members, send)
        except ModelNotFoundError as exc:
            queue.set_state("analyse", "waiting", str(exc))
            return done
        except Exception as exc:  # an unexpected fault: counted, retried, then set aside with its files
            reason = f"analysis failed ({type(exc).__name__}: {exc})"
            log.exception("pacs: analysing a series of %d instances failed", len(members))
            for row in members:
                sop = row["sop_instance_uid"]
                state = queue.attempt_failed(sop, reason)
                queue.event(
                    "analyse", "error", f"instance {sop}: {reason}" + (" - set aside" if state == "failed" else "")
                )
    if done:
        queue.set_state("analyse", "ok", f"{done} instances finished in the last pass")
    return done


def _process_group(service, worklist, queue: PacsQueue, members: list[sqlite3.Row], send: bool) -> int:
    """Analyse the queued instances of one series (or one loose instance) and finish them together."""
    from triage.intake import ingest
    from triage.series import NamedFile, group_files
    from triage.studies import ingest_series

    files, rows, done = [], {}, 0
    for row in members:
        sop = row["sop_instance_uid"]
        path = Path(row["path"] or "")
        try:
            data = path.read_bytes()
        except OSError as exc:
            queue.finish(sop, "failed", f"received file is gone: {exc.strerror or exc}", [], [])
            queue.event("analyse", "error", f"instance {sop}: received file is gone ({path.name})")
            done += 1
            continue
        name = f"{sop}.dcm"  # the display name in the worklist; maps each outcome back to its instance
        files.append(NamedFile(name, data))
        rows[name] = row
    if not files:
        return done
    ok_ids: dict[str, list[str]] = defaultdict(list)
    reasons: dict[str, set[str]] = defaultdict(set)
    result_sets: list = []
    grouped = group_files(files, service.settings, folder_series=False)
    for f in grouped.singles:  # no Study/Series UIDs: analysed one by one, as a loose upload
        for r in ingest(service, worklist, f.data, f.name):
            (ok_ids[f.name].append(r.scan_id) if r.ok else reasons[f.name].add(r.error))
    for name, why in grouped.refused:
        reasons[name].add(why)
    for series in grouped.series:
        outcomes = ingest_series(service, worklist, series)
        for o in outcomes:
            if o.status == "rejected":
                reasons[o.file].add(o.reason)
            else:  # accepted, or already in the worklist from an earlier send
                ok_ids[o.file].append(o.scan_id)
        if send:
            result_sets.append(_write_series_results(service.settings, worklist, series, ok_ids, queue))
    outcomes_by_name = {
        name: Outcome(row["sop_instance_uid"], "analysed", "", tuple(dict.fromkeys(ok_ids[name])))
        if ok_ids.get(name)
        else Outcome(row["sop_instance_uid"], "rejected", "; ".join(sorted(reasons[name])) or "refused")
        for name, row in rows.items()
    }
    sets = [s for s in result_sets if s is not None]
    # One transaction: the instances are marked done together with the first result set (if any).
    queue.finish_many(list(outcomes_by_name.values()), sets[0][1] if sets else [], sets[0][0] if sets else "")
    for key, objects in sets[1:]:
        queue.finish_many([], objects, key)
    for name, o in outcomes_by_name.items():
        if o.status == "rejected":
            queue.event("intake", "info", f"instance {o.sop_instance_uid} refused: {o.reason}")
        Path(rows[name]["path"]).unlink(missing_ok=True)
    return done + len(outcomes_by_name)


def _write_series_results(settings: Settings, worklist, series, ok_ids: dict, queue: PacsQueue):
    """Build the series' SEG, SC and SR from its analysed slices (as stored in the worklist) and write
    them to the outbox folder. Returns (result key, [(kind, uid, path)]) or None when nothing is sent."""
    import cv2
    import numpy as np
    import pydicom

    from triage.pacs_results import SeriesFindings, SliceFinding, build_results
    from triage.studies import summarize_series

    slices, cases, sources = [], [], {}
    for s in series.slices:  # stack order
        if s.scan.scan_id not in ok_ids.get(s.file_name, ()):
            continue
        if s.scan.frame is not None:
            queue.event("send", "info", f"series {series.info.description or ''}: multi-frame source, no results sent")
            return None
        case = worklist.get(s.scan.scan_id)
        if case is None:
            continue
        if s.file_name not in sources:
            sources[s.file_name] = pydicom.dcmread(io.BytesIO(s.data), force=True)
        mask = np.zeros(s.scan.shape, bool)
        if case.mask_path:
            stored = cv2.imread(case.mask_path, cv2.IMREAD_GRAYSCALE)
            if stored is not None and stored.shape == mask.shape:
                mask = stored > 0
        cases.append(case)
        slices.append(
            SliceFinding(
                source=sources[s.file_name],
                pixels=s.scan.pixels,
                mask=mask,
                label=case.label,
                probs=case.probs,
                risk=case.risk,
                flags=case.flags,
                area_px=case.tumor_area_px,
                area_mm2=case.tumor_area_mm2,
            )
        )
    if not slices:
        return None
    summary = summarize_series(cases, worklist.get_series(series.info.series_key))
    key = max(cases, key=lambda c: c.risk)
    versions = {"classifier": key.classifier_version, "segmenter": key.segmenter_version}
    findings = SeriesFindings(tuple(slices), versions, summary.volume_ml)
    objects, problems = build_results(findings)
    for problem in problems:
        queue.event("send", "error", f"series result {findings.result_key}: {problem}")
    out = []
    for obj in objects:
        buf = io.BytesIO()
        obj.dataset.save_as(buf, enforce_file_format=True)
        path = write_atomic(outbox_dir(settings), f"{obj.sop_instance_uid}.dcm", buf.getvalue())
        out.append((obj.kind, obj.sop_instance_uid, path))
    return findings.result_key, out


def flush_outbox(queue: PacsQueue, sender, limit: int = 100, now: float | None = None) -> tuple[int, int]:
    """Store due result objects with ``sender.store(bytes)``. Returns (sent, failed this pass).

    A failure schedules the object's next try with back-off and stops the pass; no object is tried
    again before that time (the PACS is most likely down: the others wait instead of failing one by
    one). Objects are never dropped: they stay pending until stored."""
    sent = failed = 0
    clock = time.time() if now is None else now
    if clock < float(queue.get_cursor("send:retry_at") or 0):
        return 0, 0  # the PACS failed recently: everything waits for the back-off
    for item in queue.due(now=now, limit=limit):
        try:
            data = item.path.read_bytes()
        except OSError as exc:
            queue.send_failed(item.id, f"result file missing: {exc}")
            failed += 1
            continue
        try:
            sender.store(data)
        except Exception as exc:
            delay = queue.send_failed(item.id, str(exc))
            queue.set_cursor("send:retry_at", str(clock + delay))
            queue.event(
                "send", "error", f"storing {item.kind} for {item.source_sop_uid} failed: {exc}; retry in {delay:.0f} s"
            )
            queue.set_state("send", "down", str(exc))
            failed += 1
            break
        queue.sent(item.id)
        sent += 1
    if sent:
        queue.set_state("send", "ok", f"{sent} result objects stored in the last pass")
    return sent, failed
