#!/usr/bin/env python3
"""Per-stage and end-to-end latency of one 512x512 slice, plus batched classification throughput.

Each stage is timed around the real function, warm (after ``--warmup`` untimed runs), on
``--n`` real BRISC 2025 slices (test split first, then train), with ``--threads`` torch threads:

  decode    triage.io.read_scans(bytes)                       (file bytes already in memory)
  crop      triage.preprocess.crop_brain (with the classifier card's crop settings)
  classify  Classifier.predict([crop])                        (batch of one)
  segment   Segmenter.segment([crop], ...)
  Grad-CAM  TriageService.explain(result)
  overlay   overlay.heatmap_overlay + overlay.mask_contour_overlay
  end to end  TriageService.analyze_bytes(data, name, explain=True) + both overlays

Batched: Classifier.predict on batches of ``--batch`` crops (crops precomputed), and
TriageService.analyze_scans on batches of decoded scans (crop + classify + segment + risk).

Example: python bench/latency.py --n 200 --threads 2 --write
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

TARGET_E2E_MS = 150.0
TARGET_BATCHED_PER_S = 40.0
STAGES = ("decode", "crop", "classify", "segment", "gradcam", "overlay")
STAGE_NAMES = {
    "decode": "decode",
    "crop": "crop",
    "classify": "classify",
    "segment": "segment",
    "gradcam": "Grad-CAM",
    "overlay": "overlay (heatmap + mask outline)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200, help="number of 512x512 slices timed (default 200)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up runs of the whole pipeline (default 5)")
    p.add_argument("--batch", type=int, default=32, help="batch size of the batched measurements (default 32)")
    p.add_argument(
        "--batches", type=int, default=0, help="timed batches (default: enough to cover the N slices, at least 3)"
    )
    C.add_common_args(p)
    return p.parse_args(argv)


def ms_since(t: float) -> float:
    return (time.perf_counter() - t) * 1000


def run_one(service, clf, seg, data: bytes, name: str) -> tuple[dict[str, float], object]:
    """Time every stage of one slice; returns {stage: ms} and the crop (for the batched part)."""
    from triage.io import read_scans
    from triage.overlay import heatmap_overlay, mask_contour_overlay
    from triage.preprocess import crop_brain
    from triage.records import CaseResult

    ms = {}
    t = time.perf_counter()
    scans = read_scans(data, name, service.settings)
    ms["decode"] = ms_since(t)
    scan = scans[0]
    t = time.perf_counter()
    crop = crop_brain(scan.pixels, **C.crop_kwargs(clf))
    ms["crop"] = ms_since(t)
    t = time.perf_counter()
    pred = clf.predict([crop.image])[0]
    ms["classify"] = ms_since(t)
    t = time.perf_counter()
    mask = seg.segment([crop], [scan.shape], [scan.pixel_spacing])[0]
    ms["segment"] = ms_since(t)
    case = CaseResult(name=name, status="ok", scan_id=scan.scan_id, scan=scan, crop=crop, prediction=pred)
    t = time.perf_counter()
    exp = service.explain(case)
    ms["gradcam"] = ms_since(t)
    t = time.perf_counter()
    heat = heatmap_overlay(scan.pixels, exp.heatmap)
    mask_contour_overlay(heat, mask.mask)
    ms["overlay"] = ms_since(t)
    return ms, (scan, crop)


def run_e2e(service, data: bytes, name: str) -> tuple[float, dict, bool]:
    """analyze_bytes(explain=True) + the two display overlays, as the case view does."""
    from triage.overlay import heatmap_overlay, mask_contour_overlay

    t = time.perf_counter()
    results = service.analyze_bytes(data, name, explain=True)
    r = results[0]
    if r.ok:
        heat = heatmap_overlay(r.scan.pixels, r.explanation.heatmap)
        mask_contour_overlay(heat, r.segmentation.mask)
    return ms_since(t), dict(r.timings_ms), r.ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings, versions = C.start(args)
    slices = C.select_slices(C.load_brisc(C.brisc_dir(args.data)), args.n, args.seed, size=(512, 512))
    if not slices:
        C.die("no 512x512 slices found in the manifest", C.EXIT_NO_DATA)

    import torch

    from triage.service import TriageService

    service = TriageService(settings)
    torch.set_num_threads(args.threads)
    bundle = service.models()
    clf, seg = bundle.classifier, bundle.segmenter
    blobs = [(s.path.read_bytes(), s.path.name) for s in slices]

    for i in range(args.warmup):
        data, name = blobs[i % len(blobs)]
        run_one(service, clf, seg, data, name)
        run_e2e(service, data, name)

    per_stage: dict[str, list[float]] = {k: [] for k in STAGES}
    sums, e2e, reported = [], [], {k: [] for k in ("decode", "crop", "classify", "segment", "gradcam")}
    scans_crops, rejected = [], 0
    for data, name in blobs:
        ms, sc = run_one(service, clf, seg, data, name)
        scans_crops.append(sc)
        for k in STAGES:
            per_stage[k].append(ms[k])
        sums.append(sum(ms.values()))
        total, timings, ok = run_e2e(service, data, name)
        e2e.append(total)
        rejected += not ok
        for k, values in reported.items():
            if k in timings:
                values.append(float(timings[k]))

    # Batched: Classifier.predict on precomputed crops; analyze_scans on decoded scans.
    n = len(scans_crops)
    b = max(1, args.batch)
    n_batches = args.batches or max(3, math.ceil(n / b))

    def batch(i: int) -> list:
        return [scans_crops[(i * b + j) % n] for j in range(b)]

    clf.predict([c.image for _, c in batch(0)])  # warm-up
    cls_times = []
    for i in range(n_batches):
        crops = [c.image for _, c in batch(i)]
        t = time.perf_counter()
        clf.predict(crops)
        cls_times.append(time.perf_counter() - t)
    service.analyze_scans([s for s, _ in batch(0)])
    pipe_times = []
    for i in range(n_batches):
        scans = [s for s, _ in batch(i)]
        t = time.perf_counter()
        service.analyze_scans(scans, explain=False)
        pipe_times.append(time.perf_counter() - t)
    cls_rate = b * n_batches / sum(cls_times)
    pipe_rate = b * n_batches / sum(pipe_times)

    rows = []
    for k in STAGES:
        v = per_stage[k]
        rep = reported.get(k)
        rows.append(
            (
                STAGE_NAMES[k],
                C.fmt(C.median(v)),
                C.fmt(C.percentile(v, 95)),
                C.fmt(sum(v) / len(v)),
                C.fmt(C.median(rep)) if rep else "-",
            )
        )
    rows.append(
        ("sum of the stages", C.fmt(C.median(sums)), C.fmt(C.percentile(sums, 95)), C.fmt(sum(sums) / len(sums)), "")
    )
    rows.append(
        (
            "**end to end** (analyze_bytes explain=True + overlays)",
            f"**{C.fmt(C.median(e2e))}**",
            C.fmt(C.percentile(e2e, 95)),
            C.fmt(sum(e2e) / len(e2e)),
            "",
        )
    )
    e2e_med = C.median(e2e)
    out = [
        C.header("Latency per 512x512 slice", C.command_line(), args.threads, versions),
        "",
        f"{n} slices of 512x512 (BRISC 2025, test split first), warm ({args.warmup} warm-up runs), "
        f"{args.threads} torch threads, one slice at a time. Milliseconds. "
        f"'service-reported' is CaseResult.timings_ms from the end-to-end runs."
        + (f" {rejected} end-to-end result(s) were rejected (no overlay drawn)." if rejected else ""),
        "",
        C.table(["stage", "median ms", "p95 ms", "mean ms", "service-reported median ms"], rows),
        "",
        f"Batched ({n_batches} timed batches of {b} after one warm-up batch):",
        "",
        C.table(
            ["measurement", "slices/s", "ms per slice"],
            [
                (
                    f"classification only: Classifier.predict, batch {b} (crops precomputed)",
                    C.fmt(cls_rate),
                    C.fmt(1000 / cls_rate, 2),
                ),
                (
                    f"pipeline without Grad-CAM: analyze_scans, batch {b} (scans decoded)",
                    C.fmt(pipe_rate),
                    C.fmt(1000 / pipe_rate, 2),
                ),
            ],
        ),
        "",
        C.table(
            ["target", "measured", "verdict"],
            [
                (
                    f"end to end incl. segmentation and Grad-CAM, median <= {TARGET_E2E_MS:.0f} ms",
                    f"{C.fmt(e2e_med)} ms",
                    C.verdict(e2e_med <= TARGET_E2E_MS),
                ),
                (
                    f"classification only, batched >= {TARGET_BATCHED_PER_S:.0f} slices/s",
                    f"{C.fmt(cls_rate)} slices/s",
                    C.verdict(cls_rate >= TARGET_BATCHED_PER_S),
                ),
            ],
        ),
    ]
    return C.finish(args, "latency", out, versions)


if __name__ == "__main__":
    raise SystemExit(main())
