"""Brain-MRI triage workstation: the entry file only routes to the pages.

The page files live in ``views/``, not ``pages/``: a ``pages/`` folder switches streamlit into its
legacy multipage mode, where a first request to a page URL (a bookmark after a restart) runs
that file on its own, without this router, its banner and its navigation.
"""

import streamlit as st

from triage.ui.auth import account_sidebar, current_account, sign_in_page
from triage.ui.resources import get_worklist, settings, start_recovery, start_warm_up
from triage.ui.state import init_state
from triage.ui.widgets import banner, recovery_notice, run_page, storage_banner

st.set_page_config(page_title="Brain-MRI triage", page_icon="🧠", layout="wide")
init_state()
start_warm_up()  # background thread, once per server: the first upload finds the models loaded

READER_PAGES = [
    st.Page("views/worklist.py", title="Worklist", icon="📋", default=True),
    st.Page("views/new_scans.py", title="New scans", icon="⬆️"),
    st.Page("views/case_review.py", title="Case review", icon="🔍"),
    st.Page("views/model.py", title="Model", icon="📄"),
]
# Importing training data, training, promotion, rollback, status and the PACS link: admins only.
ADMIN_PAGES = [
    st.Page("views/training.py", title="Training", icon="🛠️"),
    st.Page("views/status.py", title="Status", icon="🩺"),
    st.Page("views/pacs.py", title="PACS", icon="🏥"),
]
account = current_account()
if account is None:
    page = st.navigation([st.Page(sign_in_page, title="Sign in", icon="🔑")])
else:
    page = st.navigation(READER_PAGES + (ADMIN_PAGES if account.is_admin else []))
    account_sidebar(account)
banner()
storage_banner(get_worklist(), settings())  # read-only folder, damaged database, full disk
recovery_notice(start_recovery())  # uploads received before a restart are finished in the background
run_page(page)  # a damaged or unreadable worklist: its reason, never a raw error page
