"""Case review helpers: the case's stored analysis and heatmaps, masks and the probability chart."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import plotly.graph_objects as go
import streamlit as st

from triage.analysis_store import StoredAnalysis, case_analysis, case_heatmap
from triage.errors import InvalidScanError
from triage.explain import ALL_METHODS as METHODS
from triage.io import read_mask_path
from triage.metrics import dice_iou
from triage.records import CLASSES, Case
from triage.report import find_study, study_pdf
from triage.ui.format import class_text
from triage.ui.resources import get_service
from triage.worklist import Worklist

log = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "StoredFileMissing",
    "analyse_case",
    "explanation",
    "mask_agreement",
    "probability_figure",
    "read_mask",
    "stack_figure",
    "study_report",
]

METHOD_TEXT: dict[str, str] = {
    "seg-gradcam": "Seg-Grad-CAM",
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "eigencam": "Eigen-CAM (class-agnostic)",
    "layercam": "Layer-CAM",
}


class StoredFileMissing(FileNotFoundError):
    """The case's stored slice is no longer on disk."""


def analyse_case(case: Case) -> StoredAnalysis:
    """The case's analysis by the active models: stored with the case at intake (or at its first
    opening) and read back, so switching case, class or method runs no model (issue 16).

    The result may be 'rejected' if the active models now refuse the slice. Raises
    StoredFileMissing when it has to be computed and the stored file is gone.
    """
    try:
        return case_analysis(get_service(), case)
    except FileNotFoundError as exc:
        raise StoredFileMissing(str(exc)) from exc


def explanation(analysis: StoredAnalysis, target_class: str, method: str) -> np.ndarray:
    """Heatmap float32 (H, W) in [0, 1] at scan resolution for ``target_class`` (stored once computed)."""
    with st.spinner("Computing the heatmap (once; it is stored with the case)…"):
        return case_heatmap(get_service(), analysis, target_class, method)


def read_mask(path: str | None, shape: tuple[int, int]) -> np.ndarray | None:
    """A stored mask image as bool (H, W) at ``shape`` (nearest-neighbour resize), or None if missing
    or unreadable (the reason is logged).

    Ground-truth masks are user uploads, so they go through the scans' allow-listed, size-checked
    decoder (:func:`triage.io.read_mask_path`), never a decoder that guesses the format."""
    if not path or not Path(path).is_file():
        return None
    try:
        img = read_mask_path(path)
    except InvalidScanError as exc:
        log.warning("mask %s not shown: %s", Path(path).name, exc)
        return None
    if img.shape != tuple(shape):
        img = cv2.resize(img, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return img > 127


def mask_agreement(mask: np.ndarray | None, truth: np.ndarray) -> tuple[float, float]:
    """(Dice, IoU) of the predicted mask (None: nothing segmented) against the ground-truth mask."""
    return dice_iou(mask if mask is not None else np.zeros_like(truth), truth)


def study_report(wl: Worklist, scan_id: str, hide_names: bool) -> tuple[str, bytes]:
    """(study key, PDF bytes) of the report of the study holding case ``scan_id``
    (:func:`triage.report.study_pdf`); :class:`triage.errors.TriageError` when it cannot be made."""
    study = find_study(wl, scan_id)
    return study.study_key, study_pdf(wl, study, hide_names=hide_names)


def probability_figure(case: Case) -> go.Figure:
    """Horizontal bar chart of the stored calibrated probabilities; the predicted class highlighted."""
    probs = list(case.probs)
    colors = ["#e4572e" if c == case.label else "#6c8ebf" for c in CLASSES]
    fig = go.Figure(
        go.Bar(
            x=probs,
            y=[class_text(c) for c in CLASSES],
            orientation="h",
            marker_color=colors,
            text=[f"{p:.0%}" for p in probs],
            textposition="auto",
            hovertemplate="%{y}: %{x:.1%}<extra></extra>",
        )
    )
    fig.update_layout(
        height=260,
        margin={"l": 10, "r": 20, "t": 10, "b": 10},
        xaxis={"range": [0, 1], "tickformat": ".0%"},
        yaxis={"autorange": "reversed"},
        showlegend=False,
    )
    return fig


# ----- stack viewer (issue 18) ------------------------------------------------------------------


def stack_figure(cases: list[Case], current: int, key_index: int) -> go.Figure:
    """Tumour probability (1 - P(no tumour)) and risk along a stack (slice numbers from 1), the
    current slice marked with a vertical line and the key slice with a star. Click a point to jump."""
    x = list(range(1, len(cases) + 1))
    p_tumour = [1.0 - c.prob("no_tumor") for c in cases]
    risk = [c.risk for c in cases]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=x,
            y=p_tumour,
            mode="lines+markers",
            name="P(tumour)",
            line={"color": "#e4572e"},
            marker={"size": 5},
            hovertemplate="slice %{x}: P(tumour) %{y:.0%}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=risk,
            mode="lines",
            name="risk",
            line={"color": "#6c8ebf", "dash": "dot"},
            hovertemplate="slice %{x}: risk %{y:.2f}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[key_index + 1],
            y=[p_tumour[key_index]],
            mode="markers",
            name="key slice",
            marker={"symbol": "star", "size": 14, "color": "#222"},
            hovertemplate="key slice %{x}<extra></extra>",
        )
    )
    fig.add_vline(x=current + 1, line_width=2, line_color="#444")
    fig.update_layout(
        height=240,
        margin={"l": 10, "r": 10, "t": 10, "b": 30},
        xaxis={"title": "slice (stack order)", "range": [0.5, len(cases) + 0.5]},
        yaxis={"range": [0, 1.02], "tickformat": ".0%"},
        legend={"orientation": "h", "y": 1.12},
        clickmode="event+select",
    )
    return fig
