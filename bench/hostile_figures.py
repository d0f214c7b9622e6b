"""Issue 22 figures: every hostile input and storage fault through the app's own paths.

1. Inputs: every file of ``tests.hostile_corpus`` (``corpus_specs`` and the full-size ``bomb_specs``)
   uploaded through the New scans path (``ui.uploads.receive_and_process``: pending queue, decode
   time limit, pixel budget), and every hostile mask (``mask_specs``) sent as the ground-truth mask
   of a valid slice. Counted: inputs tried, crashes (an exception out of the upload function),
   internal errors (a row saying "internal error"), cases lost (an input that should be accepted
   and is not in the worklist, or an "accepted" row without its case).
2. Faults: a read-only data folder, a database of garbage bytes, a truncated database, a full disk
   (a 16 MB tmpfs; root only), a database write-locked by another process for 30 s and a truncated
   active classifier. Under each, every reader page is run through streamlit's AppTest (a raw error
   page = ``at.exception``) and a two-file upload is tried (lost = an accepted row without a case).

Peak memory per input is ``bench/hostile_memory.py`` (one fresh process per input); this script
prints its own process's peak RSS only as a bound for the whole run (decodes run in worker
processes under the time limit and are not in it).

    nice -n 10 python bench/hostile_figures.py            # active models from weights/
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))

PAGES = ("views/worklist.py", "views/new_scans.py", "views/case_review.py", "views/model.py")


def run_inputs(data: Path, weights: Path) -> dict:
    from tests import hostile_corpus as hc
    from triage.config import get_settings
    from triage.service import TriageService
    from triage.ui.uploads import receive_and_process
    from triage.worklist import Worklist

    service = TriageService(get_settings(data_dir=data, weights_dir=weights))
    wl = Worklist(service.settings.db_path)
    tried = crashes = internal = lost = 0
    slowest = ("", 0.0)
    specs = [*hc.corpus_specs(), *hc.bomb_specs()]
    for n, spec in enumerate(specs):
        tried += 1
        data_bytes = spec.make()
        # Each input on a worklist of its own: the DICOM variants share one SOPInstanceUID, and a
        # second slice under a stored UID is refused by design (not a loss).
        wl = Worklist(data / f"wl-{n}.sqlite3")
        t = time.perf_counter()
        try:
            rows = receive_and_process([(spec.upload_name, data_bytes)], service, wl)
        except Exception as exc:  # the figure to report
            crashes += 1
            print(f"  CRASH {spec.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        took = time.perf_counter() - t
        slowest = max(slowest, (spec.name, took), key=lambda x: x[1])
        internal += sum("internal error" in r["reason"] for r in rows)
        kept = [r for r in rows if r["status"] in ("accepted", "already in worklist")]
        lost += sum(wl.get(r["scan_id"]) is None for r in kept)
        if spec.expectation == hc.OK and not kept:
            lost += 1
            print(f"  LOST {spec.name}: {[r['reason'] for r in rows][:2]}", file=sys.stderr)
    masks = hc.mask_specs()
    for i, spec in enumerate(masks):
        tried += 1
        image = hc.encode(hc.Image.fromarray(hc.fake_brain(128, seed=5000 + i)), "PNG")
        wl = Worklist(data / f"wl-mask-{i}.sqlite3")
        try:
            rows = receive_and_process(
                [(f"mcase{i}.png", image)], service, wl, masks=[(f"mcase{i}_mask.png", spec.make())]
            )
        except Exception as exc:
            crashes += 1
            print(f"  CRASH mask {spec.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        internal += sum("internal error" in r["reason"] for r in rows)
        if not any(r["status"] == "accepted" and wl.get(r["scan_id"]) for r in rows):
            lost += 1  # the slice itself must be kept whatever its mask
            print(f"  LOST mask case {spec.name}: {rows}", file=sys.stderr)
    return {
        "tried": tried,
        "files": len(specs),
        "masks": len(masks),
        "crashes": crashes,
        "internal": internal,
        "lost": lost,
        "slowest": slowest,
    }


# ----- faults -----------------------------------------------------------------------------------


def _seed(data: Path, weights: Path) -> str:
    from tests import hostile_corpus as hc
    from triage.config import get_settings
    from triage.service import TriageService
    from triage.ui.uploads import process_uploads
    from triage.worklist import Worklist

    service = TriageService(get_settings(data_dir=data, weights_dir=weights))
    png = [(f"seed{i}.png", hc.encode(hc.Image.fromarray(hc.fake_brain(128, seed=900 + i)), "PNG")) for i in range(12)]
    rows = process_uploads(png, service, Worklist(service.settings.db_path))
    return rows[0]["scan_id"]


def _pages(case_id: str) -> tuple[int, int]:
    """(page runs, runs ending in a raw error page) over every reader page."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    runs = raw = 0
    for page in PAGES:
        st.cache_resource.clear()
        at = AppTest.from_file(str(REPO_DIR / "app.py"), default_timeout=180)
        at.session_state["selected_case"] = case_id
        at.run()
        if page != PAGES[0] and not at.exception:
            at.switch_page(page).run()
        runs += 1
        if at.exception:
            raw += 1
            print(f"  RAW ERROR PAGE {page}: {at.exception[0].message[:200]}", file=sys.stderr)
    return runs, raw


