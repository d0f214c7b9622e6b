"""Local accounts (issue 19, item 1): hashing, roles, failed sign-in limit, session expiry, CLI."""

from __future__ import annotations

import io
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from triage import cli
from triage.accounts import (
    DB_NAME,
    MAX_FAILURES,
    AccountError,
    AccountStore,
    SignInRefused,
    session_expired,
)

PASSWORD = "correct horse battery"


def test_a_fresh_install_needs_no_sign_in_and_creates_no_file(tmp_path):
    store = AccountStore(tmp_path)
    assert not store.any_accounts() and not (tmp_path / DB_NAME).exists()


def test_accounts_store_only_a_hash_and_sign_in_checks_it(tmp_path):
    store = AccountStore(tmp_path)
    store.add("dr.a", "reader", PASSWORD)
    assert store.any_accounts()
    raw = (tmp_path / DB_NAME).read_bytes()
    assert PASSWORD.encode() not in raw and b"$argon2id$" in raw
    account = store.sign_in("dr.a", PASSWORD)
    assert (account.name, account.role, account.is_admin) == ("dr.a", "reader", False)
    with pytest.raises(SignInRefused, match="wrong name or password"):
        store.sign_in("dr.a", "wrong password!!")
    with pytest.raises(SignInRefused, match="wrong name or password"):
        store.sign_in("nobody", PASSWORD)  # the same message: no oracle for account names
    store.set_active("dr.a", False)
    with pytest.raises(SignInRefused, match="disabled"):
        store.sign_in("dr.a", PASSWORD)
    log = store.sign_in_log()
    assert [ok for _, _, ok, _ in log] == [False, False, False, True]


def test_bad_names_roles_and_short_passwords_are_refused(tmp_path):
    store = AccountStore(tmp_path)
    for name, role, pw in (
        ("a", "reader", PASSWORD),
        ("x y", "reader", PASSWORD),
        ("dr.b", "root", PASSWORD),
        ("dr.b", "admin", "short"),
    ):
        with pytest.raises(AccountError):
            store.add(name, role, pw)
    store.add("dr.b", "admin", PASSWORD)
    with pytest.raises(AccountError, match="exists"):
        store.add("dr.b", "reader", PASSWORD)


def test_too_many_failures_lock_the_account_even_for_the_right_password(tmp_path):
    store = AccountStore(tmp_path)
    store.add("dr.c", "admin", PASSWORD)
    for _ in range(MAX_FAILURES):
        with pytest.raises(SignInRefused):
            store.sign_in("dr.c", "guess guess guess")
    with pytest.raises(SignInRefused, match="too many"):
        store.sign_in("dr.c", PASSWORD)
    # once the window has passed the account opens again
    with sqlite3.connect(tmp_path / DB_NAME) as con:
        con.execute("UPDATE sign_ins SET at = '2000-01-01T00:00:00+00:00'")
    assert store.sign_in("dr.c", PASSWORD).is_admin


def test_sessions_expire_when_idle_or_too_old():
    now = datetime.now(UTC)
    assert not session_expired(now - timedelta(hours=1), now - timedelta(minutes=5), now)
    assert session_expired(now - timedelta(hours=1), now - timedelta(minutes=31), now)
    assert session_expired(now - timedelta(hours=13), now - timedelta(minutes=1), now)


def test_cli_users(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path))
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert cli.main(["users", "add", "it.admin", "--role", "admin", "--password-stdin"]) == 0
    assert AccountStore(tmp_path).sign_in("it.admin", PASSWORD).is_admin
    assert cli.main(["users", "disable", "it.admin"]) == 0
    capsys.readouterr()
    assert cli.main(["users", "list"]) == 0
    listed = capsys.readouterr().out
    assert "it.admin" in listed and "admin" in listed and "disabled" in listed
