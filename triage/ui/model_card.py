"""Model cards for the Model page: metadata.json -> readable rows (no streamlit here)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from triage.config import REPO_DIR
from triage.ui.format import escape_md

REPORTS_DIR = REPO_DIR / "reports"

NOT_FOR = """\
- **Not a diagnosis.** It orders the reading queue and points at regions; a radiologist reads every case.
- **Single 2D slices only**: it never sees the rest of the volume, earlier studies or the clinical question.
- Trained on **T1 contrast-enhanced** slices from public datasets: expect lower accuracy on T2, FLAIR,
  other sequences and on images from other hospitals and scanners.
- **Not for children**, **post-operative** or post-treatment scans.
- Knows only glioma, meningioma and pituitary tumors: **other tumor types** (metastases, lymphoma,
  schwannoma...) and other diseases (stroke, haemorrhage, abscess) are not recognised and may be called
  anything, including "no tumor".
"""


def _num(value: object, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    return str(value)


def _pct(value: object) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"


def card_rows(task: str, meta: dict) -> list[tuple[str, str]]:
    """(field, value) rows describing a model version from its metadata.json."""
    data = meta.get("data") or {}
    rows = [
        ("Architecture", str(meta.get("arch", "—"))),
        ("Version", str(meta.get("version", "—"))),
        ("Created", str(meta.get("created", "—"))),
        ("Trained", "yes" if meta.get("trained") else "NO — untrained placeholder"),
        ("Input size", f"{meta.get('input_size', '—')} px, 1 channel (greyscale brain crop)"),
    ]
    if meta.get("preprocess"):
        rows.append(("Preprocessing", str(meta["preprocess"])))
    if isinstance(meta.get("crop"), dict) and meta["crop"]:
        rows.append(("Brain-crop settings", ", ".join(f"{k}={v}" for k, v in meta["crop"].items())))
    if meta.get("intensity_norm"):
        rows.append(
            (
                "Intensity standardisation",
                (
                    f"{meta['intensity_norm']}: each crop's head 10/50/90/99th "
                    "percentiles mapped to fixed values before the model sees it"
                ),
            )
        )
    if task == "classifier":
        rows.append(("Class order", ", ".join(meta.get("classes") or []) or "—"))
        rows.append(("Temperature (calibration)", _num(meta.get("temperature"))))
        ood = meta.get("ood") or {}
        if ood.get("threshold") is not None:
            rule = ood.get("threshold_rule", "score limit")
            rows.append(("Out-of-distribution threshold", f"{_num(float(ood['threshold']), 1)} ({rule})"))
    else:
        rows.append(("Mask threshold", _num(meta.get("threshold"), 2)))
        rows.append(
            (
                "Minimum mask area",
                _pct(meta.get("min_area_frac"))
                + (" of the brain crop" if meta.get("min_area_frac") is not None else ""),
            )
        )
        if meta.get("loss"):
            rows.append(("Training loss", str(meta["loss"])))
    if meta.get("tta") is not None:
        rows.append(("Test-time augmentation", "mean of the slice and its mirror image" if meta["tta"] else "none"))
    cfg = meta.get("train_config") or {}
    if cfg.get("init_from"):
        rows.append(("Lineage", f"fine-tuned from version {cfg['init_from']} (its card records how that was trained)"))
    if cfg.get("sequence_aug"):
        share = f"{cfg['sequence_aug']:.0%} of"
        if cfg.get("sequence_aug_no_tumor") is not None:
            share += f" tumor and {cfg['sequence_aug_no_tumor']:.0%} of no-tumor"
        rows.append(
            (
                "Cross-sequence augmentation",
                f"tone-curve remap inside the head on {share} training images, imitating other MRI sequences",
            )
        )
    if cfg.get("enhancement_aug"):
        share = f"{cfg['enhancement_aug']:.0%}"
        rows.append(
            (
                "Enhancement suppression",
                (
                    f"brightest tones inside the head compressed on {share} of "
                    "training images, so a tumor is not recognised by contrast "
                    "enhancement alone"
                ),
            )
        )
    rows.extend(_data_rows(data))
    if meta.get("wall_time_min") is not None:
        rows.append(("Training wall time", f"{meta['wall_time_min']} min"))
    if meta.get("best_epoch") is not None:
        rows.append(("Best epoch", str(meta["best_epoch"])))
    return rows


def _counts(counts: object) -> str:
    if not isinstance(counts, dict) or not counts:
        return ""
    return " (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")"


def _data_rows(data: dict) -> list[tuple[str, str]]:
    """Image counts of the training data block (known keys first, other integers as they are)."""
    if not data:
        return []
    rows = []
    if data.get("used_train") is not None:
        rows.append(("Training images", f"{data['used_train']}{_counts(data.get('train_counts'))}"))
    if data.get("used_val") is not None:
        rows.append(("Validation images", f"{data['used_val']}{_counts(data.get('val_counts'))}"))
    sources = data.get("sources")
    if isinstance(sources, dict) and sources:
        rows.append(
            (
                "Sources",
                "; ".join(
                    f"{name}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in part.items())
                    if isinstance(part, dict)
                    else f"{name}: {part}"
                    for name, part in sources.items()
                ),
            )
        )
    known = {"used_train", "used_val", "seed", "val_fraction"}
    other = [
        f"{k.replace('_', ' ')}: {v}"
        for k, v in data.items()
        if k not in known and isinstance(v, int) and not isinstance(v, bool)
    ]
    if other:
        rows.append(("Other data counts", "; ".join(other)))
    return rows


def metric_rows(task: str, meta: dict) -> list[tuple[str, str]]:
    """Validation metrics of the model card (empty when the model was never evaluated)."""
    val = (meta.get("metrics") or {}).get("validation") or {}
    if not val:
        return []
    if task == "classifier":
        after = val.get("after_calibration") or {}
        rows = [("Validation images", _num(after.get("n")))] if after.get("n") is not None else []
        ci = after.get("accuracy_ci95")
        acc = _pct(after.get("accuracy"))
        if isinstance(ci, (list, tuple)) and len(ci) == 2:
            acc += f" (95% CI {_pct(ci[0])}–{_pct(ci[1])})"
        rows += [
            ("Accuracy", acc),
            ("Macro F1", _num(after.get("macro_f1"))),
            ("Tumor-miss rate (tumor called no_tumor)", _pct(after.get("tumor_miss_rate"))),
            ("No-tumor false-alarm rate", _pct(after.get("no_tumor_false_alarm_rate"))),
            ("ECE before calibration", _num(val.get("ece_before"))),
            ("ECE after calibration", _num(val.get("ece_after"))),
        ]
        return rows
    return [
        ("Dice (tumor slices)", _num(val.get("dice"))),
        ("IoU (tumor slices)", _num(val.get("iou"))),
        ("False-positive mask rate (tumor-free slices)", _pct(val.get("fp_rate"))),
        ("Tumor / tumor-free validation slices", f"{_num(val.get('n_tumor'))} / {_num(val.get('n_empty'))}"),
    ]


def per_class_rows(meta: dict) -> list[dict]:
    """Per-class precision/recall/F1/support of the calibrated classifier (validation)."""
    after = ((meta.get("metrics") or {}).get("validation") or {}).get("after_calibration") or {}
    return [{"class": c, **m} for c, m in (after.get("per_class") or {}).items()]


def markdown_table(rows: list[tuple[str, str]]) -> str:
    """Two-column markdown table (wraps long values, unlike a scrolling dataframe)."""

    def cell(text: object) -> str:  # card values can come from imported data: plain text only
        return escape_md(str(text).replace("\n", " "))

    return "\n".join(["| Field | Value |", "|---|---|", *(f"| {cell(k)} | {cell(v)} |" for k, v in rows)])


def reports(directory: Path | None = None) -> list[tuple[str, str]]:
    """(file name, markdown text) of every ``*.md`` evaluation report (default ``reports/``), by name."""
    directory = Path(directory) if directory is not None else REPORTS_DIR
    if not directory.is_dir():
        return []
    out = []
    for path in sorted(directory.glob("*.md")):
        try:
            out.append((path.name, path.read_text(encoding="utf-8", errors="replace")))
        except OSError:
            out.append((path.name, "*cannot read this report (the file is not readable)*"))
    return out


def licence_rows(meta: dict) -> list[dict]:
    """The card's training sources with their licences (empty for cards that predate the list)."""
    return [
        {
            "source": s.get("source", ""),
            "training images": s.get("train_images", 0),
            "licence": s.get("licence", "unknown"),
            "commercial use": "allowed" if s.get("commercial_use") else "NOT allowed",
        }
        for s in meta.get("training_sources") or []
    ]


