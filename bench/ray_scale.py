#!/usr/bin/env python3
"""The Ray engine against the local engine (issue 21): ``python -m triage analyze`` on a folder of
N slices, with ``--engine local`` and with ``--engine ray --workers 1`` and ``--workers 2``, each
as its own child process (the Ray runs start their own local cluster, as the CLI does).

Builds a temporary folder of N symbolic links to real BRISC 2025 slices (nothing is copied).
Reported per run:

- wall time, process start to exit;
- start-up: process start to the first row in the output (imports, cluster and actor start,
  model load, first batch);
- steady slices/s: rows after the first one over the time from the first row to the last;
- peak RSS: of the CLI process, and of each Ray actor process (``ray::MapWorker...``, sampled
  from /proc every 0.2 s), with the largest sum over all processes of the run.

Then, on paper, 10^6 slices on 1, 10 and 100 nodes of 2 cores (2 single-threaded actors per node)
from the measured 2-worker steady rate and start-up, with the limits that do not scale with the
nodes: the driver writing rows (measured here with ``ResultWriter``) and reading the inputs from
shared storage (mean file size here, over ``--storage-mb-s``, an assumed bandwidth).

Examples:
  python bench/ray_scale.py --n 1000 --write
  python bench/ray_scale.py --n 5000 --write
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
from throughput import build_folder

TARGET_RATIO = 0.85  # Ray with 2 workers at least 85% of the local engine's throughput (issue 21)
ACTOR_TITLE = "ray::MapWorker"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--n", type=int, default=1000, help="slices in the folder (default 1000; the issue asks 1000 and 5000)"
    )
    p.add_argument("--workers", default="1,2", help="Ray pool sizes to run (default 1,2)")
    p.add_argument("--batch-size", type=int, default=16, help="files per model batch (default 16, the CLI's)")
    p.add_argument("--storage-mb-s", type=float, default=125.0, help="assumed shared-storage read MB/s (1 Gbit/s)")
    p.add_argument("--node-hour-usd", type=float, default=0.10, help="assumed price of a 2-core node-hour")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    C.add_common_args(p, threads=False)
    return p.parse_args(argv)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _rows_in(path: Path) -> int:
    try:
        with path.open("rb") as fh:
            return max(0, sum(1 for _ in fh) - 1)
    except OSError:
        return 0


def run(folder: Path, out: Path, engine: str, workers: int | None, batch_size: int, env: dict) -> dict:
    """One CLI run, sampled every 0.2 s: rows written, RSS of every process of the run."""
    cmd = [sys.executable, "-m", "triage", "analyze", str(folder), "--out", str(out), "--quiet"]
    cmd += ["--batch-size", str(batch_size), "--engine", engine]
    if workers:
        cmd += ["--workers", str(workers)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=C.REPO_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    done = threading.Event()
    peak: dict[int, int] = {}  # pid -> largest VmRSS KiB
    own: dict[int, int] = {}  # pid -> largest VmRSS - RssShmem KiB (the object store's shared pages left out)
    titles: dict[int, str] = {}
    first_row = [None]
    peak_total = [0]

    def sample() -> None:
        while not done.is_set():
            total = 0
            for pid in C.descendants(proc.pid):
                rss = C.proc_status_kib(pid, "VmRSS")
                total += rss
                peak[pid] = max(peak.get(pid, 0), rss)
                own[pid] = max(own.get(pid, 0), rss - C.proc_status_kib(pid, "RssShmem"))
                title = _cmdline(pid)  # a worker starts as ray::IDLE and becomes an actor later
                if title.startswith(ACTOR_TITLE) or pid not in titles:
                    titles[pid] = title
            peak_total[0] = max(peak_total[0], total)
            if first_row[0] is None and _rows_in(out) > 0:
                first_row[0] = time.perf_counter() - t0
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    last_row = wall  # the output is complete when the process ends; its last row came just before
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{stderr.decode()[-2000:]}")
    rows = _rows_in(out)
    start = first_row[0] if first_row[0] is not None else wall
    # An actor's peak: the largest VmRSS sampled while it was an actor or before (an idle worker is small).
    actors = [kib for pid, kib in peak.items() if titles.get(pid, "").startswith(ACTOR_TITLE)]
    actors_own = [kib for pid, kib in own.items() if titles.get(pid, "").startswith(ACTOR_TITLE)]
    with out.open(newline="", encoding="utf-8") as fh:
        ms = [float(r["ms"]) for r in csv.DictReader(fh) if r["ms"]]
    return {
        "engine": engine,
        "workers": workers,
        "wall_s": wall,
        "startup_s": start,
        "rows": rows,
        "steady_per_s": (rows - 1) / max(1e-9, last_row - start) if rows > 1 else 0.0,
        "cli_mib": peak.get(proc.pid, 0) / 1024,
        "actor_mib": max(actors) / 1024 if actors else 0.0,
        "actor_own_mib": max(actors_own) / 1024 if actors_own else 0.0,
        # Time per file inside the worker (the CSV ms column: decode + analysis of its batch).
        "worker_ms": sum(ms) / max(1, len(ms)),
        "total_mib": peak_total[0] / 1024,
        "summary": stdout.decode().strip().splitlines()[-1:],
    }


def driver_write_rate(tmp: Path, n: int = 20000) -> float:
    """Rows per second the driver's CSV writer takes (the part of a run that does not scale out)."""
    from triage.batch import RESULT_COLUMNS, OutputRow, ResultWriter

    values = dict.fromkeys(RESULT_COLUMNS, "0.1234")
    values.update(path=str(tmp / "some/folder/brisc2025_test_00001_gl_ax_t1.jpg"), status="ok", flags="uncertain")
    rows = [OutputRow(dict(values, path=f"{values['path']}{i}")) for i in range(n)]
    w = ResultWriter(tmp / "write_rate.csv")
    t = time.perf_counter()
    for i in range(0, n, 16):
        w.write(rows[i : i + 16])
    w.close()
    return n / (time.perf_counter() - t)


