"""Local accounts and roles (issue 19, item 1).

Accounts live in their own SQLite file in the data folder (``accounts.sqlite3``), apart from the
worklist so a worklist backup or restore never changes who may sign in. Passwords are hashed with
Argon2id (argon2-cffi, the reference binding); the hash is the only thing stored.

Two roles: a **reader** reviews and signs off cases; an **admin** also imports training data,
trains, promotes and rolls back models and sees the Status page. Until the first account is
created the workstation runs as a single-user station (no sign-in, every action recorded as the
local user, a banner says so); once any account exists, every page needs a sign-in.

Failed sign-ins are limited per account name (:data:`MAX_FAILURES` within
:data:`LOCKOUT_MINUTES` lock it for that long) and every attempt is logged in the same file.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from triage.errors import TriageError

log = logging.getLogger(__name__)

ROLES = ("reader", "admin")
DB_NAME = "accounts.sqlite3"
MAX_FAILURES = 5
LOCKOUT_MINUTES = 15
MIN_PASSWORD_CHARS = 10
# A signed-in session ends after this long without a page run, and after SESSION_HOURS in any case.
IDLE_MINUTES = 30
SESSION_HOURS = 12
NAME_RE = re.compile(r"[A-Za-z0-9._@-]{2,64}")

_HASHER = PasswordHasher()
_SCHEMA_READY: set[Path] = set()
_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 1,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sign_ins (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    name TEXT NOT NULL,
    ok INTEGER NOT NULL,
    reason TEXT NOT NULL
);
"""


class AccountError(TriageError):
    """An account could not be created or changed (bad name, role or password)."""


class SignInRefused(TriageError):
    """Wrong name or password, a disabled account, or too many failures."""


@dataclass(frozen=True)
class Account:
    """Who is signed in: the name that goes into reviews, sign-offs and the audit trail."""

    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


LOCAL_USER = Account("local user", "admin")  # the single-user station before any account exists


def _now() -> datetime:
    return datetime.now(UTC)


class AccountStore:
    """The accounts file of one data folder."""

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / DB_NAME

    def _connect(self) -> sqlite3.Connection:
        # The schema script runs once per file and process, not on every page run's sign-in check.
        fresh = self.path not in _SCHEMA_READY or not self.path.is_file()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=10)
        if fresh:
            con.executescript(_SCHEMA)
            _SCHEMA_READY.add(self.path)
        return con

    def any_accounts(self) -> bool:
        """Whether sign-in is required (False on a fresh install; the file is not created)."""
        if not self.path.is_file():
            return False
        with closing(self._connect()) as con:
            return con.execute("SELECT 1 FROM accounts WHERE active = 1 LIMIT 1").fetchone() is not None

    def add(self, name: str, role: str, password: str) -> Account:
        """Create an account (raises AccountError for a taken or bad name, a bad role or a short password)."""
        if not NAME_RE.fullmatch(name):
            raise AccountError("a name is 2-64 letters, digits or . _ @ -")
        if role not in ROLES:
            raise AccountError(f"role must be one of {ROLES}")
        _check_password(password)
        with closing(self._connect()) as con, con:
            try:
                con.execute(
                    "INSERT INTO accounts (name, role, password_hash, created_at) VALUES (?, ?, ?, ?)",
                    (name, role, _HASHER.hash(password), _now().isoformat(timespec="seconds")),
                )
            except sqlite3.IntegrityError as exc:
                raise AccountError(f"an account named {name!r} exists already") from exc
        log.info("account %s created (%s)", name, role)
        return Account(name, role)

    def set_password(self, name: str, password: str) -> None:
        _check_password(password)
        with closing(self._connect()) as con, con:
            if not con.execute(
                "UPDATE accounts SET password_hash = ? WHERE name = ?", (_HASHER.hash(password), name)
            ).rowcount:
                raise AccountError(f"no account named {name!r}")

    def set_active(self, name: str, active: bool) -> None:
        with closing(self._connect()) as con, con:
            if not con.execute("UPDATE accounts SET active = ? WHERE name = ?", (int(active), name)).rowcount:
                raise AccountError(f"no account named {name!r}")

    def accounts(self) -> list[tuple[str, str, bool]]:
        """(name, role, active) of every account."""
        if not self.path.is_file():
            return []
        with closing(self._connect()) as con:
            return [(n, r, bool(a)) for n, r, a in con.execute("SELECT name, role, active FROM accounts ORDER BY name")]

    def _recent_failures(self, con: sqlite3.Connection, name: str) -> int:
        since = (_now() - timedelta(minutes=LOCKOUT_MINUTES)).isoformat(timespec="seconds")
        rows = con.execute(
            "SELECT ok FROM sign_ins WHERE name = ? AND at >= ? ORDER BY id DESC", (name, since)
        ).fetchall()
        failures = 0
        for (ok,) in rows:  # failures since the last success inside the window
            if ok:
                break
            failures += 1
        return failures

    def sign_in(self, name: str, password: str) -> Account:
        """The account if ``password`` is right; SignInRefused (logged) otherwise."""
        name = name.strip()
        refusal = None
        # The attempt is logged (committed) before a refusal is raised: raising inside the
        # transaction would roll the log line back, and with it the failure count.
        with closing(self._connect()) as con, con:
            row = con.execute("SELECT role, password_hash, active FROM accounts WHERE name = ?", (name,)).fetchone()
            if self._recent_failures(con, name) >= MAX_FAILURES:
                refusal = (
                    "locked",
                    f"too many failed sign-ins for this account; try again in {LOCKOUT_MINUTES} minutes",
                )
            else:
                ok = False
                if row is not None:
                    try:
                        ok = _HASHER.verify(row[1], password)
                    except (VerificationError, InvalidHashError):
                        ok = False
                if not ok:
                    refusal = ("wrong name or password", "wrong name or password")
                elif not row[2]:
                    refusal = ("disabled", "this account is disabled")
            self._log(con, name, refusal is None, refusal[0] if refusal else "ok")
        if refusal is not None:
            raise SignInRefused(refusal[1])
        log.info("sign-in: %s (%s)", name, row[0])
        return Account(name, row[0])

    def sign_in_log(self, limit: int = 50) -> list[tuple[str, str, bool, str]]:
        """The latest attempts, newest first: (time, name, ok, reason)."""
        if not self.path.is_file():
            return []
        with closing(self._connect()) as con:
            return [
                (a, n, bool(o), r)
                for a, n, o, r in con.execute(
                    "SELECT at, name, ok, reason FROM sign_ins ORDER BY id DESC LIMIT ?", (limit,)
                )
            ]

    @staticmethod
    def _log(con: sqlite3.Connection, name: str, ok: bool, reason: str) -> None:
        con.execute(
            "INSERT INTO sign_ins (at, name, ok, reason) VALUES (?, ?, ?, ?)",
            (_now().isoformat(timespec="seconds"), name[:64], int(ok), reason),
        )
        if not ok:
            log.warning("sign-in refused for %r: %s", name[:64], reason)


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise AccountError(f"a password needs at least {MIN_PASSWORD_CHARS} characters")


def session_expired(signed_in_at: datetime, last_seen: datetime, now: datetime | None = None) -> bool:
    """Whether a signed-in session has run out (idle too long, or too long in all)."""
    now = now or _now()
    return now - last_seen > timedelta(minutes=IDLE_MINUTES) or now - signed_in_at > timedelta(hours=SESSION_HOURS)
