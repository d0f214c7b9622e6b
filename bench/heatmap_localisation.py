"""Does the heatmap point at the tumour? Grad-CAM family of the active models on BRISC tumour slices.

For tumour slices with a ground-truth mask, the classifier's heatmap of the predicted class and the
segmenter's Seg-Grad-CAM (``seg-gradcam``: evidence for the pixels it calls tumour) are scored with the pointing game (is the hottest pixel inside the mask, dilated by 5% of the
head's width?) and the share of heatmap energy inside the mask, beside the mask's share of the
crop (what a heatmap spread evenly would score). ``--layers`` compares target layers; choose on
``--split train`` and report on ``test`` (issue 16: "the heatmap often points away from the lesion").

    python bench/heatmap_localisation.py --n 100 --layers bn2,blocks.5,blocks.4 --split train
    python bench/heatmap_localisation.py --n 60 --split train --methods seg-gradcam \
        --seg-layers decoder.blocks.0,decoder.blocks.1,decoder.blocks.2
    python bench/heatmap_localisation.py --n 200 --methods seg-gradcam,gradcam,layercam --write

Target (issue 16): pointing game >= 0.80 on BRISC test tumours.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import time
from pathlib import Path

import _common as C
import cv2
import numpy as np

TARGET_POINTING = 0.80
REPORT = Path(__file__).resolve().parent.parent / "reports" / "heatmap_localisation.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.add_common_args(p)
    p.add_argument("--n", type=int, default=100, help="tumour slices with masks (default 100)")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--layers", default="", help="comma-separated gradcam layers (default: the card's)")
    p.add_argument("--seg-layers", default="", help="comma-separated segmenter layers for seg-gradcam")
    p.add_argument("--methods", default="gradcam", help="comma-separated methods of triage.explain.METHODS")
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
    from triage.explain import SEGMENTER_DEFAULT_LAYER, SEGMENTER_METHOD, explain, explain_segmenter
    from triage.service import TriageService

    service = TriageService(settings)
    clf, seg = service.models().classifier, service.models().segmenter
    service.torch_ready()
    card = clf.model.meta
    seg_card = seg.model.meta
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
    rows, records = [], []
    methods = [m for m in args.methods.split(",") if m]
    runs = [(la, me) for la in layers for me in methods if me != SEGMENTER_METHOD]
    seg_layers = [s for s in args.seg_layers.split(",") if s] or [
        seg_card.get("gradcam_layer") or SEGMENTER_DEFAULT_LAYER
    ]
    runs += [(la, SEGMENTER_METHOD) for la in seg_layers if SEGMENTER_METHOD in methods]
    for layer, method in runs:
        hits, energies, shares, ms = [], [], [], []
        for r, truth in cases:
            t = time.perf_counter()
            if method == SEGMENTER_METHOD:
                heat = explain_segmenter(seg.model.net, {**seg_card, "gradcam_layer": layer}, r.crop.image)
            else:
                meta = {**card, "gradcam_layer": "" if layer == "(last conv)" else layer}
                heat = explain(clf.net, meta, r.crop.image, r.prediction.label, method=method)
            ms.append((time.perf_counter() - t) * 1000)
            hit, energy, share = score(heat, truth, r.crop.image.shape[1])
            hits.append(hit)
            energies.append(energy)
            shares.append(share)
        lo, hi = C.wilson(sum(hits), len(hits))
        records.append(
            {
                "model": "segmenter" if method == SEGMENTER_METHOD else "classifier",
                "layer": layer,
                "method": method,
                "slices": len(hits),
                "pointing_game": round(float(np.mean(hits)), 4),
                "pointing_game_ci95": [round(lo, 4), round(hi, 4)],
                "energy_in_mask_median": round(float(np.median(energies)), 4),
                "mask_share_median": round(float(np.median(shares)), 4),
            }
        )
        rows.append(
            [
                ("segmenter " if method == SEGMENTER_METHOD else "classifier ")
                + layer
                + (" (card)" if method != SEGMENTER_METHOD and layer == card.get("gradcam_layer") else ""),
                method,
                len(hits),
                f"{np.mean(hits):.3f} ({lo:.3f}-{hi:.3f})",
                "PASS" if np.mean(hits) >= TARGET_POINTING else "FAIL",
                f"{np.median(energies):.3f}",
                f"{np.median(shares):.3f}",
                C.fmt(C.median(ms)),
            ]
        )
    lines = [
        C.header(f"Heatmap localisation on BRISC {args.split} tumour slices", C.command_line(), args.threads, versions),
        "classifier methods: heatmap of the predicted class; seg-gradcam: the segmenter's evidence for the pixels "
        "it calls tumour; pointing game within 5% of the head width of the mask; "
        "energy = share of the heatmap inside the mask (an even spread scores the mask's share).",
        "",
        C.table(
            [
                "layer",
                "method",
                "slices",
                "pointing game (95% CI)",
                f">= {TARGET_POINTING}",
                "energy in mask, median",
                "mask share, median",
                "ms",
            ],
            rows,
        ),
    ]
    if args.write and args.split == "test":  # what the Model page reports
        REPORT.write_text(
            json.dumps(
                {
                    "split": f"BRISC {args.split} tumour slices with masks",
                    "measured": time.strftime("%Y-%m-%d", time.gmtime()),
                    "target_pointing_game": TARGET_POINTING,
                    "models": {t: v.get("version") for t, v in versions.items()},
                    "rows": records,
                },
                indent=1,
            ),
            encoding="utf-8",
        )
    return C.finish(args, f"heatmap_{args.split}", lines, versions)


if __name__ == "__main__":
    raise SystemExit(main())
