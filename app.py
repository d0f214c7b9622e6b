"""Brain-MRI triage workstation: the entry file only routes to the pages.

The page files live in ``views/``, not ``pages/``: a ``pages/`` folder switches streamlit into its
legacy multipage mode, where a first request to a page URL (a bookmark after a restart) runs
that file on its own, without this router, its banner and its navigation.
"""

import streamlit as st

from triage.ui.resources import start_warm_up
from triage.ui.state import init_state
from triage.ui.widgets import banner

st.set_page_config(page_title="Brain-MRI triage", page_icon="🧠", layout="wide")
init_state()
start_warm_up()  # background thread, once per server: the first upload finds the models loaded

PAGES = [
    st.Page("views/worklist.py", title="Worklist", icon="📋", default=True),
    st.Page("views/new_scans.py", title="New scans", icon="⬆️"),
    st.Page("views/case_review.py", title="Case review", icon="🔍"),
    st.Page("views/model.py", title="Model", icon="📄"),
    st.Page("views/training.py", title="Training", icon="🛠️"),
    st.Page("views/pacs.py", title="PACS", icon="🏥"),
]
page = st.navigation(PAGES)
banner()
page.run()
