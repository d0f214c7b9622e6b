"""The Case review viewer (issue 16): one large slice with toggled overlays, window/level, zoom and pan.

Built with a Plotly figure in ``st.plotly_chart`` rather than a third-party component: Streamlit
bundles plotly.js, so it works offline with nothing to install, and Plotly gives zoom (scroll
wheel, box zoom), pan (drag) and reset (double click) natively. The picture itself (window/level,
heatmap blend, outlines) is composed server-side from the stored arrays (``triage.display``) and
sent as one PNG, cached by its parameters, so a toggle or a slider move costs one PNG encode the
first time and nothing after. ``uirevision`` keeps the reader's zoom while overlays change.
The maintained DICOM-viewer components (e.g. OHIF / Cornerstone wrappers) load their code and
viewers from a web server or CDN and read DICOMweb, not our stored arrays, so none fitted offline.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import cv2
import numpy as np
import plotly.graph_objects as go
import streamlit as st

from triage.analysis_store import StoredAnalysis
from triage.display import PRESETS, WindowLevel, compose_view, preset_window
from triage.explain import SEGMENTER_METHOD
from triage.records import CLASSES, Case
from triage.ui import state
from triage.ui.case_view import METHOD_TEXT
from triage.ui.format import class_text

CUSTOM = "Custom"
VIEW_HEIGHT = 500  # px: with the title and the case bar, the whole slice fits a 1366x768 screen
PLOT_CONFIG = {
    "scrollZoom": True,
    "displaylogo": False,
    "doubleClick": "reset",
    "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d", "toImage"],
}


@st.cache_data(max_entries=128, show_spinner=False)
def _picture_uri(
    key: tuple, wl: tuple[float, float], opacity: float, _pixels, _mask, _truth, _heat
) -> tuple[str, float]:
    """The composed picture as a PNG data URI, cached by ``key`` (case, versions, which overlays,
    heatmap class/method) and the display parameters; the arrays behind ``key`` are not hashed."""
    rgb = compose_view(_pixels, WindowLevel(*wl), mask=_mask, truth=_truth, heat=_heat, opacity=opacity)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii"), float(rgb.shape[1])


def view_figure(uri: str, shape: tuple[int, int], revision: str, height: int = VIEW_HEIGHT) -> go.Figure:
    """A Plotly figure showing the picture ``uri`` of ``shape`` (H, W) with square pixels, axes hidden,
    drag to pan; ``revision`` (the case) keeps zoom and pan across reruns of the same case."""
    h, w = shape
    fig = go.Figure(go.Image(source=uri, x0=0, y0=0, dx=1, dy=1, hoverinfo="x+y"))
    fig.update_layout(
        height=height,
        margin={"l": 0, "r": 0, "t": 0, "b": 0},
        xaxis={"visible": False, "range": [-0.5, w - 0.5], "constrain": "domain"},
        yaxis={"visible": False, "range": [h - 0.5, -0.5], "scaleanchor": "x", "constrain": "domain"},
        dragmode="pan",
        uirevision=revision,
        paper_bgcolor="#000",
        plot_bgcolor="#000",
    )
    return fig


def _apply_preset(pixels: np.ndarray, wkey: str, lkey: str) -> None:
    preset = st.session_state[state.VIEW_PRESET]
    if preset != CUSTOM:
        wl = preset_window(pixels, preset)
        st.session_state[wkey], st.session_state[lkey] = int(wl.window), int(wl.level)


def _custom() -> None:
    st.session_state[state.VIEW_PRESET] = CUSTOM


def slice_viewer(
    image_col,
    controls,
    case: Case,
    analysis: StoredAnalysis,
    mask: np.ndarray | None,
    truth: np.ndarray | None,
    heatmap: Callable[[str, str], np.ndarray],
    methods: list[str],
) -> None:
    """Render the viewer: the picture in ``image_col``, its controls in ``controls`` (containers).

    ``mask``: the predicted mask to outline; ``truth``: the ground-truth mask, or None;
    ``heatmap(target, method)``: the stored (or once computed) heatmap. The heatmap is computed only
    when the reader turns it on.
    """
    pixels = analysis.pixels
    sid = case.scan_id
    has_mask = mask is not None and bool(mask.any())
    with controls:
        t1, t2, t3 = st.columns(3)
        # No help icons: they cut the labels off in a third of the column at 1366 px; the caption
        # under the picture says what each colour is.
        show_mask = t1.toggle("Outline", value=True, key=state.VIEW_MASK, disabled=not has_mask)
        show_heat = t2.toggle("Heatmap", value=False, key=state.VIEW_HEAT)
        show_truth = t3.toggle("Truth", value=True, key=state.VIEW_TRUTH, disabled=truth is None)
        target = method = None
        if show_heat:
            h1, h2 = st.columns(2)
            pred = analysis.label if analysis.label in CLASSES else case.label
            method = h1.selectbox(
                "Heatmap method", methods, format_func=lambda m: METHOD_TEXT.get(m, m), key=state.CAM_METHOD
            )
            if method == SEGMENTER_METHOD:  # the segmenter's evidence: one map, whatever the class
                target = pred
                h2.caption("Where the segmenter finds tumour (one map for every class)")
            else:
                class_key = state.keyed(state.CAM_CLASS, sid)
                if class_key not in st.session_state:
                    st.session_state[class_key] = pred
                target = h2.selectbox("Heatmap for class", CLASSES, format_func=class_text, key=class_key)
        opacity = st.slider(
            "Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key=state.VIEW_OPACITY, disabled=not show_heat, format="%.2f"
        )
        wkey, lkey = state.keyed(state.VIEW_WINDOW, sid), state.keyed(state.VIEW_LEVEL, sid)
        if state.VIEW_PRESET not in st.session_state:
            st.session_state[state.VIEW_PRESET] = PRESETS[0]
        if wkey not in st.session_state:  # a case opened: its sliders follow the chosen preset
            wl0 = preset_window(
                pixels,
                st.session_state[state.VIEW_PRESET] if st.session_state[state.VIEW_PRESET] != CUSTOM else PRESETS[0],
            )
            st.session_state[wkey], st.session_state[lkey] = int(wl0.window), int(wl0.level)
        st.selectbox(
            "Window preset",
            [*PRESETS, CUSTOM],
            key=state.VIEW_PRESET,
            on_change=_apply_preset,
            args=(pixels, wkey, lkey),
            help="MR windows relative to this slice's brain intensities; the sliders below adjust freely",
        )
        w1, w2 = st.columns(2)
        window = w1.slider("Window", 4, 512, key=wkey, on_change=_custom)
        level = w2.slider("Level", 0, 255, key=lkey, on_change=_custom)

    heat = None
    if show_heat and target and method:
        try:
            heat = heatmap(target, method)
        except (ValueError, RuntimeError, OSError):
            with controls:
                st.error("Heatmap unavailable for this slice (the details are in the server log).")
    key = (
        sid,
        analysis.versions,
        bool(show_mask and has_mask),
        case.mask_path or "",
        bool(show_truth and truth is not None),
        case.truth_mask_path or "",
        (target, method) if heat is not None else None,
    )
    uri, _ = _picture_uri(
        key,
        (float(window), float(level)),
        float(opacity) if heat is not None else 0.0,
        pixels,
        mask if show_mask and has_mask else None,
        truth if show_truth else None,
        heat,
    )
    with image_col:
        st.plotly_chart(
            view_figure(uri, pixels.shape, sid),
            width="stretch",
            config=PLOT_CONFIG,
            key=state.keyed(state.VIEWER, sid),
        )
        parts = [f"{pixels.shape[1]}×{pixels.shape[0]} px", f"W {window} / L {level}"]
        if show_mask and has_mask:
            parts.append("red: predicted outline" + (" (rejected by the reviewer)" if case.mask_rejected else ""))
        elif not has_mask:
            parts.append("no tumour region segmented")
        if show_truth and truth is not None:
            parts.append("green: ground truth")
        if heat is not None:
            parts.append(
                "heatmap: where the segmenter finds tumour (Seg-Grad-CAM)"
                if method == SEGMENTER_METHOD
                else f"heatmap: {METHOD_TEXT.get(method, method)} of the classifier for {class_text(target)}"
                " (does not localise the lesion: Model page)"
            )
        st.caption(" · ".join(parts) + " · scroll to zoom, drag to pan, double-click to reset")
