"""The Ray engine of `analyze` (issue 21) on a real local Ray cluster bound to 127.0.0.1: the same
rows as the local engine, a worker killed mid-batch, resume from a partial output, import of the
results into the worklist, and a few real BRISC slices with the shipped weights."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest

from tests.conftest import REPO_DIR, draw_synthetic_slice
from tests.model_fixtures import make_tiny_weights
from triage.batch import RESULT_COLUMNS, BatchJob, import_results, iter_inputs, run_local

pytestmark = pytest.mark.slow  # a Ray cluster, subprocesses

N_SLICES = 40
BUSY_ACTOR = "MapWorker(MapBatches(Analyzer)).submit"  # the process title of an actor running a batch


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Tiny models and a data folder, through the TRIAGE_* variables the CLI and the driver read."""
    root = tmp_path_factory.mktemp("ray")
    make_tiny_weights(root / "w")
    old = {k: os.environ.get(k) for k in ("TRIAGE_WEIGHTS_DIR", "TRIAGE_DATA_DIR", "TRIAGE_TORCH_THREADS")}
    os.environ.update(TRIAGE_WEIGHTS_DIR=str(root / "w"), TRIAGE_DATA_DIR=str(root / "data"), TRIAGE_TORCH_THREADS="1")
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def slices(env):
    """A folder of synthetic slices (half with a tumour blob), one text file and one empty file."""
    folder = env / "in"
    folder.mkdir()
    for i in range(N_SLICES):
        img, _ = draw_synthetic_slice(shape=(224, 192), seed=i, tumor=i % 2 == 0)
        cv2.imwrite(str(folder / f"s{i:03d}.png"), img)
    (folder / "notes.png").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def files(slices):
    return list(iter_inputs([str(slices)]))


@pytest.fixture(scope="module")
def reference(env, files):
    """The local engine's rows, keyed by (path, frame)."""
    out = env / "local.csv"
    run_local(BatchJob(out=out, masks_dir=env / "masks_local", quiet=True), files)
    return read_rows(out)


@pytest.fixture(scope="module")
def cluster(env):
    """A 2-CPU local cluster started the way the CLI starts one (no address)."""
    from triage.batch_ray import connect

    assert connect(None)
    import ray

    yield ray
    ray.shutdown()


def read_rows(path: Path) -> dict:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    keyed = {(r["path"], r["frame"]): r for r in rows}
    assert len(keyed) == len(rows), "a file appears twice"
    return keyed


