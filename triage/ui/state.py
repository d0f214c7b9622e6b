"""Session-state keys (the only place they are spelled) and their defaults.

Widget keys that pages read or reset live here too, so no page spells a key by hand.
"""

from __future__ import annotations

import copy

import streamlit as st

# Values kept across pages.
SELECTED_CASE = "selected_case"  # scan_id opened in Case review (or None)
REVIEWER = "reviewer"  # the reviewer's name, remembered for the next case
LAST_UPLOAD = "last_upload"  # result rows of the last New scans batch (list of dicts) or None
UPLOAD_NONCE = "upload_nonce"  # bumped after a batch so the file uploaders start empty
TRAIN_RUN = "train_run"
WORKLIST_FILTERS = "worklist_filters"  # filters of the Worklist page, reused by previous/next
WORKLIST_NONCE = "worklist_nonce"  # bumped when a row is opened so the table selection resets
FLASH = "flash"  # one-shot (kind, message) shown at the top of the next run
OPENED_REVISION = "opened_revision"  # {scan_id: the case revision this session's page shows}
DEEP_LINK = "deep_link"  # the ?case= value Case review last applied (a link opens its case once)

# Widget keys.
CASE_PICKER = "case_picker"
WORKLIST_TABLE = "worklist_table"
WORKLIST_OPEN = "worklist_open"
WORKLIST_VIEW = "worklist_view"  # To read / Signed off / All
SERIES_OPEN = "series_open"  # per-series "open" buttons of the Worklist page
STACK_SLIDER = "stack_slider"  # the stack viewer's slice slider (keyed by series)
STACK_PLOT = "stack_plot"  # the probability-along-the-stack chart (click a point to jump)
UPLOAD_FILES = "upload_files"
UPLOAD_FOLDER = "upload_folder"
UPLOAD_MASKS = "upload_masks"
UPLOAD_TRUTH = "upload_truth"
CAM_CLASS = "cam_class"
CAM_METHOD = "cam_method"  # the heatmap method (kept from case to case)
# The Case review viewer (issue 16): overlays and opacity kept from case to case, window/level per case.
VIEWER = "viewer"
VIEW_MASK, VIEW_HEAT, VIEW_TRUTH = "view_mask", "view_heat", "view_truth"
VIEW_OPACITY = "view_opacity"
VIEW_PRESET = "view_preset"
VIEW_WINDOW, VIEW_LEVEL = "view_window", "view_level"
REVIEW_FORM = "review_form"
ADDENDUM_FORM = "addendum_form"
STUDY_FORM = "study_form"  # the stack viewer's whole-study sign-off
STUDY_REPORT = "study_report"  # (scan_id, study_key, PDF bytes) prepared on the Case review page

_DEFAULTS = {
    SELECTED_CASE: None,
    REVIEWER: "",
    LAST_UPLOAD: None,
    UPLOAD_NONCE: 0,
    TRAIN_RUN: None,
    WORKLIST_FILTERS: {},
    WORKLIST_NONCE: 0,
    FLASH: None,
    OPENED_REVISION: {},
    DEEP_LINK: None,
}


def init_state() -> None:
    """Fill missing session keys (idempotent)."""
    for key, value in _DEFAULTS.items():
        if key not in st.session_state:
            # A copy: a mutable default ({} or []) would otherwise be one object shared by every session.
            st.session_state[key] = copy.deepcopy(value)


def keyed(base: str, *parts: object) -> str:
    """A widget key derived from a constant, e.g. ``keyed(UPLOAD_FILES, nonce)``."""
    return "-".join([base, *(str(p) for p in parts)])


def flash(kind: str, message: str) -> None:
    """Queue a message ('success' | 'info' | 'warning' | 'error') for the next run."""
    st.session_state[FLASH] = (kind, message)


def pop_flash() -> tuple[str, str] | None:
    """The queued message, removed from the session."""
    return st.session_state.pop(FLASH, None) if st.session_state.get(FLASH) else None


# Training page (issue #5): session values and widget keys.
TRAIN_CHECK = "train_check"  # background-task key of this session's data check (or None)
TRAIN_SUMMARY = "train_summary"  # dict of the last checked dataset's ImportSummary (or None)
TRAIN_SOURCE, TRAIN_FOLDER, TRAIN_MANIFEST, TRAIN_ZIP = "train_source", "train_folder", "train_manifest", "train_zip"
TRAIN_TASK, TRAIN_INIT, TRAIN_PRESET = "train_task", "train_init", "train_preset"
TRAIN_EPOCHS, TRAIN_BUDGET = "train_epochs", "train_budget"
_DEFAULTS.update({TRAIN_CHECK: None, TRAIN_SUMMARY: None})
