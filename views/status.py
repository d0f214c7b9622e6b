"""Status: versions, data folder and disk use, last backup and background work (for IT and admins)."""

import pandas as pd
import streamlit as st

from triage.ui.auth import require_admin
from triage.ui.format import escape_md
from triage.ui.resources import get_service, settings
from triage.ui.state import init_state
from triage.ui.status import health_report, human_bytes, usage_rows, version_rows

init_state()
require_admin()
st.title("Status")
health = health_report(settings(), get_service())

if health.problems:
    for problem in health.problems:
        st.warning(escape_md(problem), icon=":material/warning:")
else:
    st.success("Models loaded, disk space and backups in order.", icon=":material/check_circle:")

left, right = st.columns(2)
with left:
    st.subheader("Versions")
    st.dataframe(pd.DataFrame(version_rows(health), columns=["component", "version"]), hide_index=True)
    st.subheader("Background work")
    st.markdown(
        "Training running: " + (escape_md(", ".join(health.training_running)) if health.training_running else "none")
    )
with right:
    st.subheader("Data folder")
    st.caption(
        f"{escape_md(health.data_dir)} · {human_bytes(health.free)} free on its disk · "
        f"sizes measured {health.usage_age_s:.0f} s ago"
    )
    st.dataframe(pd.DataFrame(usage_rows(health)), hide_index=True)
    st.subheader("Last backup")
    b = health.last_backup
    if b is None:
        st.caption("None yet: `python -m triage backup DEST` (safe while the app runs).")
    else:
        st.markdown(
            f"{escape_md(b.created)} UTC: {b.cases} cases, {b.files} files, integrity check `{escape_md(b.integrity)}`"
        )
