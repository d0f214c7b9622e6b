"""Small shared widgets."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import streamlit as st

from triage.housekeeping import free_bytes
from triage.ui.format import FLAG_TEXT, escape_md
from triage.ui.state import pop_flash
from triage.worklist import ReadOnlyStorageError, StorageError, Worklist

log = logging.getLogger(__name__)

DISCLAIMER = (
    "**Triage aid, not a diagnosis.** Results order the reading queue and point at regions of interest; "
    "every case must be read by a radiologist."
)

# What each flag means for the reader, shown on the Case review page.
FLAG_HELP: dict[str, str] = {
    "uncertain": "the model is **uncertain** between classes: read this case with extra care.",
    "ood": "this image is **outside what the model knows** (unusual contrast, scanner or anatomy); "
    "its prediction may be meaningless.",
    "disagreement": "the **classifier and segmenter disagree** (a tumor class without a mask, or a "
    "large mask on a no-tumor prediction).",
    "untrained_model": "this result comes from an **untrained placeholder model**: ignore the prediction.",
}


def banner() -> None:
    """The disclaimer shown on every page."""
    st.warning(DISCLAIMER, icon="⚠️")


# Below this much free space in the data folder every page says uploads may soon be refused.
LOW_FREE_BYTES = 128 * 1024 * 1024
RECOVERY_SHOWN = "recovery_shown"  # this session has seen the message about uploads from before a restart


def storage_banner(worklist: Worklist, settings) -> StorageError | None:
    """On every page: a read-only data folder (reading works, writes are refused), a damaged
    database (naming the file and what to do) or an almost full disk. Returns the problem."""
    problem = worklist.storage_problem()
    if isinstance(problem, ReadOnlyStorageError):
        st.warning(f"**Read-only.** {escape_md(problem)}", icon=":material/lock:")
    elif problem is not None:
        st.error(escape_md(problem), icon=":material/database:")
    else:
        free = free_bytes(settings)
        if free is not None and free < LOW_FREE_BYTES:
            st.warning(
                f"The disk of the data folder is almost full ({free / 1e6:.0f} MB free): large uploads will be "
                "refused. Ask an administrator to free some space.",
                icon=":material/storage:",
            )
    return problem


def storage_failure(exc: StorageError) -> None:
    """A page stopped by a storage fault: the reason instead of a raw error page."""
    log.error("page stopped by a storage fault: %s", exc)
    st.error(escape_md(exc), icon=":material/database:")


def run_page(page) -> None:
    """Run the page ``st.navigation`` chose; a damaged or unreadable worklist stops it with its reason."""
    try:
        page.run()
    except StorageError as exc:
        storage_failure(exc)


def recovery_notice(run) -> None:
    """Uploads received before a restart: 'being finished' while the background run works, then
    (once per session) what became of them."""
    if run.running and run.waiting:
        st.info(
            f"Finishing {run.waiting} upload batch{'es' if run.waiting != 1 else ''} received before the restart…",
            icon=":material/restore:",
        )
        return
    report = run.report
    if report is not None and report.files and not st.session_state.get(RECOVERY_SHOWN):
        st.session_state[RECOVERY_SHOWN] = True
        st.success(escape_md(report.message()), icon=":material/restore:")


def untrained_warning(trained: bool) -> None:
    if not trained:
        st.error(
            "The active models are **untrained placeholders**: their outputs are meaningless.", icon=":material/block:"
        )


def show_flags(flags: Iterable[str]) -> None:
    """One prominent box per flag (untrained and ood in red, the others in orange)."""
    for flag in flags:
        if flag == "rejected":
            continue
        name = FLAG_TEXT.get(flag) or escape_md(flag)  # a flag we do not know is shown as text
        text = FLAG_HELP.get(flag, name)
        if flag in ("ood", "untrained_model"):
            st.error(f"**Flag — {name}**: {text}", icon=":material/flag:")
        else:
            st.warning(f"**Flag — {name}**: {text}", icon=":material/flag:")


def show_flash() -> None:
    """Show (once) the message a previous run queued with ``state.flash`` (Markdown: whoever queues
    it escapes user text with ``escape_md``)."""
    queued = pop_flash()
    if queued:
        kind, message = queued
        getattr(st, kind if kind in ("success", "info", "warning", "error") else "info")(message)


def model_error(exc: Exception) -> None:
    """Explain that no usable model is installed, and how to get one (the exception, which names
    server folders, goes to the log only)."""
    log.warning("no usable model: %s: %s", type(exc).__name__, exc)
    st.error(
        "No usable model: the active classifier or segmenter is missing or cannot be read "
        "(the details are in the server log).",
        icon=":material/block:",
    )
    st.info(
        "Train one on the **Training** page or with `python -m triage train classifier` / "
        "`python -m triage train segmenter`, or restore the `weights/` folder."
    )
