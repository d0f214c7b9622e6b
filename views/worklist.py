"""Worklist: one row per study, ranked by its most suspicious slice; click a row to read it from its key slice."""

import streamlit as st

from triage.records import CLASSES, REVIEW_STATUSES, ReviewState
from triage.ui import state
from triage.ui.format import (
    CASE_FLAGS,
    FLAG_TEXT,
    REVIEW_TEXT,
    class_text,
    rejections_frame,
    series_frame,
    studies_frame,
    study_title,
)
from triage.ui.resources import get_worklist, settings
from triage.ui.state import init_state
from triage.ui.worklist_view import cases_csv, filter_studies, list_studies, studies_csv

ALL = "All"
TO_READ, SIGNED_OFF = "To read", "Signed off"
VIEWS = (TO_READ, SIGNED_OFF, ALL)
POLL_S = 3  # seconds between two looks at the worklist's revision
ROW_PX, MAX_TABLE_PX = 56, 720
REJECTIONS_SHOWN = 50
SERIES_SHOWN = 20  # studies whose series are listed below the table

init_state()
hide_names = settings().file_names_hidden  # file names may carry patient identifiers
st.title("Worklist")
wl = get_worklist()
everything = list_studies(wl)  # read from SQLite on every run: all tabs see the same queue

c1, c2, c3, c4 = st.columns([1, 1, 1, 1])
c1.metric("Studies", len(everything))
c2.metric("Unreviewed", sum(s.review_status == ReviewState.UNREVIEWED for s in everything))
c3.metric(
    "Flagged",
    sum(s.n_flagged > 0 for s in everything),
    help="studies with a slice that is uncertain, outside what the model knows, or where classifier and "
    "segmenter disagree",
)
c4.metric("Slices", sum(s.n_slices for s in everything))


@st.fragment(run_every=POLL_S)
def _follow(seen: int) -> None:
    """Redraw the page when another tab (or the PACS receiver) changed the worklist: a cheap poll of
    its revision, no button to press (issue 16)."""
    if wl.revision() != seen:
        st.rerun(scope="app")


_follow(wl.revision())
view = st.radio(
    "View",
    VIEWS,
    horizontal=True,
    key=state.WORKLIST_VIEW,
    help="Studies still to read (not signed off) first; signed-off studies in their own view",
    label_visibility="collapsed",
)
f1, f2, f3, f4 = st.columns([1, 1, 1, 2])
status = f1.selectbox("Review status", [ALL, *REVIEW_STATUSES], format_func=lambda s: REVIEW_TEXT.get(s, s))
label = f2.selectbox("Class", [ALL, *CLASSES], format_func=lambda c: c if c == ALL else class_text(c))
flag = f3.selectbox("Flag", [ALL, *CASE_FLAGS], format_func=lambda f: FLAG_TEXT.get(f, f))
if hide_names:  # searching hidden names would tell whether a patient's file is here
    search = f4.text_input("Search case id", placeholder="e.g. 3f9a1c").strip()
else:
    search = f4.text_input("Search file name", placeholder="e.g. patient_017").strip()
filters = {
    "review_status": None if status == ALL else status,
    "label": None if label == ALL else label,
    "flag": None if flag == ALL else flag,
    "search": search or None,
    "search_in": "scan_id" if hide_names else "name",
}
st.session_state[state.WORKLIST_FILTERS] = filters
studies = filter_studies(wl, everything, **filters)  # the list read above, narrowed, not read again
if view == TO_READ:
    studies = [s for s in studies if s.review_status != ReviewState.SIGNED_OFF]
elif view == SIGNED_OFF:
    studies = [s for s in studies if s.review_status == ReviewState.SIGNED_OFF]

if not everything:
    st.info("The worklist is empty. Add scans on the **New scans** page.")
    st.page_link("views/new_scans.py", label="Go to New scans", icon=":material/upload:")
elif not studies:
    st.info(
        "Every study is signed off: nothing left to read."
        if view == TO_READ and not any(v for k, v in filters.items() if k != "search_in")
        else "No case matches these filters."
    )
