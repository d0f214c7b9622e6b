"""Does the heatmap point at the tumour? Grad-CAM of the active classifier on BRISC tumour slices.

For tumour slices with a ground-truth mask, the heatmap of the predicted class (the one case review
shows) is scored with the pointing game (is the hottest pixel inside the mask, dilated by 5% of the
head's width?) and the share of heatmap energy inside the mask, beside the mask's share of the
crop (what a heatmap spread evenly would score). ``--layers`` compares target layers; choose on
``--split train`` and report on ``test`` (issue 16: "the heatmap often points away from the lesion").

    python bench/heatmap_localisation.py --n 100 --layers bn2,blocks.5,blocks.4 --split train
    python bench/heatmap_localisation.py --n 200 --write
"""

from __future__ import annotations

import argparse
import csv
import random
import time

import _common as C
import cv2
import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.add_common_args(p)
    p.add_argument("--n", type=int, default=100, help="tumour slices with masks (default 100)")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--layers", default="", help="comma-separated gradcam layers (default: the card's)")
    p.add_argument("--method", default="gradcam")
    return p.parse_args(argv)


def tumour_slices(root, split: str, n: int, seed: int) -> list[tuple]:
    with (root / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == split and r["label"] != "no_tumor" and r["mask_path"]]
    random.Random(seed).shuffle(rows)
    return [(root / r["path"], root / r["mask_path"]) for r in rows[:n]]


def score(heat: np.ndarray, truth: np.ndarray, head_width: int) -> tuple[bool, float, float]:
    r = max(1, int(0.05 * head_width))
    near = cv2.dilate(truth.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    energy = float(heat[truth].sum() / max(heat.sum(), 1e-9))
    return bool(near[y, x]), energy, float(truth.mean())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings, versions = C.start(args)
    from triage.datasets import read_mask
    from triage.explain import explain
    from triage.service import TriageService

    service = TriageService(settings)
    clf = service.models().classifier
    service.torch_ready()
    card = clf.model.meta
    layers = [s for s in args.layers.split(",") if s] or [card.get("gradcam_layer") or "(last conv)"]
    cases = []
    for img_path, mask_path in tumour_slices(C.brisc_dir(args.data), args.split, args.n, args.seed):
        (r,) = service.analyze_path(img_path)
        if not r.ok:
            continue
        x0, y0, x1, y1 = r.crop.bbox
        truth = read_mask(mask_path, r.scan.shape)[y0:y1, x0:x1]
        if truth.any():
            cases.append((r, truth))
    rows = []
    for layer in layers:
        meta = {**card, "gradcam_layer": "" if layer == "(last conv)" else layer}
        hits, energies, shares, ms = [], [], [], []
        for r, truth in cases:
            t = time.perf_counter()
            heat = explain(clf.net, meta, r.crop.image, r.prediction.label, method=args.method)
            ms.append((time.perf_counter() - t) * 1000)
            hit, energy, share = score(heat, truth, r.crop.image.shape[1])
            hits.append(hit)
            energies.append(energy)
            shares.append(share)
        lo, hi = C.wilson(sum(hits), len(hits))
        rows.append(
            [
                layer + (" (card)" if layer == card.get("gradcam_layer") else ""),
                len(hits),
                f"{np.mean(hits):.3f} ({lo:.3f}-{hi:.3f})",
                f"{np.median(energies):.3f}",
                f"{np.median(shares):.3f}",
                C.fmt(C.median(ms)),
            ]
        )
    lines = [
        C.header(f"Heatmap localisation on BRISC {args.split} tumour slices", C.command_line(), args.threads, versions),
        f"{args.method} of the predicted class; pointing game within 5% of the head width of the mask; "
        "energy = share of the heatmap inside the mask (an even spread scores the mask's share).",
        "",
        C.table(
            ["layer", "slices", "pointing game (95% CI)", "energy in mask, median", "mask share, median", "ms"],
            rows,
        ),
    ]
    return C.finish(args, f"heatmap_{args.split}", lines, versions)


if __name__ == "__main__":
    raise SystemExit(main())
