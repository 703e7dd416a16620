"""The review station's tables, in the receiver's database (SQLite by default, PostgreSQL by URL).

The review station reads the receivers' findings table and never writes it. Everything it keeps is in
tables of its own (``review_*`` in SQLite, ``medge_review_*`` in PostgreSQL, the way `hospital.store` names
its tables), created and migrated at start under a schema version table:

- ``users``: local accounts (argon2 hash, role reviewer|admin, active flag);
- ``sessions``: server-side sessions, keyed by the SHA-256 of the cookie's token (the database never holds
  a token that would log anyone in), with the session's CSRF token and its expiry;
- ``lockouts``: failed logins per submitted user name (known or not, so a lockout does not tell which names
  exist);
- ``verdicts`` and ``audit``: append-only (triggers refuse UPDATE and DELETE); the latest verdict on a
  finding counts, earlier ones stay;
- ``findings``: an index of the fields the worklist and the dashboard sort and group by (priority,
  needs_review, model, site, device, modality, label, times), filled from the receivers' table as findings
  arrive, so no page parses every stored document (they carry overlay pictures) on every request.

SQLite: WAL and a 30 s busy timeout, so the station opens the database while receivers write to it. One
connection, serialised by a lock: a reading room's load, not a web farm's. The SQL is written once with
``?`` placeholders and ``{table}`` names; PostgreSQL gets ``%s`` and its own names (not exercised in CI).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import ConfigError, cause_line
from edge.findings import iso_utc
from hospital.migrations import PG_LOCK_KEY
from hospital.store import StoreUnavailable, is_postgres, safe_url

SCHEMA_VERSION = 2
CONNECT_TIMEOUT_S = 5  # a PostgreSQL that does not answer fails a page in seconds, not at the TCP timeout
log = logging.getLogger("medge.review")
PRIORITY_RANK = {"urgent": 0, "routine": 1, "low": 2}
VERDICTS = ("agree", "disagree", "corrected")
STATES = ("unreviewed", "agreed", "disagreed", "corrected")  # a finding's state: its latest verdict, or none
STATE_OF_VERDICT = {"agree": "agreed", "disagree": "disagreed", "corrected": "corrected"}
ROLES = ("reviewer", "admin")
INDEX_EVERY_S = 1.0  # at most this often the station looks for newly received findings

_TABLES = ("schema", "users", "sessions", "lockouts", "verdicts", "audit", "findings")
_APPEND_ONLY = ("verdicts", "audit")


def _migrations(serial: str) -> dict[int, list[str]]:
    return {1: [
        "CREATE TABLE {users} (username TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL,"
        " active INTEGER NOT NULL DEFAULT 1, created_at TEXT NOT NULL, created_by TEXT)",
        "CREATE TABLE {sessions} (id TEXT PRIMARY KEY, username TEXT NOT NULL, csrf TEXT NOT NULL,"
        " created_at TEXT NOT NULL, expires_at TEXT NOT NULL, absolute_expires_at TEXT NOT NULL, remote TEXT)",
        "CREATE TABLE {lockouts} (username TEXT PRIMARY KEY, failures INTEGER NOT NULL, locked_until TEXT)",
        f"CREATE TABLE {{verdicts}} (id {serial}, finding_id TEXT NOT NULL, verdict TEXT NOT NULL"
        " CHECK (verdict IN ('agree', 'disagree', 'corrected')), corrected_label TEXT, comment TEXT,"
        " reviewer TEXT NOT NULL, at TEXT NOT NULL)",
        "CREATE INDEX {verdicts}_finding ON {verdicts} (finding_id)",
        f"CREATE TABLE {{audit}} (id {serial}, at TEXT NOT NULL, username TEXT, action TEXT NOT NULL,"
        " finding_id TEXT, detail TEXT, remote TEXT)",
        "CREATE INDEX {audit}_at ON {audit} (at)",
        "CREATE TABLE {findings} (finding_id TEXT PRIMARY KEY, site TEXT NOT NULL, device_id TEXT NOT NULL,"
        " modality TEXT NOT NULL, model_name TEXT NOT NULL, model_version TEXT NOT NULL, model_sha256 TEXT NOT NULL,"
        " label TEXT NOT NULL, confidence DOUBLE PRECISION, needs_review INTEGER NOT NULL, priority_rank INTEGER NOT NULL,"
        " priority TEXT NOT NULL, received_at TEXT NOT NULL, acquired_at TEXT, sort_time TEXT NOT NULL)",
        "CREATE INDEX {findings}_order ON {findings} (priority_rank, needs_review, sort_time)",
    ],
        2: [],  # PostgreSQL: the append-only tables refuse TRUNCATE too (`_append_only_triggers`)
    }


@dataclass(frozen=True)
class User:
    username: str
    role: str
    active: bool
    created_at: str
    created_by: str | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class Verdict:
    id: int
    finding_id: str
    verdict: str
    corrected_label: str | None
    comment: str | None
    reviewer: str
    at: str


def iso_time(value: Any) -> str:
    """A timestamp as the review tables keep it: ISO 8601 UTC with milliseconds and a Z (sorts as text)."""
    if hasattr(value, "timestamp"):  # PostgreSQL's TIMESTAMPTZ comes back as a datetime
        return iso_utc(value.timestamp())
    return str(value)


class ReviewDB:
    """The receiver's database as the review station uses it."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        self.lock = threading.RLock()
        self.pg = is_postgres(url)
        prefix = "medge_review_" if self.pg else "review_"
        self.t = {name: prefix + name for name in _TABLES}
        self.t["received"] = "medge_findings" if self.pg else "findings"  # the receivers' table: read only
        self._indexed_at = 0.0
        self._in_transaction = False
        self.db: Any = self._connect_pg(url) if self.pg else self._connect_sqlite(Path(url))
        if create:
            self.migrate()

    def _connect_sqlite(self, path: Path) -> sqlite3.Connection:
        from hospital.store import _wal

        if not path.is_file():
            raise ConfigError(f"{path}: no receiver database here; check --db (medge receive --db creates it)")
        try:
            db = sqlite3.connect(str(path), isolation_level=None, timeout=30, check_same_thread=False)
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "findings" not in tables:
                db.close()
                raise ConfigError(f"{path}: not a receiver database (no findings table); check --db")
            db.execute("PRAGMA busy_timeout = 30000")
            _wal(db)
            db.execute("PRAGMA synchronous=FULL")  # a recorded verdict survives a power cut
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"{path}: cannot open receiver database ({e})") from None
        return db

    def _connect_pg(self, url: str) -> Any:
        try:
            import psycopg  # type: ignore[import-not-found]
        except ImportError:
            raise ConfigError("a postgresql:// database needs psycopg: pip install 'psycopg[binary]'") from None
        self._lost_errors = (psycopg.OperationalError, psycopg.InterfaceError)
        try:
            db = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except Exception as e:
            raise ConfigError(f"cannot connect to PostgreSQL ({type(e).__name__}); check the --db URL") from None
        if db.execute("SELECT to_regclass('medge_findings')").fetchone()[0] is None:
            db.close()  # refused here, not as an error on every page later
            raise ConfigError(f"{safe_url(url)}: not a receiver database (no medge_findings table); check --db "
                              "(medge receive --db creates it)")
        return db

    # --- SQL plumbing ---------------------------------------------------------------------------------

    def sql(self, text: str) -> str:
        text = text.format(**self.t)
        return text.replace("?", "%s") if self.pg else text

    def _live(self) -> Any:
        """The connection, opened again if the last one was lost (a PostgreSQL restart or failover): the
        station serves again as soon as the server does, without being restarted itself."""
        if not self.pg or not self.db.closed:
            return self.db
        import psycopg  # type: ignore[import-not-found]

        try:
            self.db = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except self._lost_errors as e:
            raise StoreUnavailable(f"PostgreSQL at {safe_url(self.url)} unavailable: {cause_line(e)}") from None
        log.warning("review: reconnected to PostgreSQL at %s", safe_url(self.url))
        return self.db

    def _lost(self, e: Exception) -> StoreUnavailable:
        """One line for the log and for the page; nothing is retried here (a verdict whose statement may or
        may not have reached the server is the reviewer's to send again, not ours to send twice)."""
        log.warning("review: lost the PostgreSQL connection to %s (%s)", safe_url(self.url), cause_line(e))
        with suppress(Exception):
            self.db.close()
        return StoreUnavailable(f"PostgreSQL at {safe_url(self.url)} unavailable: {cause_line(e)}")

    def _run(self, text: str, params: tuple | list, fetch: Callable[[Any], Any]) -> Any:
        with self.lock:
            if not self.pg:
                return fetch(self.db.execute(self.sql(text), tuple(params)))
            db = self._live()
            try:
                return fetch(db.execute(self.sql(text), tuple(params)))
            except self._lost_errors as e:
                if self._in_transaction:
                    raise  # `transaction` reports it, once
                raise self._lost(e) from None

    def execute(self, text: str, params: tuple | list = ()) -> Any:
        return self._run(text, params, lambda cur: cur)

    def rows(self, text: str, params: tuple | list = ()) -> list[tuple]:
        return self._run(text, params, lambda cur: list(cur.fetchall()))

    def one(self, text: str, params: tuple | list = ()) -> tuple | None:
        return self._run(text, params, lambda cur: cur.fetchone())

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.lock:
            if self.pg:
                db = self._live()
                self._in_transaction = True
                try:
                    with db.transaction():
                        yield
                except self._lost_errors as e:
                    raise self._lost(e) from None
                finally:
                    self._in_transaction = False
                return
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self.lock:
            self.db.close()

    # --- schema ---------------------------------------------------------------------------------------

    def schema_version(self) -> int:
        row = self.one("SELECT MAX(version) FROM {schema}")
        return int(row[0]) if row and row[0] is not None else 0

    def migrate(self) -> int:
        """Create or upgrade the review tables; returns the schema version now in force."""
        serial = "BIGSERIAL PRIMARY KEY" if self.pg else "INTEGER PRIMARY KEY AUTOINCREMENT"
        with self.transaction():
            if self.pg:  # several stations (or a station and receivers) starting at once take turns
                self.execute("SELECT pg_advisory_xact_lock(?)", (PG_LOCK_KEY,))
            self.execute("CREATE TABLE IF NOT EXISTS {schema} (version INTEGER NOT NULL, applied_at TEXT NOT NULL)")
            have = self.schema_version()
            if have > SCHEMA_VERSION:
                raise ConfigError(f"{safe_url(self.url)}: review tables are schema {have}, this medge knows {SCHEMA_VERSION}; "
                                  "upgrade medge")
            for version, statements in sorted(_migrations(serial).items()):
                if version <= have:
                    continue
                for s in statements:
                    self.execute(s)
                if version in (1, 2):
                    self._append_only_triggers(version)
                self.execute("INSERT INTO {schema} (version, applied_at) VALUES (?, ?)", (version, iso_utc()))
        return self.schema_version()

    def _append_only_triggers(self, version: int) -> None:
        """Schema 1: no row of verdicts or audit is updated or deleted. Schema 2 (PostgreSQL): nor is the
        table truncated, which row triggers do not see (SQLite has no TRUNCATE, and its DELETE without
        WHERE fires the row triggers)."""
        if self.pg:
            if version == 2:
                for table in _APPEND_ONLY:
                    self.execute(f"CREATE TRIGGER {{{table}}}_no_truncate BEFORE TRUNCATE ON {{{table}}} "
                                 "FOR EACH STATEMENT EXECUTE FUNCTION {verdicts}_append_only()")
                return
            self.execute("CREATE OR REPLACE FUNCTION {verdicts}_append_only() RETURNS trigger AS $$ BEGIN "
                         "RAISE EXCEPTION 'review tables are append-only'; END $$ LANGUAGE plpgsql")
            for table in _APPEND_ONLY:
                self.execute(f"CREATE TRIGGER {{{table}}}_append_only BEFORE UPDATE OR DELETE ON {{{table}}} "
                             "FOR EACH ROW EXECUTE FUNCTION {verdicts}_append_only()")
            return
        if version == 2:
            return
        for table in _APPEND_ONLY:
            for op in ("UPDATE", "DELETE"):
                self.execute(f"CREATE TRIGGER {{{table}}}_no_{op.lower()} BEFORE {op} ON {{{table}}} "
                             "BEGIN SELECT RAISE(ABORT, 'review tables are append-only'); END")

    # --- the findings index ---------------------------------------------------------------------------

    def index_findings(self, force: bool = False) -> int:
        """Add newly received findings to the review index; returns how many were added."""
        now = time.monotonic()
        if not force and now - self._indexed_at < INDEX_EVERY_S:
            return 0
        self._indexed_at = now
        with self.lock:
            new = self.rows("SELECT f.finding_id, f.site, f.device_id, f.priority, f.received_at, f.payload"
                            " FROM {received} f WHERE NOT EXISTS"
                            " (SELECT 1 FROM {findings} r WHERE r.finding_id = f.finding_id)")
            if not new:
                return 0
            with self.transaction():
                for fid, site, device, priority, received, payload in new:
                    doc = payload if isinstance(payload, dict) else json.loads(payload)
                    m = doc.get("model") or {}
                    received_s = iso_time(received)
                    acquired = doc.get("acquired_at")
                    conf = doc.get("confidence")
                    self.execute(
                        "INSERT INTO {findings} (finding_id, site, device_id, modality, model_name, model_version,"
                        " model_sha256, label, confidence, needs_review, priority_rank, priority, received_at, acquired_at,"
                        " sort_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (fid, site, device, str(doc.get("modality") or "?"), str(m.get("name") or "?"),
                         str(m.get("version") or "?"), str(m.get("sha256") or ""), str(doc.get("label") or "?"),
                         None if conf is None else float(conf), 1 if doc.get("needs_review") else 0,
                         PRIORITY_RANK.get(priority, 3), priority, received_s, acquired, acquired or received_s))
            return len(new)

    def finding_document(self, finding_id: str) -> dict[str, Any] | None:
        """The stored finding in full, from the receivers' table."""
        row = self.one("SELECT payload FROM {received} WHERE finding_id = ?", (finding_id,))
        if row is None:
            return None
        return row[0] if isinstance(row[0], dict) else json.loads(row[0])

    # --- users ----------------------------------------------------------------------------------------

    def user(self, username: str) -> tuple[User, str] | None:
        row = self.one("SELECT username, role, active, created_at, created_by, password_hash FROM {users}"
                       " WHERE username = ?", (username,))
        if row is None:
            return None
        return User(row[0], row[1], bool(row[2]), row[3], row[4]), row[5]

    def users(self) -> list[User]:
        return [User(r[0], r[1], bool(r[2]), r[3], r[4]) for r in
                self.rows("SELECT username, role, active, created_at, created_by FROM {users} ORDER BY username")]

    def add_user(self, username: str, role: str, password_hash: str, created_by: str | None) -> None:
        self.execute("INSERT INTO {users} (username, role, password_hash, active, created_at, created_by)"
                     " VALUES (?, ?, ?, 1, ?, ?)", (username, role, password_hash, iso_utc(), created_by))

    def update_user(self, username: str, *, role: str | None = None, active: bool | None = None,
                    password_hash: str | None = None) -> None:
        with self.transaction():
            if role is not None:
                self.execute("UPDATE {users} SET role = ? WHERE username = ?", (role, username))
            if active is not None:
                self.execute("UPDATE {users} SET active = ? WHERE username = ?", (1 if active else 0, username))
                if not active:
                    self.execute("DELETE FROM {sessions} WHERE username = ?", (username,))
            if password_hash is not None:
                self.execute("UPDATE {users} SET password_hash = ? WHERE username = ?", (password_hash, username))
                self.execute("DELETE FROM {sessions} WHERE username = ?", (username,))

    # --- audit log and verdicts ------------------------------------------------------------------------

    def audit(self, action: str, username: str | None, *, at: str | None = None, finding_id: str | None = None,
              detail: str | None = None, remote: str | None = None) -> None:
        self.execute("INSERT INTO {audit} (at, username, action, finding_id, detail, remote) VALUES (?, ?, ?, ?, ?, ?)",
                     (at or iso_utc(), username, action, finding_id, detail, remote))

    def audit_log(self, limit: int = 100) -> list[tuple]:
        return self.rows("SELECT at, username, action, finding_id, detail, remote FROM {audit} ORDER BY id DESC LIMIT ?",
                         (limit,))

    def add_verdict(self, finding_id: str, verdict: str, corrected_label: str | None, comment: str | None,
                    reviewer: str, at: str) -> None:
        self.execute("INSERT INTO {verdicts} (finding_id, verdict, corrected_label, comment, reviewer, at)"
                     " VALUES (?, ?, ?, ?, ?, ?)", (finding_id, verdict, corrected_label, comment, reviewer, at))

    def verdicts(self, finding_id: str | None = None, since: str | None = None) -> list[Verdict]:
        where, params = [], []
        if finding_id is not None:
            where.append("finding_id = ?")
            params.append(finding_id)
        if since is not None:
            where.append("at >= ?")
            params.append(since)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return [Verdict(*r) for r in self.rows(
            "SELECT id, finding_id, verdict, corrected_label, comment, reviewer, at FROM {verdicts}" + clause +
            " ORDER BY id", params)]

    # --- what the pages read --------------------------------------------------------------------------

    _LATEST = (" LEFT JOIN (SELECT finding_id AS lv_id, MAX(id) AS lv_max FROM {verdicts} GROUP BY finding_id) lv"
               " ON lv.lv_id = f.finding_id LEFT JOIN {verdicts} v ON v.id = lv.lv_max")
    _STATE = ("CASE WHEN v.verdict IS NULL THEN 'unreviewed' WHEN v.verdict = 'agree' THEN 'agreed'"
              " WHEN v.verdict = 'disagree' THEN 'disagreed' ELSE 'corrected' END")
    _COLUMNS = ("f.finding_id, f.site, f.device_id, f.modality, f.model_name, f.model_version, f.model_sha256, f.label,"
                " f.confidence, f.needs_review, f.priority, f.received_at, f.acquired_at, f.sort_time,"
                " v.verdict, v.corrected_label, v.reviewer, v.at")
    ROW_KEYS = ("finding_id", "site", "device_id", "modality", "model_name", "model_version", "model_sha256", "label",
                "confidence", "needs_review", "priority", "received_at", "acquired_at", "sort_time",
                "verdict", "corrected_label", "reviewer", "verdict_at")

    def _filters(self, filters: dict[str, str]) -> tuple[str, list[str]]:
        where, params = [], []
        for key, col in (("site", "f.site"), ("device", "f.device_id"), ("modality", "f.modality")):
            if filters.get(key):
                where.append(f"{col} = ?")
                params.append(filters[key])
        if filters.get("model"):
            name, _, version = filters["model"].partition(" ")
            where.append("f.model_name = ?")
            params.append(name)
            if version:
                where.append("f.model_version = ?")
                params.append(version)
        if filters.get("since"):
            where.append("f.sort_time >= ?")
            params.append(filters["since"])
        return (" WHERE " + " AND ".join(where)) if where else "", params

    def worklist(self, filters: dict[str, str], limit: int = 200) -> list[dict[str, Any]]:
        """Urgent first, then needs_review, then oldest first (the longest-waiting case at the top)."""
        where, params = self._filters(filters)
        state = filters.get("state")
        if state and state != "all":
            where += (" AND " if where else " WHERE ") + f"{self._STATE} = ?"
            params.append(state)
        rows = self.rows(f"SELECT {self._COLUMNS} FROM {{findings}} f{self._LATEST}{where}"
                         " ORDER BY f.priority_rank, f.needs_review DESC, f.sort_time, f.finding_id LIMIT ?",
                         [*params, limit])
        return [dict(zip(self.ROW_KEYS, r, strict=True)) for r in rows]

    def state_counts(self, filters: dict[str, str]) -> dict[str, int]:
        where, params = self._filters(filters)
        counts = dict.fromkeys(STATES, 0)
        for state, n in self.rows(f"SELECT {self._STATE} AS st, COUNT(*) FROM {{findings}} f{self._LATEST}{where}"
                                  f" GROUP BY {self._STATE}", params):
            counts[state] = int(n)
        return counts

    def reviewed_rows(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        """Every finding with its latest verdict (or none), for the dashboard and the report."""
        where, params = self._filters(filters)
        rows = self.rows(f"SELECT {self._COLUMNS} FROM {{findings}} f{self._LATEST}{where} ORDER BY f.sort_time", params)
        return [dict(zip(self.ROW_KEYS, r, strict=True)) for r in rows]

    def finding_row(self, finding_id: str) -> dict[str, Any] | None:
        rows = self.rows(f"SELECT {self._COLUMNS} FROM {{findings}} f{self._LATEST} WHERE f.finding_id = ?", (finding_id,))
        return dict(zip(self.ROW_KEYS, rows[0], strict=True)) if rows else None

    def choices(self) -> dict[str, list[str]]:
        """The values the worklist's filters offer."""
        out = {}
        for key, col in (("site", "site"), ("device", "device_id"), ("modality", "modality")):
            out[key] = [r[0] for r in self.rows(f"SELECT DISTINCT {col} FROM {{findings}} ORDER BY {col}")]
        out["model"] = [f"{a} {b}" for a, b in self.rows("SELECT DISTINCT model_name, model_version FROM {findings}"
                                                         " ORDER BY model_name, model_version")]
        return out

    def labels_of(self, model_name: str) -> list[str]:
        return [r[0] for r in self.rows("SELECT DISTINCT label FROM {findings} WHERE model_name = ? ORDER BY label",
                                        (model_name,))]
