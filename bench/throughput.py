#!/usr/bin/env python3
"""Throughput and peak memory of the command line on a folder of N slices.

Builds a temporary folder of N symbolic links to real BRISC 2025 slices (test split first, then
train; when N exceeds the files available they are reused under other link names; nothing is
copied), then runs, as a child process,

  python -m triage analyze <folder> --out <tmp>/out.csv --quiet [--explain] [--batch-size B]

with and without ``--explain``. Reported per run: wall time (process start to exit, including
imports and model loading), slices/s over the wall time, slices/s of the analysis itself (the
sum of the CSV ``ms`` column, i.e. without start-up), and the peak resident memory of the child
(``ru_maxrss`` from ``os.wait4`` of that child, cross-checked with the largest VmRSS sampled
from /proc every 0.1 s).

``--scaling 100,1000,5000`` runs the same at several sizes and reports time per slice and peak
memory per size (they should be flat in N). Each size/mode is its own process.

Examples:
  python bench/throughput.py --n 1000 --write
  python bench/throughput.py --scaling 100,1000,5000 --write
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

TARGET_PEAK_GB = 1.5
TARGET_N = 1000
FLAT_TOLERANCE = 0.15  # peak memory / time per slice within +15% of the smallest size counts as flat


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="slices in the folder (default 1000)")
    p.add_argument("--scaling", help="comma-separated sizes, e.g. 100,1000,5000 (replaces --n)")
    p.add_argument(
        "--modes",
        default="plain,explain",
        help="comma-separated: plain (no Grad-CAM) and/or explain (--explain); default both",
    )
    p.add_argument("--batch-size", type=int, default=None, help="passed to analyze (default: the CLI's own)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (links and CSVs)")
    C.add_common_args(p)
    return p.parse_args(argv)


def build_folder(folder: Path, slices: list[C.Slice], n: int) -> None:
    """``n`` symlinks named ``00000_<original name>`` ... cycling through ``slices``."""
    folder.mkdir(parents=True)
    for i in range(n):
        s = slices[i % len(slices)]
        os.symlink(s.path.resolve(), folder / f"{i:05d}_{s.path.name}")


def child_env(settings, threads: int, tmp: Path) -> dict:
    """Environment of an analyze child: these weights and torch threads, a throw-away data folder."""
    return {
        **os.environ,
        "TRIAGE_WEIGHTS_DIR": str(Path(settings.weights_dir).resolve()),
        "TRIAGE_TORCH_THREADS": str(threads),
        "TRIAGE_DATA_DIR": str(tmp / "data"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(C.REPO_DIR), os.environ.get("PYTHONPATH")])),
    }


def run_cli(
    folder: Path, out_csv: Path, explain: bool, batch_size: int | None, env: dict, extra: tuple[str, ...] = ()
) -> dict:
    """``python -m triage analyze folder`` (plus ``extra`` arguments) as a child: C.run_measured's
    figures plus the CSV's row counts and summed analysis time."""
    cmd = [sys.executable, "-m", "triage", "analyze", str(folder), "--out", str(out_csv), "--quiet", *extra]
    if explain:
        cmd.append("--explain")
    if batch_size:
        cmd += ["--batch-size", str(batch_size)]
    res = C.run_measured(cmd, env)
    if res["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {res['rc']}:\n{res['stderr'][-2000:]}")
    rows = list(csv.DictReader(out_csv.open(newline="", encoding="utf-8")))
    analysis_s = sum(float(r["ms"] or 0) for r in rows) / 1000
    return {
        **res,
        "analysis_s": analysis_s,
        "rows": len(rows),
        "ok": sum(r["status"] == "ok" for r in rows),
        "rejected": sum(r["status"] != "ok" for r in rows),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings, versions = C.start(args)
    sizes = [int(x) for x in args.scaling.split(",")] if args.scaling else [args.n]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not sizes or min(sizes) < 1 or any(m not in ("plain", "explain") for m in modes) or not modes:
        C.die("sizes must be >= 1 and --modes a list of plain/explain", 1)
    slices = C.select_slices(C.load_brisc(C.brisc_dir(args.data)), max(sizes), args.seed)
    if not slices:
        C.die("no slices found in the manifest", C.EXIT_NO_DATA)

    tmp = Path(tempfile.mkdtemp(prefix="triage-bench-throughput-"))
    env = child_env(settings, args.threads, tmp)
    results: list[tuple[int, str, dict]] = []
    try:
        for n in sizes:
            folder = tmp / f"slices_{n}"
            build_folder(folder, slices, n)
            for mode in modes:
                res = run_cli(folder, tmp / f"out_{n}_{mode}.csv", mode == "explain", args.batch_size, env)
                results.append((n, mode, res))
                print(f"  n={n} {mode}: {res['wall_s']:.1f} s, peak {res['maxrss_mib']:.0f} MiB", file=sys.stderr)
    finally:
        if args.keep:
            print(f"(kept {tmp})", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    distinct = min(len(slices), max(sizes))
    out = [
        C.header(
            ("Scaling of" if args.scaling else "Throughput and peak memory of") + " `python -m triage analyze`",
            C.command_line(),
            args.threads,
            versions,
        ),
        "",
        (
            f"Folder of N symlinks to {distinct} distinct BRISC 2025 slices (test split first, reused under other "
            f"names when N is larger); batch size {args.batch_size or 'CLI default'}; {args.threads} torch threads; "
            f"one child process per row. Wall = process start to exit (imports + model load included); "
            f"'analysis' = sum of the CSV ms column (no start-up). Peak RSS = ru_maxrss of the child "
            f"(sampled VmRSS maximum in brackets)."
        ),
        "",
    ]
    rows = []
    for n, mode, r in results:
        rows.append(
            (
                n,
                "with --explain" if mode == "explain" else "without --explain",
                f"{r['wall_s']:.1f}",
                C.fmt(n / r["wall_s"]),
                C.fmt(r["analysis_s"] and r["rows"] / r["analysis_s"]),
                C.fmt(1000 * r["wall_s"] / n),
                C.fmt(1000 * r["analysis_s"] / max(1, r["rows"])),
                f"{r['maxrss_mib']:.0f} ({r['sampled_mib']:.0f})",
                f"{r['ok']}/{r['rejected']}",
            )
        )
    out.append(
        C.table(
            [
                "N",
                "mode",
                "wall s",
                "slices/s (wall)",
                "slices/s (analysis)",
                "ms/slice (wall)",
                "ms/slice (analysis)",
                "peak RSS MiB",
                "ok/rejected",
            ],
            rows,
        )
    )

    checks = []
    for mode in modes:
        at = [r for n, m, r in results if m == mode and n == TARGET_N]
        if at:
            peak = at[0]["maxrss_mib"] / 1024
            checks.append(
                (
                    f"analyze {TARGET_N} slices ({mode}): peak memory <= {TARGET_PEAK_GB} GB",
                    f"{peak:.2f} GiB",
                    C.verdict(peak <= TARGET_PEAK_GB),
                )
            )
        per_mode = sorted((n, r) for n, m, r in results if m == mode)
        if len(per_mode) >= 2:
            (n0, r0), (n1, r1) = per_mode[0], per_mode[-1]
            mem_growth = r1["maxrss_mib"] / r0["maxrss_mib"] - 1
            t0 = r0["analysis_s"] / max(1, r0["rows"])
            t1 = r1["analysis_s"] / max(1, r1["rows"])
            time_growth = t1 / t0 - 1 if t0 > 0 else float("nan")
            checks.append(
                (
                    f"flat in N ({mode}): peak memory N={n1} vs N={n0}",
                    f"{mem_growth * 100:+.1f}% ({r1['maxrss_mib'] - r0['maxrss_mib']:+.0f} MiB)",
                    C.verdict(mem_growth <= FLAT_TOLERANCE),
                )
            )
            checks.append(
                (
                    f"linear in N ({mode}): analysis time per slice N={n1} vs N={n0}",
                    f"{time_growth * 100:+.1f}%",
                    C.verdict(time_growth <= FLAT_TOLERANCE),
                )
            )
    if checks:
        out += [
            "",
            C.table(["target", "measured", "verdict"], checks),
            "",
            f"(flat / linear = within +{FLAT_TOLERANCE * 100:.0f}% of the smallest size)",
        ]
    return C.finish(args, "scaling" if args.scaling else "throughput", out, versions)


if __name__ == "__main__":
    raise SystemExit(main())