def _upload_lost(data: Path, weights: Path) -> tuple[int, str]:
    """(accepted rows without a case, the first row's status/reason) of a two-file upload now."""
    from tests import hostile_corpus as hc
    from triage.config import get_settings
    from triage.service import TriageService
    from triage.ui.uploads import receive_and_process
    from triage.worklist import Worklist

    service = TriageService(get_settings(data_dir=data, weights_dir=weights))
    wl = Worklist(service.settings.db_path)
    files = [(f"late{i}.png", hc.encode(hc.Image.fromarray(hc.fake_brain(128, seed=950 + i)), "PNG")) for i in (0, 1)]
    rows = receive_and_process(files, service, wl)
    lost = 0
    for r in rows:
        if r["status"] == "accepted":
            try:
                lost += wl.get(r["scan_id"]) is None
            except Exception:
                lost += 1
    return lost, f"{rows[0]['status']}: {rows[0]['reason'][:80]}"


@contextlib.contextmanager
def _mounted(args: list[str], target: Path):
    subprocess.run(args, check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)


def run_faults(root: Path, weights: Path) -> list[tuple[str, int, int, int, str]]:
    out = []
    is_root = os.geteuid() == 0

    def one(name: str, data: Path, case_id: str, fault) -> None:
        os.environ["TRIAGE_DATA_DIR"] = str(data)
        os.environ["TRIAGE_WEIGHTS_DIR"] = str(fault_weights.get(name, weights))
        with fault():
            runs, raw = _pages(case_id)
            lost, first = _upload_lost(data, fault_weights.get(name, weights))
        out.append((name, runs, raw, lost, first))
        print(f"  {name}: {raw}/{runs} raw error pages, {lost} lost; upload {first}", file=sys.stderr)

    fault_weights: dict[str, Path] = {}

    def fresh(name: str) -> tuple[Path, str]:
        data = root / name / "data"
        data.mkdir(parents=True)
        return data, _seed(data, weights)

    if is_root:
        data, cid = fresh("read-only")
        one("read-only data folder", data, cid, lambda: _ro(data))
    data, cid = fresh("garbage")
    db = data / "worklist.sqlite3"
    db.write_bytes(os.urandom(db.stat().st_size))
    for side in ("-wal", "-shm"):
        Path(str(db) + side).unlink(missing_ok=True)
    one("database of garbage bytes", data, cid, contextlib.nullcontext)
    data, cid = fresh("truncated")
    db = data / "worklist.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with db.open("r+b") as fh:
        fh.truncate(db.stat().st_size // 2)
    one("truncated database", data, cid, contextlib.nullcontext)
    if is_root:
        disk = root / "disk"
        disk.mkdir()
        with _mounted(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], disk):
            data = disk / "data"
            data.mkdir()
            cid = _seed(data, weights)
            filler = disk / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * 65536)
            os.close(fd)
            one("full disk (16 MB tmpfs)", data, cid, contextlib.nullcontext)
    data, cid = fresh("locked")
    one("database write-locked 30 s by another process", data, cid, lambda: _locked(data / "worklist.sqlite3", 30))
    data, cid = fresh("weights")
    broken = root / "broken-weights"
    shutil.copytree(weights, broken, ignore=shutil.ignore_patterns("*.onnx"))
    from triage.models import active_version

    st_file = broken / "classifier" / active_version(broken, "classifier") / "model.safetensors"
    st_file.write_bytes(st_file.read_bytes()[: st_file.stat().st_size // 3])
    fault_weights["truncated active classifier"] = broken
    one("truncated active classifier", data, cid, contextlib.nullcontext)
    return out


@contextlib.contextmanager
def _ro(folder: Path):
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


LOCKER = (
    "import sqlite3, sys, time\n"
    "c = sqlite3.connect(sys.argv[1], isolation_level=None); c.execute('BEGIN EXCLUSIVE')\n"
    "print('locked', flush=True); time.sleep(float(sys.argv[2])); c.execute('COMMIT')\n"
)


@contextlib.contextmanager
def _locked(db: Path, seconds: float):
    proc = subprocess.Popen([sys.executable, "-c", LOCKER, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    try:
        yield
    finally:
        proc.wait(timeout=seconds + 60)


def main() -> int:
    import logging

    logging.disable(logging.WARNING)  # the rejections log a line each; the table is the output
    weights = Path(os.environ.get("TRIAGE_WEIGHTS_DIR", REPO_DIR / "weights"))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="figures-") as tmp:
        inputs = run_inputs(Path(tmp) / "inputs", weights)
        faults = run_faults(Path(tmp) / "faults", weights)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nweights {weights} · load average {os.getloadavg()[0]:.1f} · {time.perf_counter() - started:.0f} s\n")
    print("| figure | value |")
    print("|---|---|")
    print(f"| hostile inputs tried | {inputs['tried']} ({inputs['files']} files, {inputs['masks']} masks) |")
    print(f"| crashes (exception out of the upload path) | {inputs['crashes']} |")
    print(f"| rows ending in 'internal error' | {inputs['internal']} |")
    print(f"| cases lost | {inputs['lost']} |")
    print(f"| slowest input | {inputs['slowest'][0]}, {inputs['slowest'][1]:.1f} s |")
    print(f"| peak RSS of this whole run (decodes in workers not included) | {peak:.0f} MB |")
    print(f"| storage/model faults tried | {len(faults)} |")
    print(f"| page runs ending in a raw error page | {sum(f[2] for f in faults)} of {sum(f[1] for f in faults)} |")
    print(f"| uploads lost under a fault | {sum(f[3] for f in faults)} |")
    print("\n| fault | page runs | raw error pages | uploads lost | a two-file upload under the fault |")
    print("|---|---|---|---|---|")
    for name, runs, raw, lost, first in faults:
        print(f"| {name} | {runs} | {raw} | {lost} | {first.replace('|', '/')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
