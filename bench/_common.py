"""Shared helpers of the benchmark scripts: machine header, BRISC file selection, model checks,
statistics, Markdown tables and the ``--write`` update of ``bench/RESULTS.md``.

Not a package module: every script puts this folder and the repository root on ``sys.path``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import math
import os
import platform
import random
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_MD = BENCH_DIR / "RESULTS.md"

if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))

EXIT_NO_MODEL = 2
EXIT_NO_DATA = 3
EXIT_FAILED = 4


# ----- arguments ---------------------------------------------------------------------------------
def add_common_args(p: argparse.ArgumentParser, threads: bool = True) -> None:
    p.add_argument(
        "--weights-dir",
        help="weights folder with classifier/ and segmenter/ (default: the repo's weights/, or $TRIAGE_WEIGHTS_DIR)",
    )
    p.add_argument(
        "--data",
        help="BRISC 2025 folder holding manifest.csv (default: "
        "$TRIAGE_SHARED_DATA/brisc2025 or ../shared/data/brisc2025)",
    )
    if threads:
        p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the file selection (default 0)")
    p.add_argument(
        "--write",
        action="store_true",
        help="also replace this script's section of bench/RESULTS.md (refused with untrained models)",
    )
    p.add_argument("--results-file", default=str(RESULTS_MD), help="file updated by --write (default bench/RESULTS.md)")


def apply_env(args: argparse.Namespace) -> None:
    """Make --weights-dir / --threads visible to get_settings() here and in child processes."""
    if getattr(args, "weights_dir", None):
        os.environ["TRIAGE_WEIGHTS_DIR"] = str(Path(args.weights_dir).resolve())
    if getattr(args, "threads", None):
        os.environ["TRIAGE_TORCH_THREADS"] = str(args.threads)


_LOAD_AT_START: tuple[float, float, float] | None = None


def load_at_start() -> tuple[float, float, float]:
    """Load average sampled when the script started (the header is written after the run,
    when the benchmark's own work would otherwise show up as a busy machine)."""
    return _LOAD_AT_START or os.getloadavg()


def start(args: argparse.Namespace):
    """Apply the environment, load settings and the active model versions; refuse ``--write``
    with untrained models. Returns (settings, versions)."""
    global _LOAD_AT_START
    _LOAD_AT_START = os.getloadavg()
    apply_env(args)
    from triage.config import get_settings

    settings = get_settings(torch_threads=args.threads)
    versions = model_versions(settings.weights_dir)
    check_write(args, versions)
    return settings, versions


def finish(args: argparse.Namespace, section: str, lines: list[str], versions: dict) -> int:
    """Print the report and, with ``--write``, replace its section of the results file."""
    body = "\n".join(lines)
    print(body)
    if args.write:
        write_section(args.results_file, section, body, versions)
    return 0


def die(msg: str, code: int) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(code)


# ----- models ------------------------------------------------------------------------------------
def model_versions(weights_dir: Path) -> dict[str, dict]:
    """{task: {version, trained, arch, input_size}} of the active models; exits 2 when one is missing."""
    from triage.errors import ModelNotFoundError
    from triage.models import TASKS, active_version, read_card

    out = {}
    for task in TASKS:
        try:
            v = active_version(weights_dir, task)
            card = read_card(weights_dir, task, v)
        except (ModelNotFoundError, OSError, ValueError) as exc:
            die(
                f"no usable {task} model in {weights_dir}: {exc}\n"
                f"Train and activate one (python -m triage train {task} ... --activate) or pass --weights-dir.",
                EXIT_NO_MODEL,
            )
        out[task] = {"version": v, "trained": card.trained, "arch": card.arch, "input_size": card.input_size}
    return out


def all_trained(versions: dict[str, dict]) -> bool:
    return all(v["trained"] for v in versions.values())


def crop_kwargs(classifier) -> dict:
    """The brain-crop settings the service uses for this classifier (its model card, else the legacy crop)."""
    from triage import preprocess

    return dict(classifier.model.meta.get("crop", getattr(preprocess, "LEGACY_CROP", {})))


def check_write(args: argparse.Namespace, versions: dict[str, dict]) -> None:
    """Refuse ``--write`` up front (before any measuring) when the active models are placeholders."""
    if getattr(args, "write", False) and not all_trained(versions):
        die(
            "--write refused: the active models are untrained placeholders; these would not be real figures "
            "(run without --write for a dry run)",
            EXIT_FAILED,
        )


# ----- machine -----------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return float("nan")


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO_DIR), "status", "--porcelain", "--untracked-files=no"],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() + (" (+local changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine_info(threads: int | None, versions: dict[str, dict] | None) -> list[tuple[str, str]]:
    import torch

    cores = os.cpu_count() or 0
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = cores
    load1, load5, _ = load_at_start()
    rows = [
        ("date (UTC)", dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")),
        ("CPU", _cpu_model()),
        ("cores", f"{cores} logical, {usable} usable"),
        ("RAM", f"{_mem_total_gib():.1f} GiB"),
        ("load average (1 / 5 min) at start", f"{load1:.2f} / {load5:.2f}"),
        ("python / torch", f"{platform.python_version()} / {torch.__version__}"),
        ("torch threads", str(threads) if threads else "-"),
        ("git commit", _git_commit()),
    ]
    if versions:
        for task, v in versions.items():
            rows.append(
                (
                    f"{task} (active)",
                    (
                        f"{v['version']} ({v['arch']}, input {v['input_size']}, "
                        f"{'trained' if v['trained'] else 'UNTRAINED'})"
                    ),
                )
            )
    return rows


def header(title: str, command: str, threads: int | None, versions: dict[str, dict] | None) -> str:
    lines = [f"### {title}", "", f"Command: `{command}`", "", table(["machine", ""], machine_info(threads, versions))]
    load1 = load_at_start()[0]
    cores = os.cpu_count() or 1
    if load1 > 0.5 * cores:
        lines += [
            "",
            (
                f"> **Warning: load average {load1:.1f} on {cores} cores at start: the machine is busy, "
                f"these figures are not representative.**"
            ),
        ]
    if versions and not all_trained(versions):
        lines += ["", "> **Untrained (placeholder) models: a dry run, not real figures.**"]
    return "\n".join(lines)


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], REPO_DIR)] + sys.argv[1:])


