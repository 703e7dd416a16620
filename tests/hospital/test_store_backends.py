"""The receiver's store on SQLite and on a real PostgreSQL: schema migrations, idempotent group commits,
connection loss, and the `medge hospital` commands that read it."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import time

import pytest

from edge.errors import ConfigError
from edge.findings import iso_utc
from hospital.migrations import MIGRATIONS, SCHEMA_VERSION
from hospital.store import Received, Rejected, StoreUnavailable, open_store, safe_url
from tests.support import ROOT

TOPIC = "medge/s1/d1/findings/routine"


def received(i: int, prefix: str = "f", kind: str = "finding") -> Received:
    fid = f"{prefix}-{i:06d}"
    doc = {"finding_id" if kind == "finding" else "event_id": fid, "device_id": "d1", "priority": "routine",
           "label": "lesion", "confidence": 0.9, "modality": "US", "model": {"name": "m", "version": "1"}}
    level = "findings" if kind == "finding" else "events"
    return Received(fid, "s1", "d1", "routine", f"medge/s1/d1/{level}/routine", iso_utc(), json.dumps(doc), kind)


def medge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


# --- migrations ----------------------------------------------------------------------------------------------

def test_a_new_database_is_created_at_the_newest_schema_version(store_db):
    store = open_store(store_db.url)
    try:
        assert store.count() == 0 and store.count_events() == 0
    finally:
        store.close()
    assert store_db.schema_versions() == [m.version for m in MIGRATIONS] and MIGRATIONS[-1].version == SCHEMA_VERSION
    store = open_store(store_db.url)  # opening again applies nothing twice
    store.close()
    assert store_db.schema_versions() == list(range(1, SCHEMA_VERSION + 1))


def test_a_database_newer_than_the_code_is_refused_with_one_line(store_db):
    open_store(store_db.url).close()
    table = "medge_schema" if store_db.pg else "schema_version"
    if store_db.pg:
        import psycopg

        with psycopg.connect(store_db.url, autocommit=True) as c:
            c.execute(f"INSERT INTO {table} (version, description) VALUES (99, 'from the future')")
    else:
        with sqlite3.connect(store_db.url) as c:
            c.execute(f"INSERT INTO {table} VALUES (99, 'from the future', '2099-01-01T00:00:00Z')")
    for create in (True, False):
        with pytest.raises(ConfigError) as e:
            open_store(store_db.url, create=create)
        msg = str(e.value)
        assert "schema version 99" in msg and f"up to {SCHEMA_VERSION}" in msg and "update medge" in msg
        assert "\n" not in msg
    r = medge("hospital", "findings", "list", "--db", store_db.url)
    assert r.returncode == 2 and "schema version 99" in r.stderr and "update medge" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = medge("receive", "--broker", "mqtt://127.0.0.1:1", "--db", store_db.url, "--max-seconds", "5")
    assert r.returncode == 2 and "schema version 99" in r.stderr and "Traceback" not in r.stderr
    assert store_db.schema_versions()[-1] == 99  # refused, not touched


# the receiver's SQLite schema before versioning, verbatim: hospital/store.py as of commit b744618
_UNVERSIONED_SQLITE = (
    "CREATE TABLE IF NOT EXISTS findings (finding_id TEXT PRIMARY KEY, site TEXT NOT NULL,"
    " device_id TEXT NOT NULL, priority TEXT NOT NULL, topic TEXT NOT NULL,"
    " received_at TEXT NOT NULL, payload TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS rejected (id INTEGER PRIMARY KEY, topic TEXT, received_at TEXT,"
    " reason TEXT, payload BLOB)",
    "CREATE TABLE IF NOT EXISTS events (event_id TEXT PRIMARY KEY, site TEXT NOT NULL,"
    " device_id TEXT NOT NULL, priority TEXT NOT NULL, topic TEXT NOT NULL,"
    " received_at TEXT NOT NULL, payload TEXT NOT NULL)",
)


def _unversioned_sqlite(path, with_events: bool = True) -> None:
    """A receiver database exactly as the code before schema versioning wrote one, with data in it."""
    db = sqlite3.connect(str(path), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    for ddl in _UNVERSIONED_SQLITE if with_events else _UNVERSIONED_SQLITE[:2]:
        db.execute(ddl)
    db.execute("BEGIN IMMEDIATE")
    for i in range(3):
        r = received(i)
        db.execute("INSERT OR IGNORE INTO findings VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (r.finding_id, r.site, r.device_id, r.priority, r.topic, r.received_at, r.payload))
    if with_events:
        e = received(0, "ev", "event")
        db.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (e.finding_id, e.site, e.device_id, e.priority, e.topic, e.received_at, e.payload))
    db.execute("INSERT INTO rejected(topic, received_at, reason, payload) VALUES (?, ?, ?, ?)",
               (TOPIC, iso_utc(), "payload is not a finding", b"garbage"))
    db.execute("COMMIT")
    db.close()


@pytest.mark.parametrize("with_events", [True, False], ids=["current", "before-events"])
def test_an_unversioned_sqlite_receiver_database_is_adopted_as_version_1_without_data_loss(tmp_path, with_events):
    from tests.support.postgres import TestDB

    path = tmp_path / "old.sqlite3"
    _unversioned_sqlite(path, with_events)
    db = TestDB("sqlite", str(path))
    assert db.schema_versions() == []
    store = open_store(str(path), create=False)  # looking does not migrate
    try:
        assert store.count() == 3
    finally:
        store.close()
    assert db.schema_versions() == []
    store = open_store(str(path))  # a receiver starting on it does
    try:
        assert db.schema_versions() == list(range(1, SCHEMA_VERSION + 1))
        assert sorted(db.ids()) == [received(i).finding_id for i in range(3)]
        assert db.event_ids() == (["ev-000000"] if with_events else [])
        assert db.rejected_reasons() == ["payload is not a finding"]
        assert store.get("f-000001").finding["label"] == "lesion"
        assert store.add([received(2), received(3), received(1, "ev", "event")], []) == 2  # f-000002 was there
        assert store.count() == 4 and store.count_events() == (2 if with_events else 1)
    finally:
        store.close()


def test_a_findings_table_that_is_not_a_receivers_is_refused_untouched(tmp_path, pg_url):
    outbox = tmp_path / "outbox.sqlite3"
    with sqlite3.connect(outbox) as c:
        c.execute("CREATE TABLE findings (finding_id TEXT PRIMARY KEY, state INTEGER, payload BLOB)")
    with pytest.raises(ConfigError, match="not a receiver database .*columns finding_id, state, payload"):
        open_store(str(outbox))
    with sqlite3.connect(outbox) as c:
        assert {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == {"findings"}
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TABLE medge_findings (finding_id TEXT PRIMARY KEY, other TEXT)")
    with pytest.raises(ConfigError, match="not a receiver database"):
        open_store(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as c:
        assert c.execute("SELECT to_regclass('medge_schema')").fetchone()[0] is None


def test_unversioned_postgresql_tables_are_adopted_and_looking_creates_nothing(pg_url):
    import psycopg

    r = medge("hospital", "findings", "list", "--db", pg_url)  # an empty database: not a receiver's
    assert r.returncode == 2 and "no receiver tables here" in r.stderr and "Traceback" not in r.stderr
    with psycopg.connect(pg_url, autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'medge%'").fetchone()[0] == 0
        for ddl in MIGRATIONS[0].postgresql:  # what the receiver created before versioning: the same statements
            c.execute(ddl)
        c.execute("INSERT INTO medge_findings VALUES ('old-1', 's1', 'd1', 'routine', %s, now(), '{\"label\": \"x\"}')",
                  (TOPIC,))
    store = open_store(pg_url)
    try:
        assert store.count() == 1 and store.get("old-1").finding == {"label": "x"}
    finally:
        store.close()
    with psycopg.connect(pg_url, autocommit=True) as c:
        assert [r[0] for r in c.execute("SELECT version FROM medge_schema ORDER BY version")] == [
            m.version for m in MIGRATIONS]  # adopted as version 1, then brought up to date


def test_database_urls_in_messages_carry_no_password():
    assert safe_url("postgresql://rx:s3cret@db.example:5433/medge?sslmode=require&password=x") == \
        "postgresql://rx@db.example:5433/medge"
    with pytest.raises(ConfigError) as e:
        open_store("postgresql://rx:s3cret@127.0.0.1:1/medge")
    assert "s3cret" not in str(e.value) and "cannot connect to PostgreSQL" in str(e.value)


# --- writes --------------------------------------------------------------------------------------------------

def test_a_redelivered_batch_is_stored_once(store_db):
    """What the broker does after a receiver died between commit and PUBACK: the same batch again, plus new ones."""
    store = open_store(store_db.url)
    try:
        batch = [received(i) for i in range(50)] + [received(i, "ev", "event") for i in range(5)]
        rej = [Rejected(TOPIC, iso_utc(), "payload is not a finding", b"\x00garbage")]
        assert store.add(batch, rej) == 55
        again = batch + [received(i) for i in range(50, 60)]
        assert store.add(again, []) == 10
        assert store.add([received(60), received(60)], []) == 1  # the same id twice in one batch
        assert store.count() == 61 and store.count_events() == 5
    finally:
        store.close()
    assert len(store_db.ids()) == len(set(store_db.ids())) == 61
    assert sorted(store_db.event_ids()) == [f"ev-{i:06d}" for i in range(5)]
    assert store_db.rejected_reasons() == ["payload is not a finding"]
    payloads = store_db.query("SELECT payload FROM {rejected}")
    assert bytes(payloads[0][0]) == b"\x00garbage"


def test_a_failing_batch_commits_nothing(store_db):
    store = open_store(store_db.url)
    try:
        bad = Received("x", "s1", "d1", "routine", TOPIC, "not a time" if store_db.pg else iso_utc(), "{}")
        if not store_db.pg:
            bad = Received("x", "s1", "d1", "routine", TOPIC, iso_utc(), ["not", "bindable"])  # type: ignore[arg-type]
        with pytest.raises(Exception):  # noqa: B017 - the driver's own error type
            store.add([received(1), bad], [Rejected(TOPIC, iso_utc(), "r", b"")])
        assert store.count() == 0
        assert store.add([received(1)], []) == 1  # the store is usable afterwards
    finally:
        store.close()
    assert store_db.rejected_reasons() == []


def test_group_commit_rows_per_second(store_db):
    """One transaction per batch: rows/s for batches of 1, 50 and 500 (printed; run with -s to read them)."""
    store = open_store(store_db.url)
    rates: dict[int, float] = {}
    try:
        n = 0
        for size, total in ((1, 200), (50, 2000), (500, 5000)):
            t0 = time.perf_counter()
            for start in range(0, total, size):
                assert store.add([received(n + i) for i in range(start, start + size)], []) == size
            rates[size] = total / (time.perf_counter() - t0)
            n += total
        assert store.count() == n
    finally:
        store.close()
    print(f"\n{store_db.kind} group commit: " + ", ".join(f"batch {k}: {v:,.0f} rows/s" for k, v in rates.items()))
    assert rates[500] > 5 * rates[1]


# --- connection loss (PostgreSQL) ----------------------------------------------------------------------------

def test_a_broken_connection_fails_the_batch_once_and_the_next_add_reconnects(postgres_server, pg_url, caplog):
    caplog.set_level(logging.INFO, logger="medge.store")
    store = open_store(pg_url)
    try:
        assert store.add([received(0)], []) == 1
        postgres_server.end_sessions(pg_url)
        with pytest.raises(StoreUnavailable) as e:  # the receiver catches it as an OSError
            store.add([received(1), received(2)], [])
        assert isinstance(e.value, OSError) and "terminating connection" in str(e.value)
        assert store.add([received(1), received(2)], []) == 2  # the same batch again, after the redelivery
        assert store.count() == 3
    finally:
        store.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "lost the PostgreSQL connection" in warnings[0].message
    assert "terminating connection due to administrator command" in warnings[0].message
    assert "reconnected to PostgreSQL" in warnings[1].message
    assert not any(r.exc_info for r in caplog.records) and "Traceback" not in caplog.text


def test_while_postgresql_is_down_each_add_fails_fast_with_backoff_and_no_traceback(postgres_server, pg_url, caplog):
    caplog.set_level(logging.INFO, logger="medge.store")
    store = open_store(pg_url)
    try:
        assert store.add([received(0)], []) == 1
        postgres_server.stop()
        try:
            attempts = []
            for _ in range(3):
                t0 = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    store.add([received(1)], [])
                attempts.append(time.monotonic() - t0)
            with pytest.raises(StoreUnavailable, match="Connection refused"):
                store.count()
        finally:
            postgres_server.start()
        assert attempts[0] < 1.0 and attempts[2] >= 0.25  # waits out the backoff before trying again
        assert store.add([received(1)], []) == 1 and store.count() == 2
    finally:
        store.close()
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "lost the PostgreSQL connection" in warnings[0] and "reconnected" in warnings[1]
    assert "Traceback" not in caplog.text


# --- the commands --------------------------------------------------------------------------------------------

def test_hospital_findings_and_events_commands_on_both_stores(store_db):
    store = open_store(store_db.url)
    try:
        store.add([received(1), received(2), received(7, "ev", "event")], [])
    finally:
        store.close()
    r = medge("hospital", "findings", "list", "--db", store_db.url)
    assert r.returncode == 0, r.stderr
    assert "f-000001" in r.stdout and "f-000002" in r.stdout and "lesion" in r.stdout and "ev-000007" not in r.stdout
    r = medge("hospital", "findings", "list", "--db", store_db.url, "--json")
    assert r.returncode == 0 and sorted(d["finding_id"] for d in json.loads(r.stdout)) == ["f-000001", "f-000002"]
    r = medge("hospital", "findings", "show", "f-000002", "--db", store_db.url, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["finding"]["confidence"] == 0.9
    r = medge("hospital", "findings", "show", "nope", "--db", store_db.url)
    assert r.returncode != 0 and "finding nope: not in" in r.stderr and "Traceback" not in r.stderr
    r = medge("hospital", "events", "list", "--db", store_db.url, "--json")
    assert r.returncode == 0 and [d["event_id"] for d in json.loads(r.stdout)] == ["ev-000007"]


def test_a_nul_in_a_string_is_refused_before_it_can_stop_the_receivers(store_db):
    """Valid JSON that PostgreSQL's JSONB cannot hold (\\u0000 in a string) would fail its batch at every receiver
    the broker redelivers it to: a poison message for the whole group. The receiver refuses it up front."""
    from hospital.receiver import parse_message

    doc = {"finding_id": "nul-1", "device_id": "d1", "priority": "routine", "schema": "medge.finding/1",
           "label": "free\u0000fluid"}
    msg = parse_message("medge/s1/d1/findings/routine", json.dumps(doc).encode(), None)
    assert isinstance(msg, Rejected) and "NUL" in msg.reason and msg.finding_id == "nul-1"
    store = open_store(store_db.url)
    try:
        assert store.add([], [msg]) == 0  # the rejection itself (raw bytes) is stored, so the device is told
        if store_db.pg:  # what would have happened to the batch without the check
            bad = Received("nul-1", "s1", "d1", "routine", "medge/s1/d1/findings/routine", iso_utc(), json.dumps(doc))
            with pytest.raises(Exception):  # noqa: B017 - psycopg's DataError, whatever its wording
                store.add([bad], [])
            assert store.add([received(1)], []) == 1  # and the store goes on with the next batch
    finally:
        store.close()
    assert store_db.rejected_reasons() == [msg.reason]