HEATMAP_REPORT = "heatmap_localisation.json"  # in REPORTS_DIR, written by bench/heatmap_localisation.py
METHOD_LABEL = {
    "seg-gradcam": "Seg-Grad-CAM of the segmenter",
    "gradcam": "Grad-CAM of the classifier",
    "gradcam++": "Grad-CAM++ of the classifier",
    "layercam": "Layer-CAM of the classifier",
    "eigencam": "Eigen-CAM of the classifier",
}


@dataclass(frozen=True)
class HeatmapLocalisation:
    """What ``bench/heatmap_localisation.py --write`` measured: does each heatmap point at the lesion?"""

    split: str
    measured: str
    target: float
    rows: list[dict]

    @property
    def best(self) -> dict | None:
        return max(self.rows, key=lambda r: r["pointing_game"], default=None)

    @property
    def reached(self) -> bool:
        best = self.best
        return best is not None and best["pointing_game"] >= self.target

    def table(self) -> list[dict]:
        """One row per method and layer, for a dataframe."""
        return [
            {
                "heatmap": METHOD_LABEL.get(r["method"], r["method"]),
                "layer": r["layer"],
                "slices": r["slices"],
                "pointing game": r["pointing_game"],
                "95% CI": f"{r['pointing_game_ci95'][0]:.2f}–{r['pointing_game_ci95'][1]:.2f}",
                "energy in mask": r["energy_in_mask_median"],
                "mask share": r["mask_share_median"],
            }
            for r in self.rows
        ]


def heatmap_localisation(path: Path | None = None) -> HeatmapLocalisation | None:
    """The localisation report, or None when it is missing or unreadable (the page says so)."""
    path = Path(path) if path is not None else REPORTS_DIR / HEATMAP_REPORT
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return HeatmapLocalisation(
            split=str(data["split"]),
            measured=str(data["measured"]),
            target=float(data["target_pointing_game"]),
            rows=list(data["rows"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