# ----- data --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Slice:
    path: Path
    label: str
    split: str
    width: int
    height: int


def brisc_dir(arg: str | None) -> Path:
    if arg:
        d = Path(arg)
    else:
        env = os.environ.get("TRIAGE_SHARED_DATA")
        if env and (Path(env) / "manifest.csv").is_file():
            d = Path(env)
        else:
            from triage.config import get_settings

            d = get_settings().shared_data_dir / "brisc2025"
    if not (d / "manifest.csv").is_file():
        die(
            f"BRISC 2025 manifest not found at {d / 'manifest.csv'} (pass --data or set $TRIAGE_SHARED_DATA)",
            EXIT_NO_DATA,
        )
    return d


def load_brisc(root: Path) -> list[Slice]:
    """Classification slices of the BRISC manifest (existing files only, labels normalised)."""
    from triage.records import normalize_label

    out = []
    with (root / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            label = normalize_label(row.get("label") or "")
            p = root / row["path"]
            if label is None or not p.is_file():
                continue
            out.append(
                Slice(
                    path=p,
                    label=label,
                    split=(row.get("split") or "").strip(),
                    width=int(row.get("width") or 0),
                    height=int(row.get("height") or 0),
                )
            )
    return out


def select_slices(
    slices: list[Slice], n: int, seed: int, size: tuple[int, int] | None = None, stratified: bool = False
) -> list[Slice]:
    """Up to ``n`` slices: the test split first, then train; seeded; optionally of one size.

    ``stratified`` keeps the class proportions of the pool (largest-remainder allocation).
    """
    pool = [s for s in slices if size is None or (s.width, s.height) == size]
    rng = random.Random(seed)
    chosen: list[Slice] = []
    for split in ("test", "train", ""):
        part = sorted((s for s in pool if s.split == split), key=lambda s: str(s.path))
        need = n - len(chosen)
        if need <= 0:
            break
        if len(part) <= need:
            rng.shuffle(part)
            chosen += part
        elif stratified:
            chosen += stratified_sample(part, need, rng)
        else:
            chosen += rng.sample(part, need)
    return chosen


def stratified_sample(items: list[Slice], n: int, rng: random.Random) -> list[Slice]:
    by: dict[str, list[Slice]] = {}
    for s in items:
        by.setdefault(s.label, []).append(s)
    exact = {k: n * len(v) / len(items) for k, v in by.items()}
    alloc = {k: math.floor(x) for k, x in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - alloc[k], reverse=True)[: n - sum(alloc.values())]:
        alloc[k] += 1
    out = []
    for k in sorted(by):
        out += rng.sample(by[k], alloc[k])
    rng.shuffle(out)
    return out


# ----- statistics and tables ---------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values."""
    v = sorted(values)
    if not v:
        return float("nan")
    k = (len(v) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return percentile(values, 50)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def fmt(x: float, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def table(head: list[str], rows: list[tuple | list]) -> str:
    def cell(v: object) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(cell(h) for h in head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


# ----- RESULTS.md --------------------------------------------------------------------------------
def write_section(results_file: str | Path, name: str, body: str, versions: dict[str, dict] | None) -> None:
    """Replace the text between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` in RESULTS.md."""
    if versions is not None and not all_trained(versions):
        die("--write refused: the active models are untrained placeholders; these are not real figures", EXIT_FAILED)
    path = Path(results_file)
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmark results\n"
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")
    print(f"\n(section '{name}' of {path} updated)", file=sys.stderr)


# ----- processes ---------------------------------------------------------------------------------
def proc_status_kib(pid: int, key: str) -> int:
    """A ``VmRSS``/``VmHWM``-style field of /proc/<pid>/status in KiB (0 when gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """``pid`` and all its descendant process ids (from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def tree_kib(pid: int, key: str = "VmRSS") -> int:
    return sum(proc_status_kib(p, key) for p in descendants(pid))


def run_measured(cmd: list[str], env: dict | None = None, stdin_path: Path | None = None) -> dict:
    """Run ``cmd`` as a child (cwd: the repository) to its exit: wall s, CPU s (user + system from
    ``os.wait4``), peak RSS MiB (``ru_maxrss``; the largest VmRSS sampled every 0.1 s beside it),
    exit code, stdout and stderr.

    Caveat: Linux carries the high-water mark across exec, so ``ru_maxrss`` is never below the
    VmHWM of *this* process when it spawned the child; measure memory from a small parent."""
    stdin = stdin_path.open("rb") if stdin_path else subprocess.DEVNULL
    peak = [0]
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(cmd, cwd=REPO_DIR, env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    finally:
        if stdin_path:
            stdin.close()
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc_status_kib(proc.pid, "VmRSS"))
            done.wait(0.1)

    # Drain the pipes in threads so a chatty child never blocks; reap with wait4 for its rusage.
    outs: dict[str, bytes] = {}
    threads = [threading.Thread(target=sample, daemon=True)] + [
        threading.Thread(target=lambda k=k, f=f: outs.__setitem__(k, f.read()), daemon=True)
        for k, f in (("out", proc.stdout), ("err", proc.stderr))
    ]
    for t in threads:
        t.start()
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    for t in threads:
        t.join()
    return {
        "wall_s": wall,
        "cpu_s": rusage.ru_utime + rusage.ru_stime,
        "maxrss_mib": rusage.ru_maxrss / 1024,
        "sampled_mib": peak[0] / 1024,
        "rc": proc.returncode,
        "stdout": outs.get("out", b"").decode(errors="replace"),
        "stderr": outs.get("err", b"").decode(errors="replace"),
    }
