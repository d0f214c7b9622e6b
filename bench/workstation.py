#!/usr/bin/env python3
"""Speed where users feel it (issue 17): whole processes, a busy laptop, the peer side by side.

Every row is measured twice: on the machine as it is ("idle") and with one core kept busy by a
second process (``python -c "while True: pass"`` pinned to core 0 where the OS allows it),
started before and stopped after that condition's measurements. The child-process rows (1, 2, 5,
6, CPU peak) run first for both conditions, while this process is small (a child's ru_maxrss
includes its parent's high-water mark); then the in-process rows (3, 4) for both conditions,
so the "one core busy" rows 3 and 4 run with torch already loaded, as in an app after a heatmap.

  1. ``python -m triage analyze <N slices> --masks-dir D --quiet`` and the PyPI peer
     ``detect-tumor`` (peer.py's runner in its own venv, one whole process, the same N files), in
     the same run: wall and CPU time (user + system of the child, ``os.wait4``) and the ratios
  2. ``python -m triage analyze <1 slice>``: whole-process wall, median of 3
  3. in-process ``TriageService.analyze_bytes`` (decode, crop, classify, segment, risk), warm,
     median over the N slices, at inference_threads 1 and 2
  4. Grad-CAM on demand: ``service.explain(result)`` of fresh cases after one earlier explain
     loaded torch (median), at torch threads 1 and 2, and that first explain (torch import included)
  5. ``--app`` (needs Chromium): the app's first analysis after a cold start (app_start.one_start)
  6. ``python -m triage analyze <1000 slices>``: peak RSS of the process
  7. the physical limit: FLOPs per slice of both networks (torch.utils.flop_counter, mirror TTA
     counted as 2 forwards when the card says so) and the CPU's float32 matmul GFLOP/s (NumPy,
     1 and 2 threads), i.e. ms per slice at peak beside the measured ms

N is ``--n`` (default 100) BRISC 2025 test slices, stratified, behind symlinks in a temporary
folder. ``--quick``: N=20, no 1000-slice run, no app. The CLI runs use the product's configured
inference backend and threads; the peer gets the same number of ONNX Runtime threads.

Examples:
  python bench/workstation.py --write
  python bench/workstation.py --app --write
  python bench/workstation.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import app_start
import peer
import throughput

CONDITIONS = ("idle", "one core busy")
TARGET_PEER_X = 5.0
TARGET_ONE_SLICE_S = 3.0
TARGET_SLICE_MS = {"idle": 40.0, "one core busy": 80.0}
TARGET_CAM_MS = 300.0
TARGET_APP_S = 5.0
TARGET_PEAK_MB = 800.0
MEMORY_N = 1000
CAM_CASES = 10
BUSY_LOOP = (
    "import os\n"
    "try:\n"
    "    os.sched_setaffinity(0, {0})\n"
    "except (AttributeError, OSError):\n"
    "    pass\n"
    "while True:\n"
    "    pass\n"
)
# Run in place of ``python -m triage``: reports which heavy modules the command imported.
IMPORT_PROBE = (
    "import atexit, json, runpy, sys\n"
    "HEAVY = ('torch', 'timm', 'monai', 'segmentation_models_pytorch', 'pydicom')\n"
    "atexit.register(lambda: print('HEAVY ' + json.dumps([m for m in HEAVY if m in sys.modules]), file=sys.stderr))\n"
    "sys.argv = ['triage', *sys.argv[1:]]\n"
    "runpy.run_module('triage', run_name='__main__', alter_sys=True)\n"
)
MATMUL = (
    "import sys, time\n"
    "import numpy as np\n"
    "n = int(sys.argv[1])\n"
    "a = np.random.default_rng(0).random((n, n), dtype=np.float32)\n"
    "b = a.copy()\n"
    "a @ b\n"
    "best = float('inf')\n"
    "for _ in range(5):\n"
    "    t = time.perf_counter()\n"
    "    a @ b\n"
    "    best = min(best, time.perf_counter() - t)\n"
    "print(2 * n**3 / best / 1e9)\n"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100, help="BRISC test slices of rows 1, 3 and 4 (default 100)")
    p.add_argument("--quick", action="store_true", help="smoke run: N=20, no 1000-slice run, no app")
    p.add_argument("--app", action="store_true", help="also the app's first analysis (headless Chromium)")
    p.add_argument("--no-peer", action="store_true", help="skip detect-tumor (row 1 without the ratios)")
    p.add_argument("--peer-spec", default="detect-tumor==0.1.1", help="pip requirement of the peer")
    p.add_argument("--peer-venv", help="reuse (or create and keep) the peer venv here")
    p.add_argument("--pip-timeout", type=float, default=900, help="seconds allowed for the peer install")
    p.add_argument("--timeout", type=float, default=180, help="seconds allowed for each wait of the app part")
    C.add_common_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.app = min(args.n, 20), False
    return args


# ----- conditions --------------------------------------------------------------------------------
@contextlib.contextmanager
def condition(name: str):
    """Nothing for "idle"; otherwise a busy-loop child on core 0 for the duration."""
    if name == "idle":
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    try:
        time.sleep(0.5)  # let it pin itself and get going
        yield
    finally:
        proc.kill()
        proc.wait()


# ----- whole processes ---------------------------------------------------------------------------
def analyze(folder: Path, tmp: Path, env: dict, tag: str, masks: bool = False) -> dict:
    extra = ("--masks-dir", str(tmp / f"masks_{tag}")) if masks else ()
    return throughput.run_cli(folder, tmp / f"out_{tag}.csv", False, None, env, extra)


def run_peer(py: Path, runner: Path, paths_file: Path, threads: int) -> dict:
    """The peer's runner as one whole process over every path in ``paths_file``."""
    res = C.run_measured([str(py), str(runner), str(threads)], stdin_path=paths_file)
    if res["rc"] != 0:
        C.die(f"the peer exited {res['rc']}:\n{res['stderr'][-2000:]}", peer.EXIT_NO_PEER)
    lines = [json.loads(x) for x in res["stdout"].splitlines() if x.startswith("{")]
    res["ok"] = sum("label" in x for x in lines)
    res["errors"] = sum("error" in x for x in lines)
    return res


