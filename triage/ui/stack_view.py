"""The stack viewer of Case review (issue 18): a series slice by slice, its key slice, the tumour
probability along the stack and the whole-study sign-off."""

from __future__ import annotations

import streamlit as st

from triage.errors import WorklistError
from triage.records import Case
from triage.studies import summarize_series
from triage.ui import state
from triage.ui.auth import reviewer_input
from triage.ui.case_view import stack_figure
from triage.ui.format import escape_md
from triage.worklist import Worklist


def _open(scan_id: str) -> None:
    st.session_state[state.SELECTED_CASE] = scan_id


def stack_viewer(wl: Worklist, case: Case, hide_names: bool, opened: dict) -> None:
    """Render the stack viewer for ``case`` when it belongs to a series of more than one slice.

    Moving the slider (or the buttons, or a click on the plot) selects another slice of the series
    as the page's case. ``opened``: {scan_id: (revision, status)} the reader's page showed, so the
    study sign-off is refused when a slice changed since."""
    stack = wl.series_cases(case.series_key) if case.series_key else []
    if len(stack) < 2:
        return
    record = wl.get_series(case.series_key)
    summary = summarize_series(stack, record)
    ids = [c.scan_id for c in stack]
    here = ids.index(case.scan_id)
    key_index = summary.key_position - 1
    slider_key = state.keyed(state.STACK_SLIDER, case.series_key)
    if st.session_state.get(slider_key) != here + 1:  # follow the case opened from elsewhere
        st.session_state[slider_key] = here + 1

    def _slide() -> None:
        st.session_state[state.SELECTED_CASE] = ids[st.session_state[slider_key] - 1]

    described = summary.description if (summary.source == "dicom" or not hide_names) else ""
    st.subheader(f"Series{': ' + escape_md(described) if described else ''} — slice {here + 1} of {len(stack)}")
    s1, s2, s3, s4 = st.columns(4)
    s1.metric("Slices", len(stack), help=f"{summary.missing} missing from gaps" if summary.missing else None)
    s2.metric("Suspicious / flagged", f"{summary.n_suspicious} / {summary.n_flagged}")
    s3.metric("Key slice", f"{summary.key_position} (risk {summary.risk:.2f})")
    s4.metric(
        "Tumour volume",
        f"{summary.volume_ml:.1f} mL" if summary.volume_ml is not None else "unknown",
        help=(
            f"segmented areas × {summary.spacing_mm:.2f} mm slice spacing"
            if summary.volume_ml is not None
            else "needs the pixel spacing and the slice spacing or thickness"
        ),
    )
    if summary.missing:
        st.warning(
            f"About {summary.missing} slice(s) are missing from this series (gaps in the slice positions); "
            "the volume covers the slices present only. Send the missing files to complete the series.",
            icon=":material/warning:",
        )
    v1, v2 = st.columns([2, 3])
    v1.slider(
        "Slice",
        min_value=1,
        max_value=len(stack),
        key=slider_key,
        on_change=_slide,
        help="drag, or click the slider and use the arrow keys",
    )
    b1, b2, b3 = v1.columns(3)
    b1.button("◀ Slice", on_click=_open, args=(ids[max(0, here - 1)],), disabled=here == 0, width="stretch")
    b2.button("Key slice", on_click=_open, args=(ids[key_index],), disabled=here == key_index, width="stretch")
    b3.button(
        "Slice ▶",
        on_click=_open,
        args=(ids[min(len(ids) - 1, here + 1)],),
        disabled=here == len(ids) - 1,
        width="stretch",
    )
    # The slice itself is in the Case review viewer above (issue 16): no second, smaller copy here.
    clicked = v2.plotly_chart(
        stack_figure(stack, here, key_index),
        width="stretch",
        config={"displayModeBar": False},
        on_select="rerun",
        selection_mode="points",
        key=state.keyed(state.STACK_PLOT, case.series_key, here),
    )
    v2.caption("Tumour probability along the stack (★ the key slice); click a point to go to that slice.")
    study_done = wl.study_review(case.study_key)
    if study_done is not None:
        v1.success(
            f"Study signed off by **{escape_md(study_done['reviewer'])}** at "
            f"{study_done['reviewed_at'][:19].replace('T', ' ')} UTC ({study_done['slices']} slices)"
            + (f": {escape_md(study_done['note'])}" if study_done["note"] else ""),
            icon=":material/verified:",
        )
    else:
        with v1.expander("Sign off the whole study", icon=":material/verified:"):
            with st.form(state.keyed(state.STUDY_FORM, case.study_key)):
                st.caption(
                    "Signs off every slice of the study with its current label (corrections made per slice stay). "
                    "Each slice's change is in its audit trail."
                )
                study_reviewer = reviewer_input(label="Study reviewer")
                study_note = st.text_area("Study note (findings)", max_chars=10_000)
                sign_study = st.form_submit_button("Sign off study", type="primary")
            if sign_study:
                try:
                    wl.sign_off_study(
                        case.study_key,
                        study_reviewer,
                        note=study_note,
                        expected_revisions={k: v[0] for k, v in opened.items() if k in set(ids)},
                    )
                except WorklistError as exc:
                    st.error(f"Study not signed off: {escape_md(exc)}")
                else:
                    for sid in ids:
                        opened.pop(sid, None)
                    st.session_state[state.REVIEWER] = study_reviewer.strip()
                    state.flash("success", f"Study signed off by {escape_md(study_reviewer.strip())}.")
                    st.rerun()
    points = getattr(getattr(clicked, "selection", None), "points", None) or []
    if points:
        target = round(float(points[0].get("x", here + 1))) - 1
        if 0 <= target < len(ids) and ids[target] != case.scan_id:
            st.session_state[state.SELECTED_CASE] = ids[target]
            st.rerun()
