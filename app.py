"""Brain-MRI triage workstation: the entry file only routes to the pages."""

import streamlit as st

from triage.ui.state import init_state
from triage.ui.widgets import banner

st.set_page_config(page_title="Brain-MRI triage", page_icon="🧠", layout="wide")
init_state()

PAGES = [
    st.Page("pages/worklist.py", title="Worklist", icon="📋", default=True),
    st.Page("pages/new_scans.py", title="New scans", icon="⬆️"),
    st.Page("pages/case_review.py", title="Case review", icon="🔍"),
    st.Page("pages/model.py", title="Model", icon="📄"),
    st.Page("pages/training.py", title="Training", icon="🛠️"),
]
page = st.navigation(PAGES)
banner()
page.run()
