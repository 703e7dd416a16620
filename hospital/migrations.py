"""The receiver database's schema, as one versioned list of migrations for both stores.

Each `Migration` has a version (1, 2, ...), a description and its SQL per dialect. At start
(`hospital.store.open_store`) the store applies, in one transaction, every migration newer than the
version the database records, and records each: ``schema_version`` in SQLite, ``medge_schema`` in PostgreSQL
(one row per applied version; the highest is in force). The review station keeps its own tables and its own
version table (``review_schema`` / ``medge_review_schema``); nothing here touches them.

Rules:
- A database whose version is newer than this code knows is refused with one line naming both versions:
  an older medge must not write into a schema it does not know (update medge first).
- A receiver database from before versioning (the findings/rejected/events tables, no version table) is
  adopted as version 1: version 1's statements are ``CREATE ... IF NOT EXISTS`` over exactly those tables, so
  applying it changes nothing that is there and adds what an older receiver lacked (the events table). A
  ``findings`` table with other columns (a device outbox named by a mistyped --db) is refused, untouched.
- Migrations are append-only: never edit a released one; add the next version.
- PostgreSQL serialises concurrent starts (several receivers, the review station) with a transaction-scoped
  advisory lock; SQLite with ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from edge.errors import ConfigError
from edge.findings import iso_utc


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sqlite: tuple[str, ...]
    postgresql: tuple[str, ...]


_RECORD_COLS = ("site TEXT NOT NULL, device_id TEXT NOT NULL, priority TEXT NOT NULL, topic TEXT NOT NULL,"
                " received_at {ts} NOT NULL, payload {doc} NOT NULL")

MIGRATIONS: list[Migration] = [
    Migration(
        1, "findings, rejected messages and device events, each keyed by its id",
        sqlite=(
            "CREATE TABLE IF NOT EXISTS findings (finding_id TEXT PRIMARY KEY, "
            + _RECORD_COLS.format(ts="TEXT", doc="TEXT") + ")",
            "CREATE TABLE IF NOT EXISTS rejected (id INTEGER PRIMARY KEY, topic TEXT, received_at TEXT, reason TEXT,"
            " payload BLOB)",
            "CREATE TABLE IF NOT EXISTS events (event_id TEXT PRIMARY KEY, "
            + _RECORD_COLS.format(ts="TEXT", doc="TEXT") + ")",
        ),
        postgresql=(
            "CREATE TABLE IF NOT EXISTS medge_findings (finding_id TEXT PRIMARY KEY, "
            + _RECORD_COLS.format(ts="TIMESTAMPTZ", doc="JSONB") + ")",
            "CREATE TABLE IF NOT EXISTS medge_rejected (id BIGSERIAL PRIMARY KEY, topic TEXT, received_at TIMESTAMPTZ,"
            " reason TEXT, payload BYTEA)",
            "CREATE TABLE IF NOT EXISTS medge_events (event_id TEXT PRIMARY KEY, "
            + _RECORD_COLS.format(ts="TIMESTAMPTZ", doc="JSONB") + ")",
        ),
    ),
    Migration(
        2, "findings in arrival order, for followers (the PACS forwarder) of a PostgreSQL store",
        sqlite=(),  # SQLite followers read rowids, which are already in commit order
        postgresql=("CREATE INDEX IF NOT EXISTS medge_findings_arrival ON medge_findings (received_at, finding_id)",),
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1].version  # what this code writes

# the columns a version-1 findings table has: an unversioned database with other ones is not a receiver's
_V1_FINDINGS_COLUMNS = ["finding_id", "site", "device_id", "priority", "topic", "received_at", "payload"]
PG_LOCK_KEY = 0x6D65646765  # "medge": pg_advisory_xact_lock key for schema changes


def _check_registry() -> None:
    versions = [m.version for m in MIGRATIONS]
    if versions != list(range(1, len(versions) + 1)):
        raise AssertionError(f"MIGRATIONS must be numbered 1..n without gaps, got {versions}")


_check_registry()


def refuse_newer(where: str, have: int) -> None:
    """One line when the database is ahead of this code."""
    if have > SCHEMA_VERSION:
        raise ConfigError(f"{where}: the receiver database is at schema version {have}, newer than this medge knows "
                          f"(up to {SCHEMA_VERSION}); update medge on this host before pointing it at this database")


def _refuse_foreign(where: str, columns: list[str], table: str) -> None:
    if columns and columns != _V1_FINDINGS_COLUMNS:
        raise ConfigError(f"{where}: not a receiver database (its {table} table has columns {', '.join(columns)}); "
                          "check the --db path")


# --- SQLite ------------------------------------------------------------------------------------------------

SQLITE_VERSION_TABLE = "schema_version"


def sqlite_version(db: sqlite3.Connection) -> int | None:
    """The version the file records, None if it has no version table (new, or from before versioning)."""
    if not db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (SQLITE_VERSION_TABLE,)).fetchone():
        return None
    row = db.execute(f"SELECT MAX(version) FROM {SQLITE_VERSION_TABLE}").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def migrate_sqlite(db: sqlite3.Connection, where: str) -> int:
    """Bring a SQLite receiver database (autocommit connection) to SCHEMA_VERSION in one transaction; returns the
    version that was there before (0: new or unversioned)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        have = sqlite_version(db)
        if have is None:
            _refuse_foreign(where, [r[1] for r in db.execute("PRAGMA table_info(findings)")], "findings")
            db.execute(f"CREATE TABLE {SQLITE_VERSION_TABLE} (version INTEGER PRIMARY KEY, description TEXT NOT NULL,"
                       " applied_at TEXT NOT NULL)")
            have = 0
        refuse_newer(where, have)
        for m in MIGRATIONS[have:]:
            for statement in m.sqlite:
                db.execute(statement)
            db.execute(f"INSERT INTO {SQLITE_VERSION_TABLE} (version, description, applied_at) VALUES (?, ?, ?)",
                       (m.version, m.description, iso_utc()))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return have


# --- PostgreSQL --------------------------------------------------------------------------------------------

PG_VERSION_TABLE = "medge_schema"


def pg_version(db: Any) -> int | None:
    if db.execute("SELECT to_regclass(%s)", (PG_VERSION_TABLE,)).fetchone()[0] is None:
        return None
    row = db.execute(f"SELECT MAX(version) FROM {PG_VERSION_TABLE}").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def migrate_postgres(db: Any, where: str) -> int:
    """The same for PostgreSQL (a psycopg 3 connection in autocommit mode); one transaction, serialised with any
    other process migrating the same database."""
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (PG_LOCK_KEY,))
        have = pg_version(db)
        if have is None:
            cols = [r[0] for r in db.execute("SELECT column_name FROM information_schema.columns WHERE table_schema ="
                                             " current_schema() AND table_name = 'medge_findings' ORDER BY ordinal_position")]
            _refuse_foreign(where, cols, "medge_findings")
            db.execute(f"CREATE TABLE {PG_VERSION_TABLE} (version INTEGER PRIMARY KEY, description TEXT NOT NULL,"
                       " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            have = 0
        refuse_newer(where, have)
        for m in MIGRATIONS[have:]:
            for statement in m.postgresql:
                db.execute(statement)
            db.execute(f"INSERT INTO {PG_VERSION_TABLE} (version, description) VALUES (%s, %s)", (m.version, m.description))
    return have
