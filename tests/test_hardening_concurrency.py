"""Issue #7 hardening, part 3: concurrent sessions and processes lose nothing.

Two 'sessions' (threads) share one TriageService and one worklist file: each uploads 10
slices through ``intake.ingest`` and reviews the other session's cases. Grad-CAM on the
shared model gives each caller the heatmap of its own target class. Two processes writing
the same worklist database at once lose nothing. Run with ``pytest -s`` for the figures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import draw_synthetic_slice
from tests.model_fixtures import make_tiny_weights
from triage.config import get_settings
from triage.intake import ingest
from triage.records import CLASSES
from triage.service import TriageService
from triage.worklist import Worklist

# Slow tier: real models, training runs, subprocesses or full pages (`pytest -m 'not slow'` skips them).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 600  # shared, busy machine


def png_bytes(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> TriageService:
    root = tmp_path_factory.mktemp("concurrency")
    make_tiny_weights(root / "w")
    return TriageService(get_settings(weights_dir=root / "w", data_dir=root / "data", torch_threads=1))


def run_threads(targets: list) -> list[BaseException]:
    errors: list[BaseException] = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for th in threads:
        th.start()
    for th in threads:
        th.join(TIMEOUT_S)
    assert not any(th.is_alive() for th in threads), "a session hung"
    return errors


def review_label(k: int) -> str:
    return CLASSES[(k * 3 + 1) % len(CLASSES)]


def test_two_sessions_upload_and_review_each_other(service):
    wl = Worklist(service.settings.db_path)
    uploads = {}
    for s, session in enumerate(("A", "B")):
        uploads[session] = []
        for k in range(10):
            img, _ = draw_synthetic_slice(shape=(144, 128), seed=1000 * (s + 1) + k, tumor=k % 2 == 0)
            uploads[session].append((f"{session}_{k}.png", png_bytes(img)))
    ids: dict[str, list[str]] = {"A": [], "B": []}
    uploaded = threading.Barrier(2, timeout=TIMEOUT_S)
    reviews: list[tuple[str, str, str]] = []  # (scan_id, reviewer, note)
    reviews_lock = threading.Lock()

    def session(me: str, other: str):
        def run():
            for name, data in uploads[me]:
                (r,) = ingest(service, wl, data, name)
                assert r.ok, r.error
                ids[me].append(r.scan_id)
            uploaded.wait()
            # interleave: review the other session's cases while it reviews ours
            for k, sid in enumerate(ids[other]):
                for rnd in range(2):
                    label = review_label(k + rnd)
                    sign_off = rnd == 1 and k % 2 == 0
                    note = f"{me} round {rnd}"
                    wl.review(sid, f"dr_{me}", label=label, note=note, sign_off=sign_off)
                    with reviews_lock:
                        reviews.append((sid, f"dr_{me}", note))

        return run

    errors = run_threads([session("A", "B"), session("B", "A")])
    assert not errors, errors
    assert wl.integrity_check() == "ok"
    all_ids = ids["A"] + ids["B"]
    assert len(set(all_ids)) == 20
    cases = {c.scan_id: c for c in wl.list_cases()}
    lost_cases = set(all_ids) - set(cases)
    assert not lost_cases
    audit = wl.audit()
    lost_reviews = 0
    for sid, reviewer, note in reviews:
        if not any(
            a["scan_id"] == sid and a["actor"] == reviewer and a["field"] == "note" and a["new_value"] == note
            for a in audit
        ):
            lost_reviews += 1
    assert lost_reviews == 0
    for session_me, other in (("A", "B"), ("B", "A")):
        for k, sid in enumerate(ids[other]):
            c = cases[sid]
            assert c.reviewer == f"dr_{session_me}"
            assert c.reviewed_label == review_label(k + 1)
            assert c.note == f"{session_me} round 1"
            expected_status = (
                "signed_off" if k % 2 == 0 else ("corrected" if review_label(k + 1) != c.label else "confirmed")
            )
            assert c.review_status == expected_status, (k, c.review_status)
            notes = [a["new_value"] for a in audit if a["scan_id"] == sid and a["field"] == "note"]
            assert notes == [f"{session_me} round 0", f"{session_me} round 1"]  # both reviews, in order
    added = [a for a in audit if a["action"] == "added"]
    assert len(added) == 20
    print(
        f"\nthreads: 2 sessions x 10 uploads + {len(reviews)} reviews on one worklist: "
        f"{len(cases)} cases, lost cases {len(lost_cases)}, lost reviews {lost_reviews}"
    )


def test_gradcam_on_shared_model_is_per_caller(service):
    img, _ = draw_synthetic_slice(shape=(160, 160), seed=7)
    (result,) = service.analyze_bytes(png_bytes(img), "cam.png")
    assert result.ok, result.error
    targets = ("glioma", "pituitary")
    reference = {t: service.explain(result, t).heatmap for t in targets}
    assert not np.allclose(reference[targets[0]], reference[targets[1]]), "targets give the same map"
    got: dict[str, list[np.ndarray]] = {t: [] for t in targets}

    def worker(target: str):
        def run():
            for _ in range(6):
                exp = service.explain(result, target)
                assert exp.target_class == target
                got[target].append(exp.heatmap)

        return run

    errors = run_threads([worker(t) for t in targets])
    assert not errors, errors
    mismatches = sum(not np.allclose(h, reference[t], atol=1e-5) for t in targets for h in got[t])
    assert all(len(got[t]) == 6 for t in targets)
    assert mismatches == 0
    print(
        f"\nGrad-CAM: 2 threads x 6 heatmaps ({', '.join(targets)}) on the shared model: "
        f"{mismatches} differ from the single-threaded result"
    )


WRITER = r"""
import sys, time
from pathlib import Path
from triage.worklist import Worklist

