"""Where received findings are kept: one table keyed by finding id, so each finding is stored once.

Device events (`edge.events`: objects outside a model's intended use, drift) get a table of their own
(``events`` / ``medge_events``, keyed by event id), so no query over the findings table, and no review
list built on it, can count one as a finding; they are stored exactly once in the same commit.

SQLite (WAL, synchronous=FULL) by default; PostgreSQL by URL for hospitals that run one (psycopg 3).
`add` is one commit for a batch (idempotent by id: ``INSERT OR IGNORE`` / ``ON CONFLICT DO NOTHING``); the
receiver acknowledges nothing before it returns. The schema is versioned (`hospital.migrations`): brought up
to date at open, refused when newer than this code. A PostgreSQL connection that breaks raises
`StoreUnavailable` (an OSError, so the receiver leaves the batch unacknowledged for the broker to redeliver)
and is re-opened, with backoff, by the next call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from edge.errors import ConfigError, cause_line
from edge.link.backoff import Backoff
from hospital.migrations import SCHEMA_VERSION, migrate_postgres, migrate_sqlite, pg_version, refuse_newer, sqlite_version

log = logging.getLogger("medge.store")


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
    def positions(self, after: tuple[int, str], limit: int) -> list[tuple[int, str]]: ...  # for followers
    def last_position(self) -> int: ...
    def close(self) -> None: ...

    POSITIONS_IN_COMMIT_ORDER: bool  # False: a finding can appear behind a position already read
    where: str  # the database, for messages and for followers (no password)


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
        self.where = str(self.path.resolve())  # names this database (a follower binds its state to it)
        if not create:
            self.db = self._open_to_read()
            return
        if not self.path.parent.is_dir():
            raise ConfigError(f"{self.path}: folder {self.path.parent} does not exist; create it (the receiver does "
                              "not guess where the hospital keeps its database)")
        try:
            self.db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
            _wal(self.db)
            self.db.execute("PRAGMA synchronous=FULL")
            if migrate_sqlite(self.db, str(self.path)) == 0 and self.count():
                log.info("store: %s adopted as schema version %d (a receiver database from before versioning)",
                         self.path, SCHEMA_VERSION)
            self._has_events = True
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"{self.path}: cannot open receiver database ({e})") from None
        except ConfigError:
            self.db.close()
            raise

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
        try:
            refuse_newer(str(self.path), sqlite_version(db) or 0)
        except ConfigError:
            db.close()
            raise
        return db

    def add(self, rows: list[Received], rejected: list[Rejected]) -> int:
        """One transaction for the batch: the findings, the events and the rejected messages, or none of them."""
        n = 0
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for table, batch in (("findings", [r for r in rows if r.kind != "event"]),
                                 ("events", [r for r in rows if r.kind == "event"])):
                if batch:
                    n += self.db.executemany(f"INSERT OR IGNORE INTO {table} VALUES (?, ?, ?, ?, ?, ?, ?)",
                                             [(r.finding_id, r.site, r.device_id, r.priority, r.topic, r.received_at,
                                               r.payload) for r in batch]).rowcount
            if rejected:
                self.db.executemany("INSERT INTO rejected(topic, received_at, reason, payload) VALUES (?, ?, ?, ?)",
                                    [(x.topic, x.received_at, x.reason, x.payload) for x in rejected])
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return n

    # a rowid is taken under the database's single writer lock, so a later commit never gets a lower one
    POSITIONS_IN_COMMIT_ORDER = True

    def positions(self, after: tuple[int, str], limit: int) -> list[tuple[int, str]]:
        """(position, finding id) of the findings after ``after``, in order: what a follower (the PACS
        forwarder) has not seen yet. SQLite: the rowid."""
        return [(int(r), str(f)) for r, f in self.db.execute(
            "SELECT rowid, finding_id FROM findings WHERE rowid > ? ORDER BY rowid LIMIT ?", (after[0], limit))]

    def last_position(self) -> int:
        return int(self.db.execute("SELECT MAX(rowid) FROM findings").fetchone()[0] or 0)

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


class StoreUnavailable(ConnectionError):
    """The database cannot be reached now. Nothing of the batch in progress was acknowledged: the receiver
    catches this (an OSError), drops its broker session's pending messages unacknowledged and reconnects, so the
    broker delivers them again; a commit that did reach the database before the connection broke makes those
    redeliveries counted duplicates (primary key), acknowledged once more."""


def safe_url(url: str) -> str:
    """A postgresql:// URL for messages: no password, no query string (which may carry one)."""
    try:
        u = urlsplit(url)
        host = u.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = (f"{u.username}@" if u.username else "") + host + (f":{u.port}" if u.port else "")
        return urlunsplit((u.scheme, netloc, u.path, "", ""))
    except ValueError:
        return "postgresql://..."


