"""Case review: the slice, brain crop, heatmap and masks of one case, the review form and its audit trail.

User text (file names, notes, reviewer names, error texts) reaches Markdown only through ``escape_md``.
"""

import logging
from pathlib import Path

import streamlit as st

from triage.errors import ReviewConflictError, TriageError, WorklistError
from triage.records import CLASSES, Case, ReviewState
from triage.ui import state
from triage.ui.auth import reviewer_input
from triage.ui.case_view import (
    METHODS,
    StoredFileMissing,
    analyse_case,
    explanation,
    mask_agreement,
    probability_figure,
    read_mask,
    study_report,
)
from triage.ui.format import REVIEW_TEXT, audit_frame, case_name, class_text, escape_md
from triage.ui.resources import get_worklist, settings
from triage.ui.stack_view import stack_viewer
from triage.ui.state import init_state
from triage.ui.viewer import slice_viewer
from triage.ui.widgets import show_flags, show_flash

log = logging.getLogger(__name__)
init_state()
hide_names = settings().file_names_hidden
wl = get_worklist()
cases = wl.list_cases()
if not cases:
    st.title("Case review")
    st.info("No case to review yet. Add scans on the **New scans** page.")
    st.page_link("views/new_scans.py", label="Go to New scans", icon=":material/upload:")
    st.stop()

# The viewer (left) beside the title, case bar, findings and viewer controls (right), so the whole
# slice is on screen at 1366x768 without scrolling (issue 16).
view_col, side = st.columns([3, 2], gap="medium")
with side:
    st.title("Case review")
    show_flash()
by_id = {c.scan_id: c for c in cases}
# A deep link ?case=<id> (issue 16; from the Worklist's "open in a new tab" column, a bookmark or a
# colleague) opens that case once; afterwards the address follows the case on screen, so it can be copied.
linked = st.query_params.get("case")
if linked and linked != st.session_state[state.DEEP_LINK]:
    st.session_state[state.DEEP_LINK] = linked
    if linked in by_id:
        st.session_state[state.SELECTED_CASE] = linked
    else:
        side.warning("The case in the link is not in the worklist (removed, or a wrong id).")
selected = st.session_state[state.SELECTED_CASE]
if selected is not None and selected not in by_id:
    side.warning("The case selected earlier is no longer in the worklist; showing the highest-risk case.")
if selected not in by_id:
    selected = cases[0].scan_id
st.session_state[state.SELECTED_CASE] = selected
if st.query_params.get("case") != selected:
    st.query_params["case"] = selected
st.session_state[state.DEEP_LINK] = selected
if st.session_state.get(state.CASE_PICKER) != selected:
    st.session_state[state.CASE_PICKER] = selected


def _pick() -> None:
    st.session_state[state.SELECTED_CASE] = st.session_state[state.CASE_PICKER]


def _go(scan_id: str) -> None:
    st.session_state[state.SELECTED_CASE] = scan_id


def _title(sid: str) -> str:
    # Only fields that never change: the picker matches its selection by this text, so a title
    # holding the label or risk lost the case as soon as a review changed them (issue 16, bug 1).
    c = by_id[sid]
    return f"{case_name(c, hide_names)} · received {c.received_at[:16].replace('T', ' ')} · {sid[:8]}"


filters = st.session_state[state.WORKLIST_FILTERS] or {}
prev_id, next_id = wl.neighbours(selected, **filters)
if prev_id is None and next_id is None and any(v for k, v in filters.items() if k != "search_in"):
    prev_id, next_id = wl.neighbours(selected)  # the case left the filtered list (e.g. just signed off)
side.selectbox("Case", list(by_id), format_func=_title, key=state.CASE_PICKER, on_change=_pick)
n2, n3 = side.columns(2)
n2.button(
    "Previous",
    icon=":material/chevron_left:",
    disabled=prev_id is None,
    on_click=_go,
    args=(prev_id,),
    width="stretch",
    shortcut="P",
    help="Previous case (key P)",
)
n3.button(
    "Next",
    icon=":material/chevron_right:",
    icon_position="right",
    disabled=next_id is None,
    on_click=_go,
    args=(next_id,),
    width="stretch",
    shortcut="N",
    help="Next case (key N)",
)

case = wl.get(selected)
if case is None:
    side.error("This case was removed from the worklist.")
    st.stop()
# The revision (and review state) this reader's page shows: a save is refused when the case changed
# since (bug 2), and the form the reader submitted is the one they saw, even if the case was signed
# off meanwhile, so their input reaches the conflict check instead of vanishing.
opened = st.session_state[state.OPENED_REVISION]
opened_revision, opened_status = opened.setdefault(selected, (case.revision, case.review_status))

