"""PACS: the state of the DICOM receiver / DICOMweb poller that feed the worklist."""

import streamlit as st

from triage.ui.auth import require_admin
from triage.ui.pacs_panel import pacs_status, render_pacs_status
from triage.ui.state import init_state

init_state()
require_admin()
st.title("PACS")
st.caption(
    "Studies arrive from the PACS through `python -m triage listen` or `poll`; results go back as SEG, SC and SR."
)
render_pacs_status(pacs_status())
if st.button("Refresh"):
    st.rerun()