db, tag, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
wl = Worklist(db)
wl.count()  # schema ready before the start signal
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
for i in range(n):
    sid = f"{tag}-{i}"
    wl.add_case({"scan_id": sid, "name": sid + ".png", "label": "glioma", "risk": (i % 10) / 10,
                 "p_no_tumor": 0.1, "p_glioma": 0.7, "p_meningioma": 0.1, "p_pituitary": 0.1,
                 "thumbnail": bytes(1000)}, actor=tag)
    wl.review(sid, "dr_" + tag, label="meningioma", note=f"by {tag}")
    wl.log_rejection(f"bad-{tag}-{i}.png", "not a readable image")
print("done", flush=True)
"""


def test_two_processes_same_worklist(tmp_path):
    db = tmp_path / "shared.sqlite3"
    go = tmp_path / "go"
    Worklist(db).count()  # create the schema once
    n = 60
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), tag, str(n), str(go)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("p1", "p2")
    ]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()[-2000:]
        go.touch()
        t0 = time.perf_counter()
        outs = [p.communicate(timeout=TIMEOUT_S) for p in procs]
        elapsed = time.perf_counter() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and out.strip() == "done", err[-3000:]
    wl = Worklist(db)
    assert wl.integrity_check() == "ok"
    cases = {c.scan_id: c for c in wl.list_cases()}
    expected = {f"{tag}-{i}" for tag in ("p1", "p2") for i in range(n)}
    lost = expected - set(cases)
    assert not lost
    assert all(cases[s].reviewed_label == "meningioma" and cases[s].note == f"by {s.split('-')[0]}" for s in expected)
    audit = wl.audit()
    assert sum(a["action"] == "added" for a in audit) == 2 * n
    assert sum(a["action"] == "review" and a["field"] == "note" for a in audit) == 2 * n
    assert len(wl.rejections(limit=10_000)) == 2 * n
    print(
        f"\nprocesses: 2 writers x {n} (add + review + rejection) in {elapsed:.1f} s: "
        f"{len(cases)}/{2 * n} cases, lost {len(lost)}, audit rows {len(audit)}"
    )
