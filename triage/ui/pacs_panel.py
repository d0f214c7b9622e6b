"""The PACS panel: start / stop the `listen` / `poll` services, and what they recorded in the queue."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import streamlit as st

from triage.pacs import PacsQueue, PacsStatus, pacs_db_path
from triage.pacs_service import (
    ServiceError,
    ServiceState,
    listen_args,
    poll_args,
    service_state,
    start_service,
    stop_service,
)
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


_TITLES = {"listen": "DICOM receiver (C-STORE)", "poll": "DICOMweb poller"}
_SHORT = {"listen": "receiver", "poll": "poller"}


def _service_summary(state: ServiceState) -> str:
    if not state.running:
        return "**stopped**"
    return f"**running** (pid {state.pid}, since {_when(state.started_at)}): `{' '.join(state.command[2:])}`"


def _listen_options() -> list[str]:
    c = st.columns(3)
    ae = c[0].text_input("AE title", "TRIAGE", max_chars=16, key="pacs_listen_ae")
    port = c[1].number_input("Port", 1, 65535, 11112, key="pacs_listen_port")
    everywhere = c[2].toggle(
        "Listen on every interface (0.0.0.0)",
        False,
        key="pacs_listen_all",
        help="Off: this machine only (127.0.0.1). On: the hospital network can connect; set the allowed AE titles.",
    )
    allow = st.text_input(
        "Allowed calling AE titles (space-separated; empty: any)", "", key="pacs_listen_allow"
    ).split()
    send = st.text_input(
        "Send results to (dicom://AE@host:port or a DICOMweb URL; empty: do not send)", "", key="pacs_listen_send"
    )
    return listen_args(ae.strip(), int(port), "0.0.0.0" if everywhere else "127.0.0.1", allow, send.strip())


def _poll_options() -> list[str]:
    c = st.columns([3, 1])
    url = c[0].text_input("DICOMweb URL", "", placeholder="http://pacs:8042/dicom-web", key="pacs_poll_url")
    interval = c[1].number_input("Every (s)", 1.0, 3600.0, 30.0, key="pacs_poll_interval")
    send = st.text_input(
        "Send results to (DICOMweb URL or dicom://AE@host:port; empty: do not send)", "", key="pacs_poll_send"
    )
    return poll_args(url.strip(), float(interval), send.strip())


def render_service_controls() -> None:
    """Start / stop the receiver and the poller as background processes of this data folder.

    Their state is read from the pid files on every run (psutil), so it is the same in every tab
    and after a rerun; the lock in :mod:`triage.pacs_service` keeps two tabs from starting two."""
    s = settings()
    for kind in ("listen", "poll"):
        state = service_state(s, kind)
        with st.container(border=True):
            st.markdown(f"**{_TITLES[kind]}**: {_service_summary(state)}")
            if state.running:
                if st.button(f"Stop the {_SHORT[kind]}", key=f"pacs_stop_{kind}"):
                    stop_service(s, kind)
                    st.rerun()
            else:
                args = _listen_options() if kind == "listen" else _poll_options()
                if st.button(f"Start the {_SHORT[kind]}", key=f"pacs_start_{kind}"):
                    try:
                        start_service(s, kind, args)
                    except ServiceError as exc:
                        st.error(str(exc))
                    else:
                        st.rerun()
            if state.log_tail:
                with st.expander("Recent output"):
                    st.code("\n".join(state.log_tail), language=None)