else:
    st.caption(
        f"{len(studies)} of {len(everything)} studies, ranked by their most suspicious slice (shown; a "
        "corrected class ranks by the corrected class). Click a row to read the study from that key slice, "
        "or its ↗ link to open it in a new tab."
    )
    table = studies_frame(studies, hide_names)
    event = st.dataframe(
        table,
        hide_index=True,
        on_select="rerun",
        selection_mode="single-row",
        row_height=ROW_PX,
        height=min(MAX_TABLE_PX, ROW_PX * len(table) + 40),  # the page's height, not ten rows
        key=state.keyed(state.WORKLIST_TABLE, st.session_state[state.WORKLIST_NONCE]),
        column_order=[c for c in table.columns if c != "scan_id"],
        column_config={
            "thumbnail": st.column_config.ImageColumn("Key slice", width=56, pinned=True),
            "name": st.column_config.TextColumn("Study", width=250, pinned=True, help="file name or series"),
            "slices": st.column_config.NumberColumn("Slices", width=50),
            "suspicious": st.column_config.NumberColumn(
                "Susp.", width=50, help="suspicious slices: called a tumour (or contradicted by a sizeable mask)"
            ),
            "flagged": st.column_config.NumberColumn("Flag.", width=45, help="slices that ask for a closer look"),
            "class": st.column_config.TextColumn("Class", width=115, help="of the key slice; reviewed label if any"),
            "risk": st.column_config.ProgressColumn(
                "Risk",
                min_value=0.0,
                max_value=1.0,
                format="%.2f",
                width=95,
                help="malignancy-weighted risk of the most suspicious slice (see the Model page)",
            ),
            "volume_ml": st.column_config.TextColumn(
                "Tumour mL", width=80, help="segmented area × slice spacing, when both are known (– unknown)"
            ),
            "review": st.column_config.TextColumn("Review", width=95),
            "flags": st.column_config.TextColumn("Flags", width=140, help="of the key slice"),
            "sequence": st.column_config.TextColumn("Modality / sequence", width=120),
            "model": st.column_config.TextColumn("Model", width=80, help="classifier · segmenter version"),
            "received": st.column_config.DatetimeColumn("Received", format="MM-DD HH:mm", width=85, help="UTC"),
            "open": st.column_config.LinkColumn(
                "Open", display_text="↗ tab", width=55, help="open the key slice in Case review in a new tab"
            ),
        },
    )
    picked = event.selection.rows if event is not None else []
    if picked:
        st.session_state[state.SELECTED_CASE] = table.loc[picked[0], "scan_id"]
        st.session_state[state.WORKLIST_NONCE] += 1  # the table starts unselected next time
        st.switch_page("views/case_review.py")

    o1, o2, o3, o4 = st.columns([3, 1, 1, 1], vertical_alignment="bottom")
    by_id = {s.key_scan_id: s for s in studies}
    chosen = o1.selectbox(
        "Open a case",
        list(by_id),
        format_func=lambda sid: (
            f"{study_title(by_id[sid], hide_names)} — {by_id[sid].n_slices} slice"
            f"{'s' if by_id[sid].n_slices != 1 else ''} — risk {by_id[sid].risk:.2f}"
        ),
        key=state.WORKLIST_OPEN,
        help="a study opens at its key slice",
    )
    if o2.button("Open", type="primary", width="stretch"):
        st.session_state[state.SELECTED_CASE] = chosen
        st.switch_page("views/case_review.py")
    o3.download_button(
        "Export CSV",
        data=cases_csv(wl, studies, hide_names),
        file_name="worklist.csv",
        mime="text/csv",
        icon=":material/download:",
        width="stretch",
        help="every slice of the listed studies, without thumbnails",
    )
    o4.download_button(
        "Export studies",
        data=studies_csv(wl, studies, hide_names),
        file_name="studies.csv",
        mime="text/csv",
        icon=":material/download:",
        width="stretch",
        help="one row per listed study: risk, key slice, volume, sign-off",
    )

    stacks = [s for s in studies if not s.single][:SERIES_SHOWN]
    if stacks:
        st.subheader("Series")
    for study in stacks:
        label = (
            f"{study_title(study, hide_names)} — {len(study.series)} series, {study.n_slices} slices, "
            f"risk {study.risk:.2f}"
        )
        with st.expander(label):
            frame = series_frame(study, hide_names)
            st.dataframe(
                frame,
                hide_index=True,
                column_order=[c for c in frame.columns if c != "key_scan_id"],
                column_config={
                    "risk": st.column_config.ProgressColumn("Risk", min_value=0.0, max_value=1.0, format="%.2f"),
                    "spacing_mm": st.column_config.NumberColumn("Spacing mm", format="%.2f"),
                    "volume_ml": st.column_config.NumberColumn("Tumour mL", format="%.1f"),
                    "missing": st.column_config.NumberColumn("Missing", help="slices missing from gaps in the stack"),
                },
            )
            for i, series in enumerate(study.series):
                if st.button(
                    f"Open series {i + 1} at its key slice",
                    key=state.keyed(state.SERIES_OPEN, series.series_key),
                    icon=":material/stacks:",
                ):
                    st.session_state[state.SELECTED_CASE] = series.key_scan_id
                    st.switch_page("views/case_review.py")

rejected = wl.rejections(limit=REJECTIONS_SHOWN)
title = f"Rejected uploads ({len(rejected)}{', most recent' if len(rejected) == REJECTIONS_SHOWN else ''})"
with st.expander(title if rejected else "Rejected uploads (none)"):
    if rejected:
        st.dataframe(
            rejections_frame(rejected, hide_names),
            hide_index=True,
            column_config={
                "name": st.column_config.TextColumn("File"),
                "reason": st.column_config.TextColumn("Reason", width="large"),
                "received": st.column_config.DatetimeColumn("Received (UTC)", format="YYYY-MM-DD HH:mm"),
            },
        )
    else:
        st.caption("No upload has been refused.")