# Issue 16: a case flagged out-of-distribution or uncertain says so before its class, and the class
# is not shown as a confident result.
doubtful = bool({"ood", "uncertain"} & set(case.flags))
if doubtful:
    with side:
        show_flags(case.flags)

result = None
file_missing = not case.stored_path or not Path(case.stored_path).is_file()
with side:
    try:
        result = analyse_case(case)  # stored with the case: no model runs when it is there (issue 16)
    except StoredFileMissing as exc:
        log.warning("case %s: stored file missing: %s", selected, exc)  # the path is for the log only
        st.error(
            "The stored image file is missing and no stored analysis is left. The record, review and audit "
            "trail are still available; upload the file again to see the images.",
            icon=":material/folder_off:",
        )
    except (TriageError, OSError, ValueError):
        log.exception("case %s: the stored slice could not be analysed again", selected)
        st.error(
            "The stored slice could not be analysed again (the details are in the server log). "
            "The record, review and audit trail are still available."
        )
    if result is not None and file_missing:
        st.warning(
            "The stored image file is missing. The record, review and audit trail are still available; "
            "the slice shown comes from the stored analysis. Upload the file again to restore the file.",
            icon=":material/folder_off:",
        )
    if result is not None and not result.ok:
        st.error(f"The active models refuse this slice now: {escape_md(result.error)}")
viewable = result is not None and result.ok and result.pixels.size > 0

with side:
    m1, m2 = st.columns([3, 1.3])
    m1.metric(
        "Model class, not confident" if doubtful else "Model class",
        class_text(case.label),
        help="Flagged: read the slice without leaning on this class" if doubtful else None,
    )
    m2.metric("Risk", f"{case.risk:.2f}")
    st.markdown(
        f"Review: **{REVIEW_TEXT.get(case.review_status, case.review_status)}** · reviewed class: "
        f"**{class_text(case.reviewed_label) if case.reviewed_label else '–'}**"
    )
    area = f"{case.tumor_area_px:,} px" if case.tumor_area_px else "none segmented"
    if case.tumor_area_px and case.tumor_area_mm2 is not None:
        area += f" · {case.tumor_area_mm2:.1f} mm²"
    elif case.tumor_area_px:
        area += " (mm² unknown: no pixel spacing)"
    st.caption(
        f"Tumour area **{area}** · file **{escape_md(case_name(case, hide_names))}** · received "
        f"{case.received_at[:16].replace('T', ' ')} UTC · classifier `{case.classifier_version}` · "
        f"segmenter `{case.segmenter_version}`"
        + (f" · ground truth: **{class_text(case.truth_label)}**" if case.truth_label else "")
    )
    if not doubtful:
        show_flags(case.flags)

mask = truth = None
if viewable:
    pixels = result.pixels
    pred = result.label or case.label
    stored_mask = read_mask(case.mask_path, pixels.shape)
    mask = stored_mask if stored_mask is not None else result.mask
    truth = read_mask(case.truth_mask_path, pixels.shape)
    slice_viewer(
        view_col,
        side,
        case,
        result,
        mask,
        truth,
        lambda target, method: explanation(result, target, method),
        list(METHODS),
    )
    with side:
        if pred != case.label:
            st.info(
                f"Re-analysed with the active models, which now predict {class_text(pred)}; the stored result "
                f"({class_text(case.label)}) came from classifier `{case.classifier_version}`."
            )
        if truth is not None:
            dice, iou = mask_agreement(mask, truth)
            st.caption(f"Prediction vs ground truth: Dice {dice:.2f}, IoU {iou:.2f}")
        elif case.truth_mask_path:
            st.warning("The ground-truth mask file is missing or cannot be read as a mask image.")
elif case.thumbnail:
    view_col.image(case.thumbnail, caption="Stored thumbnail", width="stretch")

e1, e2 = st.columns(2)
with e1.expander("Class probabilities", icon=":material/bar_chart:", expanded=True):
    st.plotly_chart(probability_figure(case), width="stretch", config={"displayModeBar": False})
    st.caption("Calibrated probabilities (stored result; predicted class in orange)")
if viewable:
    with e2.expander("Model input (brain crop)", icon=":material/crop:"):
        st.image(result.crop_image, caption="Brain crop the classifier saw", width="stretch")
    e2.caption(
        "The heatmap is often context (ventricles, slice level) rather than the lesion: on BRISC tumour slices "
        "its hottest point lies on the tumour in about 1 of 7 (bench/heatmap_localisation.py). The red outline "
        "is the segmenter's localisation."
    )

# ----- the study's PDF report (issue 18): made on request, then offered for download -----
r1, r2, _ = st.columns([1, 1, 3])
if r1.button("Prepare study report", icon=":material/picture_as_pdf:", help="key images, findings, sign-off"):
    try:
        st.session_state[state.STUDY_REPORT] = (selected, *study_report(wl, selected, hide_names))
    except TriageError as exc:
        st.error(f"Report not made: {escape_md(exc)}")
