"""Who may use the review station: argon2 passwords, server-side sessions, CSRF tokens, lockout.

- Passwords: argon2id (argon2-cffi's defaults); an unknown user name costs the same hash check as a wrong
  password, and both get the same answer.
- Sessions: the cookie holds 32 random bytes; the database keeps their SHA-256, the user, a per-session CSRF
  token and two expiries: idle (renewed by each request) and absolute (from login). Logout, a password change
  and disabling a user delete the session rows.
- Lockout: 5 failed logins for one user name lock it for 15 minutes, whether the name exists or not; a
  successful login clears the count. Each attempt is counted before its password is checked, so parallel
  guesses cannot slip past the limit.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from edge.errors import InputError
from edge.findings import iso_utc
from hospital.review.db import ROLES, ReviewDB, User

MAX_FAILURES = 5
LOCKED_MESSAGE = "Too many failed logins: this account is locked for 15 minutes."
LOCKOUT_S = 15 * 60
IDLE_S = 30 * 60
ABSOLUTE_S = 12 * 3600
MIN_PASSWORD = 8

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))  # for unknown user names: the same work as a real check


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise InputError(f"the password needs at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def check_password(stored_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def valid_username(name: str) -> bool:
    return 0 < len(name) <= 64 and all(c.isalnum() or c in "._-@" for c in name)


def create_user(db: ReviewDB, username: str, role: str, password: str, created_by: str | None) -> None:
    if not valid_username(username):
        raise InputError(f"user name {username!r}: use 1-64 letters, digits and . _ - @")
    if role not in ROLES:
        raise InputError(f"role {role!r}: use one of {', '.join(ROLES)}")
    if db.user(username) is not None:
        raise InputError(f"user {username} exists already")
    db.add_user(username, role, hash_password(password), created_by)


def token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True)
class Session:
    id: str
    user: User
    csrf: str
    expires_at: str


@dataclass(frozen=True)
class LoginResult:
    session_token: str | None  # set on success
    message: str  # what the login page says otherwise
    locked: bool = False


class Auth:
    def __init__(self, db: ReviewDB, clock: Callable[[], float], idle_s: float = IDLE_S, absolute_s: float = ABSOLUTE_S,
                 max_failures: int = MAX_FAILURES, lockout_s: float = LOCKOUT_S) -> None:
        self.db, self.clock = db, clock
        self.idle_s, self.absolute_s = idle_s, absolute_s
        self.max_failures, self.lockout_s = max_failures, lockout_s

    def now(self, plus: float = 0.0) -> str:
        return iso_utc(self.clock() + plus)

    def login(self, username: str, password: str, remote: str | None) -> LoginResult:
        db, now = self.db, self.now()
        username = username.strip()[:64]
        attempt, locked_until = self._count_attempt(username, now)
        if locked_until or attempt > self.max_failures:
            db.audit("login_locked", username, at=now, remote=remote,
                     detail=f"locked until {locked_until}" if locked_until else f"attempt {attempt} in flight")
            return LoginResult(None, LOCKED_MESSAGE, locked=True)
        found = db.user(username)
        ok = check_password(found[1] if found else None, password) and found is not None and found[0].active
        if not ok:
            lock = self.now(self.lockout_s) if attempt >= self.max_failures else None
            with db.transaction():
                if lock:
                    db.execute("UPDATE {lockouts} SET failures = 0, locked_until = ? WHERE username = ?", (lock, username))
                db.audit("login_failed", username, at=now, remote=remote,
                         detail=f"locked until {lock}" if lock else f"failure {attempt}")
            if lock:
                return LoginResult(None, LOCKED_MESSAGE, locked=True)
            return LoginResult(None, "Wrong user name or password.")
        token = secrets.token_urlsafe(32)
        with db.transaction():
            db.execute("DELETE FROM {lockouts} WHERE username = ?", (username,))
            db.execute("DELETE FROM {sessions} WHERE absolute_expires_at < ? OR expires_at < ?", (now, now))
            db.execute("INSERT INTO {sessions} (id, username, csrf, created_at, expires_at, absolute_expires_at, remote)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (token_id(token), username, secrets.token_urlsafe(32), now, self.now(self.idle_s),
                        self.now(self.absolute_s), remote))
            db.audit("login", username, at=now, remote=remote)
        return LoginResult(token, "")

    def _count_attempt(self, username: str, now: str) -> tuple[int, str | None]:
        """Count this login attempt before its password is checked: (attempts so far, this one included;
        the lock's end while locked). Counting afterwards let parallel wrong passwords, each checked while
        the others were hashing, read the same count and past the limit together. Only this transaction
        writes the count (the row lock on PostgreSQL, BEGIN IMMEDIATE on SQLite), so across threads,
        processes and stations at most ``max_failures`` passwords are checked per lockout window."""
        db = self.db
        with db.transaction():
            db.execute("INSERT INTO {lockouts} (username, failures, locked_until) VALUES (?, 0, NULL)"
                       " ON CONFLICT (username) DO NOTHING", (username,))
            failures, locked_until = db.one("SELECT failures, locked_until FROM {lockouts} WHERE username = ?"
                                            + (" FOR UPDATE" if db.pg else ""), (username,))
            if locked_until and locked_until > now:
                return failures, locked_until
            failures = (0 if locked_until else failures) + 1  # an expired lock starts a new count
            db.execute("UPDATE {lockouts} SET failures = ?, locked_until = NULL WHERE username = ?", (failures, username))
        return failures, None

    def session(self, token: str | None) -> Session | None:
        """The live session this cookie token names (renewing its idle expiry), or None."""
        if not token or len(token) > 100:
            return None
        db, now = self.db, self.now()
        sid = token_id(token)
        row = db.one("SELECT s.csrf, s.expires_at, s.absolute_expires_at, u.username, u.role, u.active, u.created_at,"
                     " u.created_by FROM {sessions} s JOIN {users} u ON u.username = s.username WHERE s.id = ?", (sid,))
        if row is None:
            return None
        csrf, expires, absolute, username, role, active, created_at, created_by = row
        if expires <= now or absolute <= now or not active:
            db.execute("DELETE FROM {sessions} WHERE id = ?", (sid,))
            return None
        renewed = min(self.now(self.idle_s), absolute)
        db.execute("UPDATE {sessions} SET expires_at = ? WHERE id = ?", (renewed, sid))
        return Session(sid, User(username, role, bool(active), created_at, created_by), csrf, renewed)

    def logout(self, session: Session, remote: str | None) -> None:
        with self.db.transaction():
            self.db.execute("DELETE FROM {sessions} WHERE id = ?", (session.id,))
            self.db.audit("logout", session.user.username, at=self.now(), remote=remote)
