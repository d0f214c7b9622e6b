"""The PACS status panel: what the `listen` / `poll` services recorded in the data folder's queue."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import streamlit as st

from triage.pacs import PacsQueue, PacsStatus, pacs_db_path
from triage.ui.resources import settings

# A component that has not written its state for this long is shown as "not seen recently".
STALE_S = 120


def _when(at: float | None) -> str:
    if not at:
        return "never"
    ago = max(0, time.time() - at)
    stamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{stamp} ({ago:.0f} s ago)"


def pacs_status() -> PacsStatus | None:
    """The queue's status, or None when no PACS service ever ran with this data folder."""
    path = pacs_db_path(settings())
    if not path.exists():
        return None
    return PacsQueue(path).status()


def render_pacs_status(status: PacsStatus | None) -> None:
    """Connection, last poll, received / analysed / refused / failed counts, last errors."""
    if status is None:
        st.info(
            "No PACS connection has run with this data folder. Start `python -m triage listen` (DICOM C-STORE) "
            "or `python -m triage poll --url …` (DICOMweb); see the README."
        )
        return
    c = status.counts
    cols = st.columns(5)
    cols[0].metric("Waiting", c.get("received", 0))
    cols[1].metric("Analysed", c.get("analysed", 0))
    cols[2].metric("Refused", c.get("rejected", 0))
    cols[3].metric("Failed", c.get("failed", 0))
    cols[4].metric("Results to send", status.outbox.get("pending", 0))
    st.caption(f"Last poll: {_when(status.last_poll)}. Results stored in the PACS: {status.outbox.get('sent', 0)}.")
    rows = []
    for name, (state, detail, at) in sorted(status.components.items()):
        stale = at and time.time() - at > STALE_S and name in ("poll",)
        rows.append(
            {
                "part": name,
                "state": state + (" (not seen recently)" if stale else ""),
                "detail": detail,
                "at": _when(at),
            }
        )
    if rows:
        st.dataframe(rows, hide_index=True, width="stretch")
    if status.errors:
        st.subheader("Last errors")
        st.dataframe(
            [{"at": _when(at), "part": comp, "message": msg} for at, comp, msg in status.errors],
            hide_index=True,
            width="stretch",
        )