report = st.session_state.get(state.STUDY_REPORT)
if report and report[0] == selected:
    r2.download_button(
        "Download report (PDF)",
        data=report[2],
        file_name=f"study-{report[1].removeprefix('case:')[:12]}.pdf",
        mime="application/pdf",
        icon=":material/download:",
    )

stack_viewer(wl, case, hide_names, opened)  # a series: slice by slice (issue 18)

st.subheader("Review")


def _reload() -> None:
    opened.pop(selected, None)


def _saved(updated: Case, reviewer: str, what: str) -> None:
    """After a successful write: the page now shows that revision; remember the reviewer."""
    opened[selected] = (updated.revision, updated.review_status)
    st.session_state[state.REVIEWER] = reviewer.strip()
    state.flash("success", f"{what} by {escape_md(reviewer.strip())}.")
    st.rerun()


if opened_revision != case.revision:
    st.warning(
        f"Another reader changed this case since you opened it (now {REVIEW_TEXT.get(case.review_status, '')}, "
        f"by {escape_md(case.reviewer)}). A save from this page will be refused.",
        icon=":material/sync_problem:",
    )
    st.button("Reload the case", on_click=_reload, icon=":material/refresh:")
if opened_status == ReviewState.SIGNED_OFF:
    st.success(
        f"Signed off by **{escape_md(case.reviewer)}** at {(case.reviewed_at or '')[:19].replace('T', ' ')} UTC as "
        f"**{class_text(case.effective_label)}**. The case is read-only; further remarks are addenda.",
        icon=":material/verified:",
    )
    if case.note:
        st.markdown(f"**Note:** {escape_md(case.note)}")
    for add in wl.addenda(selected):
        st.markdown(
            f"**Addendum** by {escape_md(add['actor'])} at {add['at'][:19].replace('T', ' ')} UTC: "
            f"{escape_md(add['new_value'])}"
        )
    with st.form(state.keyed(state.ADDENDUM_FORM, selected)):
        reviewer = reviewer_input()
        text = st.text_area("Addendum", max_chars=10_000)
        add = st.form_submit_button("Add addendum")
    if add:
        try:
            updated = wl.addendum(selected, reviewer, text, expected_revision=opened_revision)
        except WorklistError as exc:
            st.error(f"Addendum not saved: {escape_md(exc)}")
        else:
            _saved(updated, reviewer, "Addendum added")
else:
    with st.form(state.keyed(state.REVIEW_FORM, selected)):
        f1, f2 = st.columns(2)
        reviewer = reviewer_input(f1)
        current = case.effective_label
        label = f2.selectbox(
            "Label (confirm or correct)",
            CLASSES,
            index=CLASSES.index(current) if current in CLASSES else 0,
            format_func=lambda c: class_text(c) + (" — model's prediction" if c == case.label else ""),
        )
        mask_rejected = st.checkbox("Reject the tumor mask", value=case.mask_rejected)
        note = st.text_area("Note", value=case.note, max_chars=10_000)
        s1, s2, s3 = st.columns([1, 1, 4], vertical_alignment="center")
        # Keyboard (issue 16): Alt+S saves (confirms the label shown), Alt+O signs off.
        save = s1.form_submit_button("Save review", width="stretch", shortcut="Alt+S", help="confirm / save (Alt+S)")
        sign = s2.form_submit_button(
            "Sign off", type="primary", width="stretch", shortcut="Alt+O", help="sign off, final (Alt+O)"
        )
        s3.caption("Keys: **N** next case · **P** previous · **Alt+S** save · **Alt+O** sign off")
    if save or sign:
        if not reviewer.strip():
            st.error("Enter your name as reviewer first.")
        else:
            try:
                updated = wl.review(
                    selected,
                    reviewer.strip(),
                    label=label,
                    mask_rejected=mask_rejected,
                    note=note,
                    sign_off=bool(sign),
                    expected_revision=opened_revision,
                )
            except ReviewConflictError as exc:
                # Nothing was written; the form keeps what the reader typed so it can be applied again.
                st.error(f"Review not saved: {escape_md(exc)}", icon=":material/sync_problem:")
                st.markdown("Your input, to apply again:")
                st.code(f"label: {class_text(label)}\nreject mask: {mask_rejected}\nnote: {note}", language=None)
            except WorklistError as exc:
                st.error(f"Review not saved: {escape_md(exc)}")
            else:
                _saved(updated, reviewer, "Signed off" if sign else "Review saved")

st.subheader("Audit trail")
audit = wl.audit(selected)
st.dataframe(
    audit_frame(audit),
    hide_index=True,
    column_config={
        "when": "When (UTC)",
        "who": "Who",
        "action": "Action",
        "field": "Field",
        "old": "Old value",
        "new": "New value",
    },
)
