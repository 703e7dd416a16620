"""Where received findings are kept: one table keyed by finding id, so each finding is stored once.

Device events (`edge.events`: objects outside a model's intended use, drift) get a table of their own
(``events`` / ``medge_events``, keyed by event id), so no query over the findings table, and no review
list built on it, can count one as a finding; they are stored exactly once in the same commit.

SQLite (WAL, synchronous=FULL) by default; PostgreSQL by URL for hospitals that run one (psycopg 3).
`add` is one commit for a batch; the receiver acknowledges nothing before it returns.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge.errors import ConfigError


@dataclass(frozen=True)
class Received:
    finding_id: str  # the finding's id, or the event's (kind "event")
    site: str
    device_id: str
    priority: str
    topic: str
    received_at: str
    payload: str
    kind: str = "finding"  # or "event": which table it goes to


@dataclass(frozen=True)
class Rejected:
    topic: str
    received_at: str
    reason: str
    payload: bytes
    finding_id: str | None = None  # when the payload names one (finding or event id), the device is told it was refused


class FindingStore(Protocol):
    def add(self, rows: list[Received], rejected: list[Rejected]) -> int: ...  # one commit; returns new rows
    def count(self) -> int: ...
    def recent(self, n: int = 50) -> list[StoredFinding]: ...
    def get(self, finding_id: str) -> StoredFinding | None: ...
    def count_events(self) -> int: ...
    def events(self, n: int = 50) -> list[StoredEvent]: ...  # newest first
    def close(self) -> None: ...


@dataclass(frozen=True)
class StoredFinding:
    """A finding as the hospital holds it: where it came from, when it arrived, the finding itself."""

    finding_id: str
    site: str
    device_id: str
    priority: str
    received_at: str
    finding: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"finding_id": self.finding_id, "site": self.site, "device_id": self.device_id,
                "priority": self.priority, "received_at": str(self.received_at), "finding": self.finding}

    def describe(self) -> str:
        f = self.finding
        m = f.get("model") or {}
        review = " NEEDS REVIEW" if f.get("needs_review") else ""
        conf = f.get("confidence")
        return (f"{self.received_at}  {self.priority:<7}  {f.get('label', '?')}  "
                f"{'-' if conf is None else f'{float(conf):.2f}'}  {f.get('modality', '?')}{review}  "
                f"{self.site}/{self.device_id}  ({m.get('name', '?')} {m.get('version', '?')})  {self.finding_id}")


@dataclass(frozen=True)
class StoredEvent:
    """A device event as the hospital holds it: where it came from, when it arrived, the event itself."""

    event_id: str
    site: str
    device_id: str
    priority: str
    received_at: str
    event: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "site": self.site, "device_id": self.device_id,
                "priority": self.priority, "received_at": str(self.received_at), "event": self.event}

    def describe(self) -> str:
        e = self.event
        m = e.get("model") or {}
        model = f"{m.get('name', '?')} {m.get('version', '?')}" if m else "-"
        return (f"{self.received_at}  {self.priority:<7}  {e.get('kind', '?')}  {e.get('reason', '?')}: "
                f"{e.get('detail', '')}  {self.site}/{self.device_id}  ({e.get('source') or '-'}, {model})  {self.event_id}")


def _doc(payload: Any) -> dict[str, Any]:
    return payload if isinstance(payload, dict) else json.loads(payload)


def _stored(row: tuple) -> StoredFinding:
    fid, site, device, prio, received, payload = row
    return StoredFinding(fid, site, device, prio, str(received), _doc(payload))


def _stored_event(row: tuple) -> StoredEvent:
    eid, site, device, prio, received, payload = row
    return StoredEvent(eid, site, device, prio, str(received), _doc(payload))


_COLS = "finding_id, site, device_id, priority, received_at, payload"  # what a StoredFinding is read from
_EVENT_COLS = "event_id, site, device_id, priority, received_at, payload"


def _wal(db: sqlite3.Connection, timeout_s: float = 30.0) -> None:
    """Switch to WAL. Two receivers opening a new database at once (the shared-subscription set-up on one
    host) race on this switch, and SQLite answers it with 'database is locked' at once instead of
    waiting in its busy handler; so wait here."""
    end = time.monotonic() + timeout_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > end:
                raise
            time.sleep(0.05)


class SqliteStore:
    """Findings in a local SQLite file (WAL, synchronous=FULL), finding_id as the primary key."""

    def __init__(self, path: Path | str, create: bool = True) -> None:
        self.path = Path(path)
        if not create:
            self.db = self._open_to_read()
            return
        try:
            if not self.path.parent.is_dir():
                raise ConfigError(f"{self.path}: folder {self.path.parent} does not exist; create it (the receiver does "
                                  "not guess where the hospital keeps its database)")
            self.db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
            _wal(self.db)
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("CREATE TABLE IF NOT EXISTS findings (finding_id TEXT PRIMARY KEY, site TEXT NOT NULL,"
                            " device_id TEXT NOT NULL, priority TEXT NOT NULL, topic TEXT NOT NULL,"
                            " received_at TEXT NOT NULL, payload TEXT NOT NULL)")
            self.db.execute("CREATE TABLE IF NOT EXISTS rejected (id INTEGER PRIMARY KEY, topic TEXT, received_at TEXT,"
                            " reason TEXT, payload BLOB)")
            self.db.execute("CREATE TABLE IF NOT EXISTS events (event_id TEXT PRIMARY KEY, site TEXT NOT NULL,"
                            " device_id TEXT NOT NULL, priority TEXT NOT NULL, topic TEXT NOT NULL,"
                            " received_at TEXT NOT NULL, payload TEXT NOT NULL)")
            self._has_events = True
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"{self.path}: cannot open receiver database ({e})") from None

    def _open_to_read(self) -> sqlite3.Connection:
        """Read-only: looking must not turn a mistyped --db (a device outbox, some other file) into a receiver
        database by adding tables to it."""
        if not self.path.is_file():
            raise ConfigError(f"{self.path}: no receiver database here; check the --db path")
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None, timeout=30)
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"{self.path}: cannot open receiver database ({e})") from None
        if "findings" not in tables or "rejected" not in tables:
            db.close()
            raise ConfigError(f"{self.path}: not a receiver database (no findings/rejected tables); check the --db path")
        self._has_events = "events" in tables  # written by a receiver from before device events: none stored
        return db

    def add(self, rows: list[Received], rejected: list[Rejected]) -> int:
        n = 0
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for r in rows:
                table = "events" if r.kind == "event" else "findings"
                n += self.db.execute(f"INSERT OR IGNORE INTO {table} VALUES (?, ?, ?, ?, ?, ?, ?)",
                                     (r.finding_id, r.site, r.device_id, r.priority, r.topic, r.received_at,
                                      r.payload)).rowcount
            self.db.executemany("INSERT INTO rejected(topic, received_at, reason, payload) VALUES (?, ?, ?, ?)",
                                [(x.topic, x.received_at, x.reason, x.payload) for x in rejected])
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return n

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM findings").fetchone()[0])

    def recent(self, n: int = 50) -> list[StoredFinding]:
        return [_stored(r) for r in self.db.execute(
            f"SELECT {_COLS} FROM findings"
            " ORDER BY received_at DESC, rowid DESC LIMIT ?", (n,))]

    def get(self, finding_id: str) -> StoredFinding | None:
        row = self.db.execute(f"SELECT {_COLS} FROM findings"
                              " WHERE finding_id = ?", (finding_id,)).fetchone()
        return _stored(row) if row else None

    def count_events(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0]) if self._has_events else 0

    def events(self, n: int = 50) -> list[StoredEvent]:
        if not self._has_events:
            return []
        return [_stored_event(r) for r in self.db.execute(
            f"SELECT {_EVENT_COLS} FROM events ORDER BY received_at DESC, rowid DESC LIMIT ?", (n,))]

    def close(self) -> None:
        self.db.close()


class PostgresStore:
    """The same tables in PostgreSQL, for hospitals that run one (needs psycopg 3; untested in CI)."""

    def __init__(self, url: str) -> None:
        try:
            import psycopg  # type: ignore[import-not-found]
        except ImportError:
            raise ConfigError("a postgresql:// database needs psycopg: pip install 'psycopg[binary]'") from None
        try:
            self.db = psycopg.connect(url)
        except Exception as e:
            raise ConfigError(f"cannot connect to PostgreSQL ({type(e).__name__}); check the --db URL") from None
        with self.db.transaction():
            self.db.execute("CREATE TABLE IF NOT EXISTS medge_findings (finding_id TEXT PRIMARY KEY, site TEXT NOT NULL,"
                            " device_id TEXT NOT NULL, priority TEXT NOT NULL, topic TEXT NOT NULL,"
                            " received_at TIMESTAMPTZ NOT NULL, payload JSONB NOT NULL)")
            self.db.execute("CREATE TABLE IF NOT EXISTS medge_rejected (id BIGSERIAL PRIMARY KEY, topic TEXT,"
                            " received_at TIMESTAMPTZ, reason TEXT, payload BYTEA)")
            self.db.execute("CREATE TABLE IF NOT EXISTS medge_events (event_id TEXT PRIMARY KEY, site TEXT NOT NULL,"
                            " device_id TEXT NOT NULL, priority TEXT NOT NULL, topic TEXT NOT NULL,"
                            " received_at TIMESTAMPTZ NOT NULL, payload JSONB NOT NULL)")

    def add(self, rows: list[Received], rejected: list[Rejected]) -> int:
        n = 0
        with self.db.transaction():
            for r in rows:
                table, key = ("medge_events", "event_id") if r.kind == "event" else ("medge_findings", "finding_id")
                cur = self.db.execute(f"INSERT INTO {table} VALUES (%s, %s, %s, %s, %s, %s, %s)"
                                      f" ON CONFLICT ({key}) DO NOTHING",
                                      (r.finding_id, r.site, r.device_id, r.priority, r.topic, r.received_at, r.payload))
                n += cur.rowcount
            for x in rejected:
                self.db.execute("INSERT INTO medge_rejected(topic, received_at, reason, payload) VALUES (%s, %s, %s, %s)",
                                (x.topic, x.received_at, x.reason, x.payload))
        return n

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM medge_findings").fetchone()[0])

    def recent(self, n: int = 50) -> list[StoredFinding]:
        return [_stored(r) for r in self.db.execute(
            f"SELECT {_COLS} FROM medge_findings"
            " ORDER BY received_at DESC LIMIT %s", (n,))]

    def get(self, finding_id: str) -> StoredFinding | None:
        row = self.db.execute(f"SELECT {_COLS} FROM medge_findings"
                              " WHERE finding_id = %s", (finding_id,)).fetchone()
        return _stored(row) if row else None

    def count_events(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM medge_events").fetchone()[0])

    def events(self, n: int = 50) -> list[StoredEvent]:
        return [_stored_event(r) for r in self.db.execute(
            f"SELECT {_EVENT_COLS} FROM medge_events ORDER BY received_at DESC LIMIT %s", (n,))]

    def close(self) -> None:
        self.db.close()


def open_store(db: str, create: bool = True) -> FindingStore:
    """``create=False`` for commands that only look (a typo in --db must not make a new, empty database)."""
    if db.startswith(("postgresql://", "postgres://")):
        return PostgresStore(db)
    return SqliteStore(db, create=create)