def paper_estimate(node_rate: float, startup: float, write_rate: float, read_rate: float, usd: float) -> list[tuple]:
    rows = []
    for nodes in (1, 10, 100):
        compute = nodes * node_rate
        rate = min(compute, write_rate, read_rate)
        limit = "compute" if rate == compute else ("driver writing" if rate == write_rate else "reading")
        wall = startup + 1e6 / rate
        rows.append(
            (
                nodes,
                f"{compute:.0f}",
                f"{rate:.0f}",
                limit,
                f"{wall / 3600:.2f} h" if wall >= 3600 else f"{wall / 60:.1f} min",
                f"{nodes * wall / 3600:.1f}",
                f"{nodes * wall / 3600 * usd:.2f}",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.threads = None
    settings, versions = C.start(args)
    slices = C.select_slices(C.load_brisc(C.brisc_dir(args.data)), args.n, args.seed)
    if not slices:
        C.die("no slices found in the manifest", C.EXIT_NO_DATA)
    pools = [int(w) for w in args.workers.split(",") if w.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="triage-bench-ray-"))
    env = {
        **os.environ,
        "TRIAGE_WEIGHTS_DIR": str(Path(settings.weights_dir).resolve()),
        "TRIAGE_DATA_DIR": str(tmp / "data"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(C.REPO_DIR), os.environ.get("PYTHONPATH")])),
    }
    results = []
    try:
        folder = tmp / "slices"
        build_folder(folder, slices, args.n)
        mean_bytes = sum(p.stat().st_size for p in folder.iterdir()) / args.n
        for engine, workers in [("local", None)] + [("ray", w) for w in pools]:
            res = run(folder, tmp / f"out_{engine}_{workers}.csv", engine, workers, args.batch_size, env)
            results.append(res)
            print(f"  {engine} {workers or ''}: {res['wall_s']:.1f} s, {res['steady_per_s']:.1f}/s", file=sys.stderr)
        write_rate = driver_write_rate(tmp)
    finally:
        if args.keep:
            print(f"(kept {tmp})", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    out = [
        C.header("The Ray engine against the local engine", C.command_line(), None, versions),
        "",
        f"{args.n} symlinks to {min(len(slices), args.n)} distinct BRISC 2025 slices, batch size {args.batch_size}; "
        "each row is its own child process; the Ray runs start their own local cluster (2 CPUs, actors 0.5 CPU and "
        "1 ONNX thread each; the local engine runs 2 ONNX threads). Start-up = process start to the first row written; "
        "steady = rows/s after it; ms/file in worker = mean of the CSV ms column (decode + analysis, per file of a "
        "batch, inside the process that ran it). Per-worker RSS: peak VmRSS of an actor process, and in brackets "
        "without the pages of Ray's shared object store.",
        "",
    ]
    rows = []
    local = results[0]
    for r in results:
        name = "local" if r["engine"] == "local" else f"ray, {r['workers']} worker{'s' * (r['workers'] > 1)}"
        rows.append(
            (
                name,
                f"{r['wall_s']:.1f}",
                f"{r['startup_s']:.1f}",
                C.fmt(args.n / r["wall_s"]),
                C.fmt(r["steady_per_s"]),
                f"{r['steady_per_s'] / max(1e-9, local['steady_per_s']):.2f}",
                f"{r['worker_ms']:.0f}",
                C.fmt(1000 / r["worker_ms"]),
                f"{r['cli_mib']:.0f}",
                f"{r['actor_mib']:.0f} ({r['actor_own_mib']:.0f})" if r["actor_mib"] else "-",
                f"{r['total_mib']:.0f}",
            )
        )
    out.append(
        C.table(
            [
                "engine",
                "wall s",
                "start-up s",
                "slices/s (wall)",
                "slices/s (steady)",
                "steady vs local",
                "ms/file in worker",
                "slices/s per worker",
                "peak RSS CLI MiB",
                "peak RSS per worker MiB (without shared)",
                "peak RSS all MiB",
            ],
            rows,
        )
    )
    two = next((r for r in results if r["workers"] == 2), results[-1])
    per_worker = 1000 / two["worker_ms"]  # measured inside the actors, free of start-up and pipeline effects
    node_rate = 2 * per_worker
    ratio = two["steady_per_s"] / max(1e-9, local["steady_per_s"])
    # The verdict is on wall time (start-up included): "steady" over-states Ray, whose first row arrives late.
    wall_ratio = local["wall_s"] / max(1e-9, two["wall_s"])
    verdict = C.verdict(wall_ratio >= TARGET_RATIO) if args.n >= 5000 else "(the target is set on 5000 slices)"
    out += [
        "",
        f"Target: Ray with 2 workers within 15% of the local engine's throughput on 5000 slices: "
        f"{wall_ratio:.2f} of it on wall time, start-up included {verdict} ({ratio:.2f} on steady rate).",
        "",
        "### On paper: 10^6 slices",
        "",
        f"Per node (2 cores, 2 actors): twice the measured per-worker rate of the 2-worker run "
        f"({per_worker:.1f} slices/s from its CSV ms column), {node_rate:.1f} slices/s; "
        f"start-up {two['startup_s']:.0f} s (a cluster already running saves the cluster start). Limits that do "
        f"not grow with the nodes: the driver writes {write_rate:,.0f} rows/s (measured); reading "
        f"{mean_bytes / 1e3:.0f} kB per slice from shared storage at an assumed {args.storage_mb_s:.0f} MB/s is "
        f"{args.storage_mb_s * 1e6 / mean_bytes:,.0f} slices/s. Scheduling: one Ray task per batch of "
        f"{args.batch_size} slices, so {node_rate * 100 / args.batch_size:.0f} tasks/s at 100 nodes, "
        "well under what one Ray head schedules (thousands per second). Cost at an assumed "
        f"{args.node_hour_usd:.2f} USD per 2-core node-hour.",
        "",
        C.table(
            ["nodes", "compute slices/s", "effective slices/s", "limit", "wall", "node-hours", "USD"],
            paper_estimate(
                node_rate,
                two["startup_s"],
                write_rate,
                args.storage_mb_s * 1e6 / mean_bytes,
                args.node_hour_usd,
            ),
        ),
    ]
    # One section per size: the 1,000- and 5,000-slice runs are both kept in RESULTS.md.
    return C.finish(args, f"ray_scale_{args.n}", out, versions)


if __name__ == "__main__":
    sys.exit(main())
