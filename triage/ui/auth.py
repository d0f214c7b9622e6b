"""Who is using the app: sign-in, session expiry, roles and the reviewer identity (issue 19).

Local accounts are :mod:`triage.accounts`. Where the hospital has an OpenID Connect identity
provider, an ``[auth]`` section in ``.streamlit/secrets.toml`` (never committed) adds a "Sign in
with the hospital account" button (Streamlit's ``st.login``); such a user is a reader unless a
local account of the same name (their e-mail address) says admin.
"""

from __future__ import annotations

from datetime import UTC, datetime

import streamlit as st

from triage.accounts import LOCAL_USER, Account, AccountStore, SignInRefused, session_expired
from triage.ui import state
from triage.ui.format import escape_md
from triage.ui.resources import settings

ACCOUNT = "account"  # the signed-in Account (or None)
SIGNED_IN_AT = "signed_in_at"
LAST_SEEN = "last_seen"
SIGN_IN_FORM = "sign_in_form"


def _store() -> AccountStore:
    return AccountStore(settings().data_dir)


def _oidc_configured() -> bool:
    try:
        return "auth" in st.secrets
    except Exception:  # no secrets.toml at all: the usual case
        return False


def _oidc_account() -> Account | None:
    try:
        if not st.user.is_logged_in:
            return None
    except Exception:
        return None
    name = str(st.user.get("email") or st.user.get("name") or "")
    roles = {n: r for n, r, active in _store().accounts() if active}
    return Account(name, roles.get(name, "reader")) if name else None


def current_account() -> Account | None:
    """The account of this browser session; LOCAL_USER before any account exists; None: sign in."""
    store = _store()
    if not store.any_accounts() and not _oidc_configured():
        return LOCAL_USER
    now = datetime.now(UTC)
    account = st.session_state.get(ACCOUNT)
    if account is None and _oidc_configured():
        account = _oidc_account()
        if account is not None:
            st.session_state[ACCOUNT], st.session_state[SIGNED_IN_AT] = account, now
    if account is None:
        return None
    if session_expired(st.session_state.get(SIGNED_IN_AT, now), st.session_state.get(LAST_SEEN, now), now):
        sign_out()
        state.flash("info", "Your session expired; please sign in again.")
        return None
    st.session_state[LAST_SEEN] = now
    return account


def sign_out() -> None:
    for key in (ACCOUNT, SIGNED_IN_AT, LAST_SEEN):
        st.session_state.pop(key, None)
    st.session_state[state.REVIEWER] = ""


def sign_in_page() -> None:
    """The only page shown until someone signs in."""
    st.title("Sign in")
    with st.form(SIGN_IN_FORM, clear_on_submit=True):  # a refused password is not left in the field
        name = st.text_input("Account name")
        password = st.text_input("Password", type="password")
        go = st.form_submit_button("Sign in", type="primary")
    if go:
        try:
            account = _store().sign_in(name, password)
        except SignInRefused as exc:
            st.error(escape_md(exc), icon=":material/lock:")
        else:
            now = datetime.now(UTC)
            st.session_state[ACCOUNT], st.session_state[SIGNED_IN_AT], st.session_state[LAST_SEEN] = account, now, now
            st.rerun()
    if _oidc_configured():
        st.button("Sign in with the hospital account", on_click=st.login)
    st.caption("Accounts are created by an admin: `python -m triage users add NAME --role reader|admin`.")


def account_sidebar(account: Account) -> None:
    """Who is signed in, and a way out (or the single-user note)."""
    with st.sidebar:
        if account is LOCAL_USER:
            st.caption(
                "Single-user station: no sign-in until an admin creates the first account "
                "(`python -m triage users add NAME --role admin`)."
            )
            return
        st.caption(f"Signed in as **{escape_md(account.name)}** ({account.role})")
        if st.button("Sign out", key="sign-out"):
            sign_out()
            try:
                if st.user.is_logged_in:
                    st.logout()
            except Exception:
                pass
            st.rerun()


def require_admin() -> Account:
    """Stop the page unless an admin is signed in (pages hidden from readers check too)."""
    account = st.session_state.get(ACCOUNT) or current_account()
    if account is None or not account.is_admin:
        st.error("This page is for admins: importing data, training, promotion, rollback and status.")
        st.stop()
    return account


def reviewer_input(container=st, label: str = "Reviewer", key: str | None = None) -> str:
    """The reviewer's name: the signed-in account (not editable), else typed as before."""
    account = st.session_state.get(ACCOUNT)
    if account is not None and account is not LOCAL_USER:
        container.text_input(label, value=account.name, disabled=True, help="From your sign-in", key=key)
        return account.name
    return container.text_input(label, value=st.session_state.get(state.REVIEWER, ""), max_chars=100, key=key)
