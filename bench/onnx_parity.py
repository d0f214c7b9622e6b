"""Same results on both backends: the active models on the BRISC test split, ONNX Runtime vs torch.

Prints, for every slice of the test split (or ``--n``): the largest probability difference, label
and mask disagreements, and the median time per slice of each backend (issue 17: probabilities
within 1e-4, identical labels and masks).

    python bench/onnx_parity.py            # the whole BRISC test split (1000 slices)
    python bench/onnx_parity.py --n 100 --write
"""

from __future__ import annotations

import argparse
import time

import _common as C
import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.add_common_args(p)
    p.add_argument("--n", type=int, default=0, help="slices of the test split (default: all)")
    return p.parse_args(argv)


def run(settings, backend: str, paths: list) -> tuple[list, list[float]]:
    from dataclasses import replace

    from triage.service import TriageService

    service = TriageService(replace(settings, inference_backend=backend, inference_threads=settings.torch_threads))
    service.models()
    results, ms = [], []
    for path in paths:
        t = time.perf_counter()
        (r,) = service.analyze_path(path)
        ms.append((time.perf_counter() - t) * 1000)
        results.append(r)
    return results, ms


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings, versions = C.start(args)
    test = [s for s in C.load_brisc(C.brisc_dir(args.data)) if s.split == "test"]
    test = sorted(test, key=lambda s: str(s.path))[: args.n or None]
    paths = [s.path for s in test]
    onnx, onnx_ms = run(settings, "onnx", paths)
    torch_results, torch_ms = run(settings, "torch", paths)
    dp, labels, masks, pixels, statuses = 0.0, 0, 0, 0, 0
    for a, b in zip(onnx, torch_results):
        if a.status != b.status:
            statuses += 1
            continue
        if not a.ok:
            continue
        dp = max(dp, float(np.abs(a.prediction.probs - b.prediction.probs).max()))
        labels += a.prediction.label != b.prediction.label
        differ = int((a.segmentation.mask != b.segmentation.mask).sum())
        masks += differ > 0
        pixels += differ
    lines = [
        C.header("ONNX Runtime vs torch on the BRISC test split", C.command_line(), args.threads, versions),
        f"{len(paths)} slices, one at a time through `TriageService.analyze_path`, {args.threads} threads each.",
        "",
        C.table(
            ["measure", "result", "target", "verdict"],
            [
                ["largest probability difference", f"{dp:.2e}", "<= 1e-4", C.verdict(dp <= 1e-4)],
                ["slices with a different label", labels, "0", C.verdict(labels == 0)],
                ["slices with a different mask (pixels)", f"{masks} ({pixels} px)", "0", C.verdict(masks == 0)],
                ["slices with a different status", statuses, "0", C.verdict(statuses == 0)],
                ["median ms per slice, ONNX Runtime", C.fmt(C.median(onnx_ms)), "", ""],
                ["median ms per slice, torch", C.fmt(C.median(torch_ms)), "", ""],
            ],
        ),
    ]
    return C.finish(args, "onnx_parity", lines, versions)


if __name__ == "__main__":
    raise SystemExit(main())
