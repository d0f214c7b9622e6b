"""Small shared widgets."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import streamlit as st

from triage.ui.format import FLAG_TEXT, escape_md
from triage.ui.state import pop_flash

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
