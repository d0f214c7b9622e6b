"""PACS: the state of the DICOM receiver / DICOMweb poller that feed the worklist."""

import streamlit as st

from triage.ui.auth import require_admin
from triage.ui.pacs_panel import pacs_status, render_pacs_status, render_service_controls
from triage.ui.state import init_state

init_state()
require_admin()
st.title("PACS")
st.caption(
    "Studies arrive from the PACS through `python -m triage listen` or `poll` (started here or as a system "
    "service, see the README); results go back as one SEG, SC and SR per analysed series."
)
render_service_controls()
render_pacs_status(pacs_status())
if st.button("Refresh"):
    st.rerun()