def heavy_imports(folder: Path, tmp: Path, env: dict) -> list[str] | None:
    """Heavy modules ``analyze`` (without --explain) imported, or None when the probe failed."""
    cmd = [sys.executable, "-c", IMPORT_PROBE, "analyze", str(folder), "--out", str(tmp / "probe.csv"), "--quiet"]
    res = C.run_measured(cmd, env)
    for line in res["stderr"].splitlines():
        if line.startswith("HEAVY "):
            return json.loads(line[6:])
    return None


def cpu_peak_gflops(threads: int) -> float:
    env = {**os.environ, **{k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    out = subprocess.run(
        [sys.executable, "-c", MATMUL, "2048"], env=env, check=True, capture_output=True, text=True, timeout=300
    )
    return float(out.stdout.strip())


# ----- in process --------------------------------------------------------------------------------
def per_slice_ms(settings, files: list[tuple[bytes, str]], threads: int) -> tuple[list[float], dict]:
    """Warm end-to-end ms of each slice (analyze_bytes, segmentation included) and the backends."""
    from triage.service import TriageService

    service = TriageService(replace(settings, inference_threads=threads))
    for data, name in files[:3]:
        service.analyze_bytes(data, name)
    out = []
    for data, name in files:
        t = time.perf_counter()
        service.analyze_bytes(data, name)
        out.append((time.perf_counter() - t) * 1000)
    return out, dict(service.models().backends)


def gradcam_ms(settings, files: list[tuple[bytes, str]]) -> tuple[float | None, list[float]]:
    """ms of the first explain in this process (None when torch was already loaded) and of fresh
    cases after it."""
    from triage.service import TriageService

    service = TriageService(settings)
    results = [service.analyze_bytes(d, n)[0] for d, n in files[: CAM_CASES + 1]]
    results = [r for r in results if r.ok]
    cold = "torch" not in sys.modules
    t = time.perf_counter()
    service.explain(results[0])
    first = (time.perf_counter() - t) * 1000
    warm = []
    for r in results[1:]:
        t = time.perf_counter()
        service.explain(r)
        warm.append((time.perf_counter() - t) * 1000)
    return (first if cold else None), warm


def network_gflop(settings) -> dict[str, tuple[float, int]]:
    """{task: (GFLOP per slice, forwards per slice)}; mirror TTA is two forwards."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from triage.models import TASKS, load_model

    out = {}
    for task in TASKS:
        model = load_model(settings.weights_dir, task)
        size, chans = int(model.meta["input_size"]), int(model.meta.get("in_chans", 1))
        forwards = 2 if model.meta.get("tta") else 1
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model.net(torch.zeros(forwards, chans, size, size))
        out[task] = (fc.get_total_flops() / 1e9, forwards)
    return out


def app_first_analysis(args, tmp: Path, upload: Path) -> float | str:
    """Seconds from 'Analyse' to the result after a cold start, or why it was not measured."""
    reason = app_start.browser_available()
    if reason:
        return reason
    driver = app_start.start_browser(tmp / f"profile-{time.monotonic_ns()}")
    try:
        return app_start.one_start(args, tmp, upload, driver)["first_analysis_s"]
    except (TimeoutError, RuntimeError, KeyError) as exc:
        return f"failed: {exc}"
    finally:
        driver.quit()


# ----- one condition -----------------------------------------------------------------------------
def measure_processes(args, settings, ctx: dict) -> dict:
    """Rows measured in child processes (1, 2, 5, 6 and the CPU peak). Run while this process is
    still small: a child's ru_maxrss includes the high-water mark of the process it was spawned
    from (Linux carries it across exec), so the parent's VmHWM is recorded beside it."""
    r: dict = {}
    tag = str(ctx["i"])
    r["peak"] = {t: cpu_peak_gflops(t) for t in (1, 2)}
    r["ours"] = analyze(ctx["folder_n"], ctx["tmp"], ctx["env"], "n" + tag, masks=True)
    if ctx["peer_py"]:
        r["peer"] = run_peer(ctx["peer_py"], ctx["runner"], ctx["paths_file"], settings.inference_threads)
    r["one"] = [analyze(ctx["folder_1"], ctx["tmp"], ctx["env"], "one" + tag)["wall_s"] for _ in range(3)]
    if ctx["folder_mem"]:
        r["parent_hwm_mib"] = C.proc_status_kib(os.getpid(), "VmHWM") / 1024
        r["mem"] = analyze(ctx["folder_mem"], ctx["tmp"], ctx["env"], "mem" + tag)
    if args.app:
        r["app"] = app_first_analysis(args, ctx["tmp"], ctx["files_paths"][0])
    return r


def measure_inprocess(settings, ctx: dict) -> dict:
    """Rows 3 and 4 in this process (loads the models, and torch for Grad-CAM)."""
    r = {"slice": {t: per_slice_ms(settings, ctx["files"], t) for t in (1, 2)}, "cam": {}}
    for t in (1, 2):
        first, r["cam"][t] = gradcam_ms(replace(settings, torch_threads=t), ctx["files"])
        r["cam_first"] = r.get("cam_first") or first
    return r


def setup(args, settings, tmp: Path) -> dict:
    pool = [s for s in C.load_brisc(C.brisc_dir(args.data)) if s.split == "test"]
    if not pool:
        C.die("no test-split slices in the BRISC manifest", C.EXIT_NO_DATA)
    chosen = C.stratified_sample(pool, min(args.n, len(pool)), random.Random(args.seed))
    ctx = {"tmp": tmp, "n": len(chosen), "env": throughput.child_env(settings, args.threads, tmp)}
    ctx["folder_n"], ctx["folder_1"] = tmp / "slices_n", tmp / "slices_1"
    throughput.build_folder(ctx["folder_n"], chosen, len(chosen))
    throughput.build_folder(ctx["folder_1"], chosen, 1)
    ctx["folder_mem"] = None
    if not args.quick:
        ctx["folder_mem"] = tmp / "slices_mem"
        throughput.build_folder(ctx["folder_mem"], C.select_slices(pool, MEMORY_N, args.seed), MEMORY_N)
    ctx["files_paths"] = [s.path.resolve() for s in chosen]
    ctx["files"] = [(p.read_bytes(), p.name) for p in ctx["files_paths"]]
    ctx["paths_file"] = tmp / "paths.txt"
    ctx["paths_file"].write_text("".join(f"{p}\n" for p in sorted(ctx["folder_n"].iterdir())), encoding="utf-8")
    ctx["peer_py"] = ctx["runner"] = None
    if not args.no_peer:
        venv = Path(args.peer_venv).resolve() if args.peer_venv else tmp / "peer-venv"
        ctx["peer_py"] = peer.ensure_peer(venv, args.peer_spec, args.pip_timeout)
        ctx["runner"] = tmp / "peer_runner.py"
        ctx["runner"].write_text(peer.RUNNER, encoding="utf-8")
    return ctx


# ----- report ------------------------------------------------------------------------------------
# Every row function returns {measure: (target, value, verdict)} for one condition.
NONE = "-"


def row(target: str, value: str, ok: bool | None = None) -> tuple[str, str, str]:
    return target, value, C.verdict(ok)


def rows_whole(res: dict, cond: str, n: int) -> dict[str, tuple]:
    ours, other = res["ours"], res.get("peer")
    peer_key, ratio_key = f"peer detect-tumor, same {n} slices: wall / CPU s", "speed-up vs the peer: wall / CPU"
    out = {
        f"`analyze` {n} slices (--masks-dir): wall / CPU s": row(NONE, f"{ours['wall_s']:.1f} / {ours['cpu_s']:.1f}"),
        peer_key: row(NONE, "not run (--no-peer)"),
        ratio_key: row(f">= {TARGET_PEER_X:.0f}x on both", "-"),
    }
    if other:
        xw, xc = other["wall_s"] / ours["wall_s"], other["cpu_s"] / ours["cpu_s"]
        out[peer_key] = row(
            NONE, f"{other['wall_s']:.1f} / {other['cpu_s']:.1f} ({other['ok']} ok, {other['errors']} errors)"
        )
        out[ratio_key] = row(out[ratio_key][0], f"{xw:.2f}x / {xc:.2f}x", min(xw, xc) >= TARGET_PEER_X)
    one = C.median(res["one"])
    out["`analyze` 1 slice: wall s (median of 3)"] = row(
        f"<= {TARGET_ONE_SLICE_S:.0f} s", f"{one:.2f}", one <= TARGET_ONE_SLICE_S
    )
    return out


def rows_inprocess(res: dict, cond: str, n: int, configured: int, torch_threads: int) -> dict[str, tuple]:
    out = {}
    target = " / ".join(f"<= {v:.0f}" for v in TARGET_SLICE_MS.values()) + " ms"
    for t, (ms, _backends) in res["slice"].items():
        mark = " (configured)" if t == configured else ""
        m = C.median(ms)
        out[f"per slice end to end incl. segmentation, median of {n}, inference_threads {t}{mark}: ms"] = row(
            target, f"{m:.1f} (p95 {C.percentile(ms, 95):.1f})", m <= TARGET_SLICE_MS[cond]
        )
    for t, ms in res["cam"].items():
        mark = " (configured)" if t == torch_threads else ""
        cam = C.median(ms)
        out[
            f"Grad-CAM, first heatmap of a case after torch is loaded, median of {len(ms)}, torch threads {t}{mark}: ms"
        ] = row(f"<= {TARGET_CAM_MS:.0f} ms", C.fmt(cam), cam <= TARGET_CAM_MS if ms else None)
    first = res["cam_first"]
    out["first explain in the process (imports torch, builds the net): ms"] = row(
        NONE, C.fmt(first) if first is not None else "torch already loaded"
    )
    return out


def rows_other(res: dict, args) -> dict[str, tuple]:
    app, mem = res.get("app"), res.get("mem")
    app_target, mem_target = f"<= {TARGET_APP_S:.0f} s", f"<= {TARGET_PEAK_MB:.0f} MB"
    if isinstance(app, float):
        app_row = row(app_target, f"{app:.2f}", app <= TARGET_APP_S)
    else:
        app_row = row(app_target, app or ("not run (--quick)" if args.quick else "not run (no --app)"))
    if mem:
        mb, sampled = mem["maxrss_mib"] * 1.048576, mem["sampled_mib"] * 1.048576
        if mem["maxrss_mib"] <= res["parent_hwm_mib"]:  # the parent's mark, not the child's: use the samples
            text, mb = f"{sampled:.0f} (sampled; ru_maxrss was the bench's own {mb:.0f})", sampled
        else:
            text = f"{mb:.0f} (sampled {sampled:.0f})"
        mem_row = row(mem_target, f"{text}, wall {mem['wall_s']:.0f} s", mb <= TARGET_PEAK_MB)
    else:
        mem_row = row(mem_target, "not run (--quick)")
    return {
        "app: first analysis after a cold start: s": app_row,
        f"`analyze` {MEMORY_N} slices: peak RSS MB": mem_row,
    }


def rows_limit(res: dict, flops: dict, configured: int) -> dict[str, tuple]:
    total = sum(g for g, _ in flops.values())
    peak = res["peak"][min(configured, 2)]
    measured = C.median(res["slice"][configured][0])
    at_peak = total / peak * 1000
    return {
        "CPU peak, float32 matmul 2048^3 (NumPy): GFLOP/s at 1 / 2 threads": row(
            NONE, f"{res['peak'][1]:.0f} / {res['peak'][2]:.0f}"
        ),
        f"both networks ({total:.2f} GFLOP) at that peak ({configured} threads) vs measured end to end: ms": row(
            NONE, f"{at_peak:.1f} vs {measured:.1f} ({at_peak / measured * 100:.0f}% of peak)"
        ),
    }


def report(args, settings, versions, ctx: dict, results: dict, flops: dict, heavy) -> list[str]:
    configured, n = settings.inference_threads, ctx["n"]
    per_cond = {
        cond: {
            **rows_whole(res, cond, n),
            **rows_inprocess(res, cond, n, configured, settings.torch_threads),
            **rows_other(res, args),
            **rows_limit(res, flops, configured),
        }
        for cond, res in results.items()
    }
    table_rows = [
        (label, target, *(v for cond in CONDITIONS for v in per_cond[cond][label][1:]))
        for label, (target, _, _) in per_cond[CONDITIONS[0]].items()
    ]
    backends = results[CONDITIONS[0]]["slice"][configured][1]
    flop_text = ", ".join(
        f"{task} {g:.2f} GFLOP ({fw} forward{'s, mirror TTA' if fw == 2 else ''})" for task, (g, fw) in flops.items()
    )
    peer_note = (
        "peer skipped (--no-peer)"
        if not ctx["peer_py"]
        else f"peer `{args.peer_spec}` = peer.py's runner in its own venv, {configured} ONNX Runtime threads"
    )
    return [
        C.header("Speed where users feel it (issue 17)", C.command_line(), args.threads, versions),
        "",
        (
            f"{n} BRISC 2025 test slices (stratified, seed {args.seed}) behind symlinks; whole processes timed "
            f"from start to exit (CPU = user + system of the child); {peer_note}. Backends: "
            + ", ".join(f"{k} {v}" for k, v in backends.items())
            + f"; inference_threads {configured} (configured), torch threads {args.threads} (Grad-CAM). "
            f"'One core busy' = a `while True: pass` process pinned to core 0. Networks per slice: {flop_text}. "
            f"Heavy modules imported by `analyze` without --explain: {', '.join(heavy) if heavy else 'none'}"
            + (" (probe failed)" if heavy is None else "")
            + "."
        ),
        "",
        C.table(["measure", "target", "idle", "", "one core busy", ""], table_rows),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings, versions = C.start(args)
    os.environ["TRIAGE_WEIGHTS_DIR"] = str(Path(settings.weights_dir).resolve())
    tmp = Path(tempfile.mkdtemp(prefix="triage-bench-workstation-"))
    try:
        ctx = setup(args, settings, tmp)
        heavy = heavy_imports(ctx["folder_1"], tmp, ctx["env"])
        results: dict = {cond: {} for cond in CONDITIONS}
        # Child processes first, for both conditions, while this process is small; then in process.
        for phase, fn in (
            ("processes", lambda: measure_processes(args, settings, ctx)),
            ("in process", lambda: measure_inprocess(settings, ctx)),
        ):
            for i, cond in enumerate(CONDITIONS):
                ctx["i"] = i
                print(f"  measuring: {phase}, {cond} ...", file=sys.stderr)
                with condition(cond):
                    results[cond].update(fn())
        flops = network_gflop(settings)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return C.finish(args, "workstation", report(args, settings, versions, ctx, results, flops, heavy), versions)


if __name__ == "__main__":
    os.environ.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    raise SystemExit(main())
