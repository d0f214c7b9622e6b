"""Worklist: every analysed case, highest malignancy risk first; click a row to review it."""

import streamlit as st

from triage.records import CLASSES
from triage.ui import state
from triage.ui.format import (
    CASE_FLAGS,
    FLAG_TEXT,
    REVIEW_TEXT,
    case_title,
    class_text,
    is_flagged,
    rejections_frame,
    worklist_frame,
)
from triage.ui.resources import get_worklist, settings
from triage.ui.state import init_state
from triage.worklist import REVIEW_STATUSES

ALL = "All"
REJECTIONS_SHOWN = 50

init_state()
hide_names = settings().file_names_hidden  # file names may carry patient identifiers
st.title("Worklist")
wl = get_worklist()
everything = wl.list_cases()  # read from SQLite on every run: all tabs see the same queue

c1, c2, c3, c4 = st.columns([1, 1, 1, 1])
c1.metric("Cases", len(everything))
c2.metric("Unreviewed", sum(c["review_status"] == "unreviewed" for c in everything))
c3.metric(
    "Flagged",
    sum(is_flagged(c) for c in everything),
    help="uncertain, outside what the model knows, or classifier and segmenter disagree",
)
c4.button("Refresh", icon=":material/refresh:", help="Read the worklist again (new uploads from other tabs)")

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
rows = wl.list_cases(**filters)

if not everything:
    st.info("The worklist is empty. Add scans on the **New scans** page.")
    st.page_link("views/new_scans.py", label="Go to New scans", icon=":material/upload:")
elif not rows:
    st.info("No case matches these filters.")
else:
    st.caption(f"{len(rows)} of {len(everything)} cases, highest risk first. Click a row to open it.")
    probability = {
        f"p_{c}": st.column_config.NumberColumn(
            class_text(c), format="%.0f%%", width=64, help=f"calibrated probability of {class_text(c)}"
        )
        for c in CLASSES
    }
    table = worklist_frame(rows, hide_names)
    shown = table.assign(**{f"p_{c}": table[f"p_{c}"] * 100 for c in CLASSES})  # percent, no decimals
    event = st.dataframe(
        shown,
        hide_index=True,
        on_select="rerun",
        selection_mode="single-row",
        row_height=56,
        key=state.keyed(state.WORKLIST_TABLE, st.session_state[state.WORKLIST_NONCE]),
        column_order=[c for c in table.columns if c != "scan_id"],
        column_config={
            "thumbnail": st.column_config.ImageColumn("Slice", width=56),
            "name": st.column_config.TextColumn("File", width=160),
            "class": st.column_config.TextColumn("Class", width=100, help="reviewed label if any, else the model's"),
            "risk": st.column_config.ProgressColumn(
                "Risk",
                min_value=0.0,
                max_value=1.0,
                format="%.2f",
                width=95,
                help="malignancy-weighted risk (see the Model page)",
            ),
            "review": st.column_config.TextColumn("Review", width=90),
            "flags": st.column_config.TextColumn("Flags", width=165),
            **probability,
            "received": st.column_config.DatetimeColumn("Received", format="MM-DD HH:mm", width=90, help="UTC"),
        },
    )
    picked = event.selection.rows if event is not None else []
    if picked:
        st.session_state[state.SELECTED_CASE] = table.loc[picked[0], "scan_id"]
        st.session_state[state.WORKLIST_NONCE] += 1  # the table starts unselected next time
        st.switch_page("views/case_review.py")

    o1, o2, o3 = st.columns([3, 1, 1], vertical_alignment="bottom")
    by_id = {c["scan_id"]: c for c in rows}
    chosen = o1.selectbox(
        "Open a case", list(by_id), format_func=lambda sid: case_title(by_id[sid], hide_names), key=state.WORKLIST_OPEN
    )
    if o2.button("Open", type="primary", width="stretch"):
        st.session_state[state.SELECTED_CASE] = chosen
        st.switch_page("views/case_review.py")
    o3.download_button(
        "Export CSV",
        data=wl.export_csv(rows, hide_names=hide_names),
        file_name="worklist.csv",
        mime="text/csv",
        icon=":material/download:",
        width="stretch",
        help="the filtered list, without thumbnails",
    )

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