# connection defaults a --db URL may override: a dead server must not hang a receiver for the TCP timeout
_PG_DEFAULTS = {"connect_timeout": "5", "keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10",
                "keepalives_count": "3", "tcp_user_timeout": "30000", "application_name": "medge"}
_PG_INSERT = ("INSERT INTO {table} ({key}, site, device_id, priority, topic, received_at, payload)"
              " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[],"
              " %s::jsonb[]) ON CONFLICT ({key}) DO NOTHING")
_PG_REJECTED = ("INSERT INTO medge_rejected (topic, received_at, reason, payload)"
                " SELECT * FROM unnest(%s::text[], %s::timestamptz[], %s::text[], %s::bytea[])")


class PostgresStore:
    """The same tables in PostgreSQL (``medge_`` prefix, JSONB payloads), through psycopg 3.

    - A batch is one transaction and one multi-row ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING``
      per table (one round trip whatever the batch size); the return value counts new rows only.
    - Connection loss: the failing call raises `StoreUnavailable` after one WARNING line naming the cause; the
      next call reconnects, waiting out a backoff (0.5 s doubling to 5 s, with jitter) between attempts, so a
      database that stays away costs a line per attempt, not a busy loop. Nothing is retried here: the batch
      that failed belongs to the receiver's broker session, which it redelivers.
    """

    def __init__(self, url: str, create: bool = True, backoff_min_s: float = 0.5, backoff_max_s: float = 5.0) -> None:
        try:
            import psycopg  # type: ignore[import-not-found]
        except ImportError:
            raise ConfigError("a postgresql:// database needs psycopg: pip install 'psycopg[binary]'") from None
        self._pg = psycopg
        self._lost_errors = (psycopg.OperationalError, psycopg.InterfaceError)
        self.url, self.where = url, safe_url(url)
        self.backoff = Backoff(backoff_min_s, backoff_max_s)
        self._retry_at = 0.0
        self._lost_at: float | None = None
        try:
            self.db: Any = self._connect()
        except psycopg.Error as e:
            raise ConfigError(f"{self.where}: cannot connect to PostgreSQL ({cause_line(e)}); check the --db URL and "
                              "that the server runs") from None
        try:
            if create:
                migrate_postgres(self.db, self.where)
                self._has_events = True
            else:  # only looking: create nothing, refuse what is no receiver database
                if self.db.execute("SELECT to_regclass('medge_findings')").fetchone()[0] is None:
                    raise ConfigError(f"{self.where}: no receiver tables here (medge_findings); check the --db URL "
                                      "(medge receive creates them)")
                refuse_newer(self.where, pg_version(self.db) or 0)
                self._has_events = self.db.execute("SELECT to_regclass('medge_events')").fetchone()[0] is not None
        except psycopg.Error as e:
            self.db.close()
            raise ConfigError(f"{self.where}: cannot set up the receiver tables ({cause_line(e)})") from None
        except ConfigError:
            self.db.close()
            raise

    def _connect(self) -> Any:
        from psycopg.conninfo import conninfo_to_dict

        params = {**_PG_DEFAULTS, **conninfo_to_dict(self.url)}
        return self._pg.connect(autocommit=True, **params)

    def _conn(self) -> Any:
        """The open connection, or a new one (after the backoff since the last failed attempt)."""
        if not self.db.closed:
            return self.db
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        try:
            self.db = self._connect()
        except self._lost_errors as e:
            self._retry_at = time.monotonic() + self.backoff.next()
            raise StoreUnavailable(f"PostgreSQL at {self.where} unavailable: {cause_line(e)}") from None
        self.backoff.reset()
        if self._lost_at is not None:
            log.warning("store: reconnected to PostgreSQL at %s after %.1f s", self.where, time.monotonic() - self._lost_at)
            self._lost_at = None
        return self.db

    def _lost(self, e: Exception) -> StoreUnavailable:
        cause = cause_line(e)
        if self._lost_at is None:
            self._lost_at = time.monotonic()
            log.warning("store: lost the PostgreSQL connection to %s (%s); the batch in progress is not acknowledged "
                        "and comes again; reconnecting with backoff", self.where, cause)
        with contextlib.suppress(Exception):  # already broken: closing is only bookkeeping
            self.db.close()
        return StoreUnavailable(f"PostgreSQL at {self.where} unavailable: {cause}")

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        db = self._conn()
        try:
            return list(db.execute(sql, params).fetchall())
        except self._lost_errors as e:
            raise self._lost(e) from None

    def add(self, rows: list[Received], rejected: list[Rejected]) -> int:
        db = self._conn()
        n = 0
        try:
            with db.transaction():
                for table, key, batch in (("medge_findings", "finding_id", [r for r in rows if r.kind != "event"]),
                                          ("medge_events", "event_id", [r for r in rows if r.kind == "event"])):
                    if batch:
                        cols = list(zip(*[(r.finding_id, r.site, r.device_id, r.priority, r.topic, r.received_at,
                                           r.payload) for r in batch], strict=True))
                        n += db.execute(_PG_INSERT.format(table=table, key=key), [list(c) for c in cols]).rowcount
                if rejected:
                    db.execute(_PG_REJECTED, ([x.topic for x in rejected], [x.received_at for x in rejected],
                                              [x.reason for x in rejected], [x.payload for x in rejected]))
        except self._lost_errors as e:
            raise self._lost(e) from None
        return n

    # received_at is stamped when a receiver takes the message, before its batch commits, and receivers commit
    # concurrently: a follower must look back (`hospital.dicom.forwarder` re-reads a window) to see them all
    POSITIONS_IN_COMMIT_ORDER = False

    def positions(self, after: tuple[int, str], limit: int) -> list[tuple[int, str]]:
        """(position, finding id) after ``after`` in (received_at, finding id) order; the position is
        received_at in microseconds since 1970 (exact: no float on the way)."""
        return [(int(p), str(f)) for p, f in self._read(
            "SELECT (EXTRACT(EPOCH FROM received_at) * 1000000)::bigint, finding_id FROM medge_findings"
            " WHERE (received_at, finding_id) > (TIMESTAMPTZ 'epoch' + %s * INTERVAL '1 microsecond', %s)"
            " ORDER BY received_at, finding_id LIMIT %s", (after[0], after[1], limit))]

    def last_position(self) -> int:
        row = self._read("SELECT (EXTRACT(EPOCH FROM MAX(received_at)) * 1000000)::bigint FROM medge_findings")
        return int(row[0][0] or 0)

    def count(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM medge_findings")[0][0])

    def recent(self, n: int = 50) -> list[StoredFinding]:
        return [_stored(r) for r in self._read(f"SELECT {_COLS} FROM medge_findings ORDER BY received_at DESC LIMIT %s",
                                               (n,))]

    def get(self, finding_id: str) -> StoredFinding | None:
        rows = self._read(f"SELECT {_COLS} FROM medge_findings WHERE finding_id = %s", (finding_id,))
        return _stored(rows[0]) if rows else None

    def count_events(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM medge_events")[0][0]) if self._has_events else 0

    def events(self, n: int = 50) -> list[StoredEvent]:
        if not self._has_events:
            return []
        return [_stored_event(r) for r in self._read(
            f"SELECT {_EVENT_COLS} FROM medge_events ORDER BY received_at DESC LIMIT %s", (n,))]

    def close(self) -> None:
        self.db.close()


def is_postgres(db: str) -> bool:
    """A --db value that names a PostgreSQL database rather than a SQLite file."""
    return db.startswith(("postgresql://", "postgres://"))


def open_store(db: str, create: bool = True) -> FindingStore:
    """``create=False`` for commands that only look (a typo in --db must not make a new, empty database).
    Either way the schema version is checked (`hospital.migrations`); with ``create`` it is brought up to date."""
    if is_postgres(db):
        return PostgresStore(db, create=create)
    return SqliteStore(db, create=create)


def stored_finding(db: str, finding_id: str) -> StoredFinding:
    """One stored finding, opened read-only; a missing one is a one-line error naming the database (no password)."""
    from edge.errors import InputError

    store = open_store(db, create=False)
    try:
        row = store.get(finding_id)
    finally:
        store.close()
    if row is None:
        raise InputError(f"finding {finding_id}: not in {safe_url(db) if '://' in db else db}")
    return row
