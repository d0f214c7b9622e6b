"""What the Model page shows: model cards as readable rows, the versions on disk, the model-change log,
the risk policy, the evaluation and heatmap reports (no streamlit here; the page only renders)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from triage import lifecycle  # the facade: names load their module when used, so importing it is cheap
from triage.card import ModelCard
from triage.config import REPO_DIR, Settings
from triage.models import list_versions
from triage.risk import describe_policy
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


def card_rows(card: ModelCard) -> list[tuple[str, str]]:
    """(field, value) rows describing a model version from its card (the values the model runs with)."""
    rows = [
        ("Architecture", card.arch or "—"),
        ("Version", card.version or "—"),
        ("Created", card.created or "—"),
        ("Trained", "yes" if card.trained else "NO — untrained placeholder"),
        ("Input size", f"{card.input_size} px, 1 channel (greyscale brain crop)"),
    ]
    if card.preprocess:
        rows.append(("Preprocessing", card.preprocess))
    if card.crop:
        rows.append(("Brain-crop settings", ", ".join(f"{k}={v}" for k, v in card.crop.items())))
    if card.intensity_norm:
        rows.append(
            (
                "Intensity standardisation",
                (
                    f"{card.intensity_norm}: each crop's head 10/50/90/99th "
                    "percentiles mapped to fixed values before the model sees it"
                ),
            )
        )
    if card.task == "classifier":
        rows.append(("Class order", ", ".join(card.classes) or "—"))
        rows.append(("Temperature (calibration)", _num(card.temperature)))
        if card.has_ood_threshold:
            rule = card.ood_rule or "score limit"
            rows.append(("Out-of-distribution threshold", f"{_num(card.ood_threshold, 1)} ({rule})"))
    else:
        rows.append(("Mask threshold", _num(card.threshold, 2)))
        rows.append(("Minimum mask area", _pct(card.min_area_frac) + " of the brain crop"))
        if card.loss:
            rows.append(("Training loss", card.loss))
    rows.append(("Test-time augmentation", "mean of the slice and its mirror image" if card.tta else "none"))
    cfg = card.train_config
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
    rows.extend(_data_rows(card.data))
    if card.wall_time_min is not None:
        rows.append(("Training wall time", f"{card.wall_time_min} min"))
    if card.best_epoch is not None:
        rows.append(("Best epoch", str(card.best_epoch)))
    return rows


def _counts(counts: object) -> str:
    if not isinstance(counts, Mapping) or not counts:
        return ""
    return " (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")"


def _data_rows(data: Mapping) -> list[tuple[str, str]]:
    """Image counts of the training data block (known keys first, other integers as they are)."""
    if not data:
        return []
    rows = []
    if data.get("used_train") is not None:
        rows.append(("Training images", f"{data['used_train']}{_counts(data.get('train_counts'))}"))
    if data.get("used_val") is not None:
        rows.append(("Validation images", f"{data['used_val']}{_counts(data.get('val_counts'))}"))
    sources = data.get("sources")
    if isinstance(sources, Mapping) and sources:
        rows.append(
            (
                "Sources",
                "; ".join(
                    f"{name}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in part.items())
                    if isinstance(part, Mapping)
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


def metric_rows(card: ModelCard) -> list[tuple[str, str]]:
    """Validation metrics of the model card (empty when the model was never evaluated)."""
    val = card.validation()
    if not val:
        return []
    if card.task == "classifier":
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


def per_class_rows(card: ModelCard) -> list[dict]:
    """Per-class precision/recall/F1/support of the calibrated classifier (validation)."""
    after = card.validation().get("after_calibration") or {}
    return [{"class": c, **m} for c, m in (after.get("per_class") or {}).items()]


def versions_on_disk(settings: Settings, task: str) -> list[str]:
    """The version folders of ``task`` in the weights folder, oldest first by name."""
    return list_versions(settings.weights_dir, task)


def model_change_rows(settings: Settings) -> list[dict]:
    """Every promotion and rollback of the data folder's append-only log, newest first, as table rows."""
    return [
        {
            "time (UTC)": c.time.replace("T", " ")[:19],
            "model": c.task,
            "from": c.from_version or "",
            "to": c.to_version,
            "kind": c.kind,
            "by": c.by,
            "reason": c.reason,
            "images compared": (c.figures or {}).get("n", ""),
        }
        for c in reversed(lifecycle.model_changes(settings.data_dir))
    ]


def promotion_rule() -> str:
    """The promotion rule a comparison must pass, in one paragraph."""
    return lifecycle.RULE_TEXT


def risk_policy(settings: Settings) -> str:
    """Markdown description of the active malignancy-risk policy."""
    return describe_policy(settings)


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


def licence_rows(card: ModelCard) -> list[dict]:
    """The card's training sources with their licences (empty for cards that predate the list)."""
    return [
        {
            "source": s.get("source", ""),
            "training images": s.get("train_images", 0),
            "licence": s.get("licence", "unknown"),
            "commercial use": "allowed" if s.get("commercial_use") else "NOT allowed",
        }
        for s in card.training_sources
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
