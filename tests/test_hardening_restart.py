"""Issue 22, item 16: uploads survive a server crash.

A received batch is written to ``<data>/pending/`` before anything is analysed
(:mod:`triage.pending`) and removed when done; batches a dead process left behind are analysed at
the next start, and files analysed before the crash are not added twice. The last test kills a
real ``streamlit run`` server with SIGKILL in the middle of a 40-file batch sent from a browser,
starts it again, and finds all 40 files in the worklist exactly once.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from tests import hostile_corpus as hc
from tests.conftest import draw_synthetic_slice
from tests.model_fixtures import make_tiny_weights
from triage import pending
from triage.config import get_settings
from triage.io import content_id
from triage.service import TriageService
from triage.ui import uploads
from triage.worklist import Worklist

REPO = Path(__file__).resolve().parents[1]


def _png(seed: int) -> bytes:
    return hc.encode(hc.Image.fromarray(hc.fake_brain(128, seed=seed)), "PNG")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return make_tiny_weights(tmp_path_factory.mktemp("restart_w") / "w")


def test_a_batch_is_on_disk_before_analysis_and_gone_after(weights, tmp_path, monkeypatch) -> None:
    service = TriageService(get_settings(data_dir=tmp_path / "data", weights_dir=weights))
    wl = Worklist(service.settings.db_path)
    seen: list[int] = []
    real = uploads.process_uploads

    def spy(files, *args, **kwargs):
        seen.append(pending.pending_count(service.settings.data_dir))  # stored before the analysis starts
        return real(files, *args, **kwargs)

    monkeypatch.setattr(uploads, "process_uploads", spy)
    rows = uploads.receive_and_process([("a.png", _png(1)), ("b.png", _png(2))], service, wl)
    assert [r["status"] for r in rows] == ["accepted", "accepted"]
    assert seen == [1]
    assert pending.pending_count(service.settings.data_dir) == 0
    assert list(pending.pending_root(service.settings.data_dir).iterdir()) == []


def test_a_batch_held_by_a_live_process_is_not_claimed(tmp_path) -> None:
    batch = pending.save_batch(tmp_path, [("a.png", b"x")])
    assert pending.claim_orphans(tmp_path) == []  # its lock is held (by this process)
    batch.close()  # as if the process had died: the kernel drops its lock
    (claimed,) = pending.claim_orphans(tmp_path)
    assert claimed.files() == [("a.png", b"x")]
    claimed.finish()
    assert pending.pending_count(tmp_path) == 0


def test_an_unfinished_save_is_removed_and_never_analysed(tmp_path, monkeypatch) -> None:
    root = pending.pending_root(tmp_path)
    half = root / "20261202T000000000000-dead"
    half.mkdir(parents=True)
    (half / "f00000").write_bytes(b"half")  # the process died before batch.json was written
    os.utime(half, (time.time() - 3600, time.time() - 3600))
    assert pending.claim_orphans(tmp_path) == []
    assert not half.exists()


def test_pending_batches_are_finished_at_the_next_start_exactly_once(weights, tmp_path) -> None:
    service = TriageService(get_settings(data_dir=tmp_path / "data", weights_dir=weights))
    wl = Worklist(service.settings.db_path)
    files = [(f"s{i}.png", _png(10 + i)) for i in range(5)]
    batch = pending.save_batch(service.settings.data_dir, files)
    uploads.process_uploads(files[:2], service, wl)  # analysed before the "crash"
    batch.close()  # the server died here
    report = uploads.recover_pending(service, wl)
    assert (report.batches, report.files, report.accepted, report.known, report.not_added) == (1, 5, 3, 2, 0)
    assert report.message().startswith("5 uploads from before the restart were analysed: 3 added to the worklist")
    assert {c.scan_id for c in wl.list_cases()} == {content_id(d) for _, d in files}
    added = [a["scan_id"] for a in wl.audit() if a["action"] == "added"]
    assert len(added) == len(set(added)) == 5
    assert uploads.recover_pending(service, wl).files == 0  # nothing left for a later start


def test_a_batch_that_cannot_be_analysed_now_waits_for_the_next_start(weights, tmp_path) -> None:
    service = TriageService(get_settings(data_dir=tmp_path / "data", weights_dir=tmp_path / "no-weights"))
    wl = Worklist(service.settings.db_path)
    pending.save_batch(service.settings.data_dir, [("a.png", _png(3))]).close()
    report = uploads.recover_pending(service, wl)
    assert report.kept == 1 and report.files == 0
    assert pending.pending_count(service.settings.data_dir) == 1


# ----- a real server killed mid-batch -------------------------------------------------------------

N_FILES = 40


@pytest.mark.slow
def test_a_server_killed_mid_batch_finishes_it_after_the_restart(tmp_path: Path) -> None:
    be = pytest.importorskip("tests.test_browser_e2e", reason="selenium is not installed")
    if not (Path(be.CHROMIUM).is_file() and Path(be.CHROMEDRIVER).is_file()):
        pytest.skip("chromium/chromedriver not found")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    weights = make_tiny_weights(tmp_path / "weights")
    data = tmp_path / "data"
    slices = []
    for k in range(N_FILES):
        img, _ = draw_synthetic_slice(shape=(384, 352), seed=k, tumor=k % 3 != 0)
        path = tmp_path / "scans" / f"slice_{k:03d}.png"
        path.parent.mkdir(exist_ok=True)
        assert cv2.imwrite(str(path), img)
        slices.append(path)
    ids = {content_id(p.read_bytes()) for p in slices}
    db = data / "worklist.sqlite3"

    def serve(log: Path) -> tuple[subprocess.Popen, str]:
        port = be._free_port()
        env = {**os.environ, "TRIAGE_DATA_DIR": str(data), "TRIAGE_WEIGHTS_DIR": str(weights)}
        env["TRIAGE_TORCH_THREADS"] = "1"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)]
                + ["--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        be._wait_healthy(url, proc, log)
        return proc, url

    def cases() -> int:
        if not db.is_file():
            return 0
        with sqlite3.connect(db, timeout=30) as conn:
            try:
                return conn.execute("SELECT COUNT(*) FROM cases").fetchone()[0]
            except sqlite3.OperationalError:  # the schema is not made yet
                return 0

    log = tmp_path / "server.log"
    driver = None
    proc, url = serve(log)
    try:
        driver = be._browser(tmp_path / "chrome-profile")
        wait = WebDriverWait(driver, be.STEP_TIMEOUT_S)
        driver.get(url + "/new_scans")
        wait.until(be._body_has("Analyse"))
        (field,) = [
            e
            for e in driver.find_elements(By.CSS_SELECTOR, "input[type=file]")
            if e.get_dom_attribute("webkitdirectory") is None
        ][:1]
        field.send_keys("\n".join(str(p) for p in slices))
        wait.until(
            ec.element_to_be_clickable((By.XPATH, f"//button[.//p[normalize-space()='Analyse {N_FILES} files']]"))
        ).click()
        deadline = time.monotonic() + be.STEP_TIMEOUT_S
        while cases() < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the whole server, in the middle of the batch
        proc.wait(timeout=30)
        before = cases()
        assert 3 <= before < N_FILES, f"the kill did not land mid-batch ({before} of {N_FILES} analysed)"
        assert pending.pending_count(data) == 1  # the received batch is still on disk

        proc, url = serve(log)  # the restart
        driver.get(url)  # the first page run starts the recovery
        deadline = time.monotonic() + be.STEP_TIMEOUT_S
        while (cases() < N_FILES or pending.pending_count(data)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert cases() == N_FILES and pending.pending_count(data) == 0
        # A reader opening the app now sees what happened (a page run in the instant between the
        # batch's removal and the report still says "Finishing…": open it again then).
        deadline = time.monotonic() + be.STEP_TIMEOUT_S
        while time.monotonic() < deadline:
            driver.get(url)
            try:
                WebDriverWait(driver, 15).until(be._body_has("uploads from before the restart were analysed"))
                break
            except Exception:
                continue
        text = driver.find_element(By.TAG_NAME, "body").text
        assert f"{N_FILES} uploads from before the restart were analysed" in text, text
        assert f"{N_FILES - before} added to the worklist" in text, text
    except Exception:
        be._dump_failure(driver, tmp_path, log)
        raise
    finally:
        if driver is not None:
            driver.quit()
        be._stop(proc)
    wl = Worklist(db)
    assert {c.scan_id for c in wl.list_cases()} == ids  # every file, each once
    added = [a["scan_id"] for a in wl.audit() if a["action"] == "added"]
    assert sorted(added) == sorted(ids)
    assert wl.rejections() == []
    stored = [p for p in (data / "scans").glob("*.png") if not p.stem.endswith("_mask")]
    assert len(stored) == N_FILES
    print(f"\nserver SIGKILLed after {before}/{N_FILES} cases; after the restart {N_FILES} cases, each once")
