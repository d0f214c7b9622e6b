"""Issue 22 resource bombs: peak memory and time of each hostile input, one fresh process each.

Every input of ``tests.hostile_corpus.bomb_specs()`` is built here, written to a temporary file and
handed to a child process that loads the active models, then runs the input through the path a
user would take: ``TriageService.analyze_bytes`` for single files, the New scans upload function
(``ui.uploads.process_uploads``) and the training importer (``importer.import_zip``) for a zip. The
child runs under an address-space limit (``--limit-gb``, default 8) so an unbounded bomb of the
code under test ends as a MemoryError instead of taking the machine. Also timed: the training
import's de-duplication of 20,000 and 50,000 thumbnails (``dedup``).

Prints a Markdown table: input, size, path, outcome, peak RSS of the child (models included) and
seconds of the step. ``--src DIR`` runs the children on another checkout of the code (e.g. the
commit before a fix: ``git archive <commit> | tar -x -C /tmp/base``) with the same inputs.

    nice -n 10 python bench/hostile_memory.py                       # every input, this checkout
    nice -n 10 python bench/hostile_memory.py --src /tmp/base --only brain_6324x6324_40MP.png
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))

DEDUP_SIZES = (20_000, 50_000)


def _thumbs(n: int, seed: int = 0):
    """``n`` uint8 64x64 thumbnails: one head shape plus smooth random fields (many similar pairs,
    as in real slices), and every 10th an exact or near copy of an earlier one."""
    import cv2
    import numpy as np

    from tests.hostile_corpus import fake_brain

    rng = np.random.default_rng(seed)
    base = cv2.resize(fake_brain(128), (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32)
    out = np.empty((n, 64, 64), np.uint8)
    for a in range(0, n, 1000):
        k = min(1000, n - a)
        fields = rng.normal(0, 25, (k, 8, 8)).astype(np.float32)
        big = np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_CUBIC) for f in fields])
        out[a : a + k] = np.clip(base * rng.uniform(0.7, 1.3, (k, 1, 1)) + big, 0, 255).astype(np.uint8)
    for i in range(10, n, 10):
        out[i] = np.clip(out[i - 7].astype(np.int16) + rng.integers(-1, 2, (64, 64)), 0, 255).astype(np.uint8)
    return out


def child(path: str, mode: str, data_dir: str) -> None:
    """Run one input in this process and print one JSON line (outcome, seconds)."""
    os.environ["TRIAGE_DATA_DIR"] = data_dir
    from triage.config import get_settings

    settings = get_settings()
    t = time.perf_counter()
    try:
        if mode == "dedup":
            import numpy as np

            from triage import datasets

            vectors = _thumbs(int(path))
            sha = [str(i) for i in range(len(vectors))]
            t = time.perf_counter()
            if hasattr(datasets, "dedup_sources"):  # the fixed code takes raw uint8 thumbnails
                keep = datasets.dedup_groups(vectors, sha)
            else:  # the code before the fix needs unit-norm float vectors
                v = vectors.reshape(len(vectors), -1).astype(np.float32)
                v /= np.linalg.norm(v, axis=1, keepdims=True)
                keep = datasets.dedup_groups(v, sha)
            outcome = f"{int((~keep).sum())} duplicates of {len(keep)}"
        elif mode == "import":
            from triage.errors import DatasetError

            try:
                from triage.lifecycle import importer
            except ImportError:  # a --src checkout from before the lifecycle package (issue 24)
                from triage import importer

            try:
                s = importer.import_zip(Path(path), "classifier", settings)
                outcome = f"{s.total} kept, {len(s.rejected)} rejected: {s.rejected[0][1][:70] if s.rejected else ''}"
            except DatasetError as exc:
                outcome = f"refused: {str(exc)[:90]}"
        else:
            from triage.service import TriageService

            service = TriageService(settings)
            service.models()
            data = Path(path).read_bytes()
            if mode == "upload":
                from triage.ui.uploads import process_uploads
                from triage.worklist import Worklist

                t = time.perf_counter()
                rows = process_uploads([(Path(path).name, data)], service, Worklist(settings.db_path))
                statuses: dict[str, int] = {}
                for r in rows:
                    statuses[r["status"]] = statuses.get(r["status"], 0) + 1
                reason = next((r["reason"] for r in rows if r["reason"]), "")
                outcome = ", ".join(f"{v} {k}" for k, v in statuses.items()) + (f": {reason[:70]}" if reason else "")
            else:
                t = time.perf_counter()
                results = service.analyze_bytes(data, Path(path).name)
                ok = [r for r in results if r.ok]
                if ok:
                    outcome = f"accepted ({len(ok)} of {len(results)} frames)"
                else:
                    outcome = f"rejected: {results[0].error[:90]}"
    except MemoryError:
        outcome = "MemoryError (address-space limit reached)"
    except Exception as exc:  # the table says what broke; the bench goes on
        outcome = f"CRASH {type(exc).__name__}: {str(exc)[:80]}"
    seconds = round(time.perf_counter() - t, 2)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB
    print(json.dumps({"outcome": outcome, "seconds": seconds, "peak_mb": peak_mb}), flush=True)


def run_child(src: Path, path: Path, mode: str, limit_gb: float, data_dir: str) -> dict:
    """The child's JSON result: outcome, seconds and its own peak RSS (MB, ``getrusage``)."""

    def limit() -> None:
        cap = int(limit_gb * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        os.nice(10)

    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{REPO_DIR}", "PYTHONDONTWRITEBYTECODE": "1"}
    env.setdefault("TRIAGE_WEIGHTS_DIR", str(REPO_DIR / "weights"))
    # Decode in the measured process: under the upload time limit it runs in worker processes
    # (triage/decode_limit.py) whose memory the child's ru_maxrss would not include.
    env["TRIAGE_UPLOAD_TIME_LIMIT_S"] = "0"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(path), mode, data_dir]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, preexec_fn=limit)
    out, err = proc.communicate()
    lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.startswith("{")]
    if lines:
        result = json.loads(lines[-1])
    else:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        result = {"outcome": f"CRASH (exit {proc.returncode}): {tail[0][:80]}", "seconds": float("nan")}
        result["peak_mb"] = float("nan")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", default=str(REPO_DIR), help="checkout whose triage/ the children run (default: this one)")
    p.add_argument("--only", nargs="*", help="input names to run (default: all; 'dedup' for the de-duplication)")
    p.add_argument("--limit-gb", type=float, default=8.0, help="address-space limit of each child (default 8)")
    p.add_argument(
        "--dedup-sizes",
        default=",".join(map(str, DEDUP_SIZES)),
        help="thumbnail counts for 'dedup' (default 20000,50000)",
    )
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    from tests.hostile_corpus import bomb_specs

    src = Path(args.src).resolve()
    rows = []
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        jobs: list[tuple[str, str, Path, str]] = []  # (label, size, path, mode)
        for spec in bomb_specs():
            if args.only and spec.name not in args.only:
                continue
            path = Path(tmp) / spec.name
            path.write_bytes(spec.make())
            size = f"{path.stat().st_size / 1e6:.2f} MB"
            modes = ("upload", "import") if spec.name.endswith(".zip") else ("analyze",)
            jobs.extend((spec.name, size, path, m) for m in modes)
        if not args.only or "dedup" in args.only:
            sizes = [int(x) for x in args.dedup_sizes.split(",") if x.strip()]
            jobs.extend((f"dedup of {n:,} thumbnails", "-", Path(str(n)), "dedup") for n in sizes)
        for label, size, path, mode in jobs:
            with tempfile.TemporaryDirectory(dir=tmp, prefix="data-") as data_dir:
                r = run_child(src, path, mode, args.limit_gb, data_dir)
            rows.append((label, size, mode, r["outcome"], r["peak_mb"], r["seconds"]))
            print(f"  {label} [{mode}]: {r['outcome']} | {r['peak_mb']:.0f} MB | {r['seconds']} s", file=sys.stderr)
    print(f"\nsource: {src} · load average {os.getloadavg()[0]:.1f} · limit {args.limit_gb:g} GB per child\n")
    print("| input | size | path | outcome | peak RSS (MB) | seconds |")
    print("|---|---|---|---|---|---|")
    for label, size, mode, outcome, peak, secs in rows:
        print(f"| {label} | {size} | {mode} | {outcome.replace('|', '/')} | {peak:.0f} | {secs} |")
    accepted = [r for r in rows if re.match(r"(accepted|\d+ accepted|\d+ kept)", r[3]) and not r[3].startswith("0 ")]
    if accepted:
        worst = max(accepted, key=lambda r: r[4])
        print(f"\nworst accepted input: {worst[0]} [{worst[2]}], peak {worst[4]:.0f} MB (target <= 1536 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