def assert_same_rows(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, w in want.items():
        g = got[key]
        for c in RESULT_COLUMNS:
            if c in ("ms", "mask_path"):
                continue
            if w[c] and (c.startswith("p_") or c in ("risk", "ood_score", "tumor_area_mm2")):
                assert abs(float(g[c]) - float(w[c])) <= 1e-5, (key, c, g[c], w[c])
            else:
                assert g[c] == w[c], (key, c, g[c], w[c])
        assert bool(g["mask_path"]) == bool(w["mask_path"]) and Path(g["mask_path"]).name == Path(w["mask_path"]).name


def test_local_cluster_listens_on_loopback_only(cluster):
    me = psutil.Process()
    listening = [
        (p.name(), c.laddr.ip)
        for p in me.children(recursive=True)
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening, "no Ray process is listening"
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for _, ip in listening), listening
    assert cluster.cluster_resources()["CPU"] == (os.cpu_count() or 1)


def test_ray_rows_equal_local_rows(cluster, env, files, reference):
    from triage.batch_ray import run_ray

    out = env / "ray.csv"
    summary = run_ray(BatchJob(out=out, masks_dir=env / "masks_ray", batch_size=4, quiet=True), files, workers=2)
    rows = read_rows(out)
    assert_same_rows(rows, reference)
    assert summary.ok == N_SLICES and summary.rejected == 2 and not summary.missing
    rejected = {Path(p).name: r["error"] for (p, _), r in rows.items() if r["status"] == "rejected"}
    assert set(rejected) == {"notes.png", "empty.png"} and all(rejected.values())
    for r in rows.values():  # every mask named in the CSV is on disk and equals the local engine's
        if r["mask_path"]:
            local = env / "masks_local" / Path(r["mask_path"]).name
            assert Path(r["mask_path"]).read_bytes() == local.read_bytes()


def test_killed_worker_loses_and_duplicates_no_row(cluster, env, files, reference):
    from triage.batch_ray import run_ray

    killed: list[int] = []
    done = threading.Event()

    def kill_a_busy_actor():
        # SIGKILL the first actor process caught running a batch (its title ends in .submit).
        me = psutil.Process()
        while not done.is_set() and not killed:
            for p in me.children(recursive=True):
                try:
                    if BUSY_ACTOR in " ".join(p.cmdline()):
                        p.kill()
                        killed.append(p.pid)
                        break
                except psutil.Error:
                    continue
            time.sleep(0.002)

    killer = threading.Thread(target=kill_a_busy_actor, daemon=True)
    killer.start()
    out = env / "killed.csv"
    try:
        job = BatchJob(out=out, masks_dir=env / "masks_killed", batch_size=2, quiet=True)
        summary = run_ray(job, files, workers=2)
    finally:
        done.set()
        killer.join(5)
    assert killed, "no actor was caught running a batch"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    rows = read_rows(out)  # raises on a duplicated file
    assert_same_rows(rows, reference)
    assert not summary.missing and summary.ok + summary.rejected == len(reference)


def test_resume_analyses_only_what_the_partial_output_lacks(cluster, env, files, reference):
    from triage.batch_ray import run_ray

    out = env / "resumed.csv"
    lines = (env / "local.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    out.write_text("".join(lines[:21]) + lines[21][:25], encoding="utf-8")  # 20 rows and a cut one
    job = BatchJob(out=out, masks_dir=env / "masks_resumed", resume=True, batch_size=4, quiet=True)
    summary = run_ray(job, files, workers=2)
    # The cut line is dropped, and so is the last complete file (its rows may be incomplete).
    assert summary.skipped == 19 and summary.ok + summary.rejected == len(files) - 19
    assert_same_rows(read_rows(out), reference)
    again = run_ray(job, files, workers=1)
    assert again.skipped == len(files) - 1  # nothing but the last file is done again
    assert_same_rows(read_rows(out), reference)


def test_import_results_fills_the_worklist_once(cluster, env, files, reference):
    from triage.config import get_settings
    from triage.intake import ingest
    from triage.service import TriageService
    from triage.worklist import Worklist

    results = env / "ray.csv"  # written by test_ray_rows_equal_local_rows
    if not results.exists():
        pytest.skip("needs the Ray run of test_ray_rows_equal_local_rows")
    settings = get_settings(data_dir=env / "wl")
    worklist = Worklist(settings.db_path)
    uploaded = next(f for f in files if f.name.startswith("s"))
    ingest(TriageService(settings), worklist, uploaded.read_bytes(), uploaded.name)  # one came as an upload
    first = import_results([results], settings)
    assert (first.added, first.already, first.rejected, first.skipped) == (N_SLICES - 1, 1, 2, [])
    second = import_results([results], settings)
    assert (second.added, second.already) == (0, N_SLICES)
    assert worklist.count() == N_SLICES
    for (path, _), row in reference.items():
        if row["status"] != "ok":
            continue
        case = worklist.get(row["scan_id"])
        assert case.label == row["label"] and abs(case.risk - float(row["risk"])) < 1e-9
        assert abs(case.prob("glioma") - float(row["p_glioma"])) < 1e-9
        assert case.classifier_version == "tiny" and case.thumbnail
        stored = Path(case.stored_path)
        assert stored.parent == settings.scans_dir and stored.read_bytes() == Path(path).read_bytes()
        if Path(path) != uploaded:
            assert (case.mask_path is not None) == bool(row["mask_path"])


def test_cli_ray_engine_and_no_ray_on_the_local_path(env, slices, tmp_path):
    some = tmp_path / "in"
    some.mkdir()
    for f in sorted(slices.glob("s00*.png"))[:4]:
        shutil.copy(f, some / f.name)
    out = tmp_path / "cli.parquet"
    r = subprocess.run(
        [sys.executable, "-m", "triage", "analyze", str(some), "--out", str(out), "--engine", "ray", "--workers", "1"]
        + ["--quiet"],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "4 files: 4 scans analysed, 0 rejected" in r.stdout
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert tuple(table.column_names) == RESULT_COLUMNS and table.num_rows == 4
    code = (
        "import sys; from triage.cli import main; "
        f"rc = main(['analyze', {str(some)!r}, '--out', {str(tmp_path / 'local.csv')!r}, '--quiet']); "
        "assert rc == 0; assert 'ray' not in sys.modules, 'the local engine imported ray'; print('no ray')"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO_DIR, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "no ray" in r.stdout, r.stderr[-3000:]


def test_real_brisc_slices_with_the_shipped_weights(cluster, shared_data, tmp_path, monkeypatch):
    from triage.batch_ray import run_ray

    monkeypatch.setenv("TRIAGE_WEIGHTS_DIR", str(REPO_DIR / "weights"))
    with (shared_data / "brisc2025" / "manifest.csv").open(newline="") as fh:
        test_rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    picked = []
    for label in ("glioma", "meningioma", "pituitary", "no_tumor"):
        picked += [r for r in test_rows if r["label"] == label][:5]  # 20 slices: 8 were too few to tell
    files = [shared_data / "brisc2025" / r["path"] for r in picked]
    run_local(BatchJob(out=tmp_path / "local.csv", quiet=True), files)
    summary = run_ray(BatchJob(out=tmp_path / "ray.csv", quiet=True), files, workers=1)
    assert summary.ok == len(files) and not summary.missing
    got, want = read_rows(tmp_path / "ray.csv"), read_rows(tmp_path / "local.csv")
    assert_same_rows(got, want)
    labels = np.array([got[(str(f), "")]["label"] for f in files])
    assert (labels == np.array([r["label"] for r in picked])).mean() >= 0.75  # the shipped models, not noise
