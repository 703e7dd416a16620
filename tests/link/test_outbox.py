"""Outbox: durability, ordering, TTL, quota policy and the `medge outbox` commands, on real SQLite files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import yaml
from typer.testing import CliRunner

from edge.cli import app
from edge.events import DeviceEvent
from edge.findings import Finding, ModelRef
from edge.link.outbox import Outbox, OutboxError
from tests.support import ROOT

MODEL = ModelRef(name="m", version="1", sha256="0" * 64)


def mk(i: int, priority: str = "routine", pad: int = 0) -> Finding:
    return Finding(device_id="d1", modality="US", model=MODEL, label="x" * (1 + pad), confidence=0.5,
                   needs_review=False, priority=priority, finding_id=f"f-{priority}-{i:06d}")


def test_put_is_durable_and_idempotent(tmp_path):
    p = tmp_path / "ob.sqlite3"
    with Outbox(p) as ob:
        assert ob.put(mk(1)) is True
        assert ob.put(mk(1)) is False  # deterministic id: re-processing is a no-op
        assert ob.put_many([mk(2), mk(3), mk(1)]) == 2
        # one frame's findings in one transaction, with a flag per finding (a repeat inside the batch is not new)
        assert ob.store([mk(4), mk(2), mk(5), mk(4)]) == [True, False, True, False]
    with Outbox(p) as ob:  # reopened: the rows and the WAL/FULL settings are there
        assert ob.depth() == 5
        assert ob._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert ob._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert Finding.from_json(ob.get("f-routine-000002").payload).finding_id == "f-routine-000002"


def test_new_rows_commit_with_fsync_and_state_changes_without(tmp_path):
    """What each commit ran under, read from the statements the connection executed: a new row's
    transaction must be FULL (on disk before store returns); a lease or an acknowledgement may be NORMAL."""
    with Outbox(tmp_path / "ob.sqlite3") as ob:
        seen: list[str] = []
        ob._db.set_trace_callback(seen.append)
        mode = lambda: ob._db.execute("PRAGMA synchronous").fetchone()[0]  # noqa: E731 - 2 FULL, 1 NORMAL

        def commits_under(fn) -> int:
            seen.clear()
            fn()
            assert any(x.upper().startswith("COMMIT") for x in seen), seen
            return mode()

        assert commits_under(lambda: ob.store([mk(1), mk(2)])) == 2
        assert commits_under(lambda: ob.lease(2)) == 1
        assert commits_under(lambda: ob.mark_delivered("f-routine-000001")) == 1
        assert commits_under(lambda: ob.put(mk(3))) == 2  # back to FULL for the next new row
        seen.clear()
        assert ob.resend_overdue() == 0 and not any(x.upper().startswith(("BEGIN", "COMMIT")) for x in seen)
    with Outbox(tmp_path / "ob.sqlite3") as ob:
        assert ob.depth() == 2 and ob.status().delivered == 1


def test_lease_ack_requeue_and_delivered_ids_stay_deduplicated(tmp_path):
    with Outbox(tmp_path / "ob.sqlite3") as ob:
        ob.put_many([mk(i) for i in range(5)])
        got = ob.lease(3)
        assert [g.finding_id for g in got] == [f"f-routine-{i:06d}" for i in range(3)]
        assert all(g.state == "in-flight" for g in got)
        assert [g.finding_id for g in ob.lease(10)] == ["f-routine-000003", "f-routine-000004"]
        assert ob.lease(10) == []
        assert ob.mark_delivered("f-routine-000000") is True
        assert ob.mark_delivered("f-routine-000000") is False
        assert ob.requeue("f-routine-000001") is True
        again = ob.lease(10)
        assert [g.finding_id for g in again] == ["f-routine-000001"] and again[0].attempts == 1
        assert ob.retry_all() == 4
        st = ob.status()
        assert st.pending["routine"] == 4 and st.in_flight == 0 and st.delivered == 1
        assert ob.put(mk(0)) is False  # delivered id still known
        assert ob.get("f-routine-000000").payload is None


def test_priority_order_without_starvation(tmp_path):
    with Outbox(tmp_path / "ob.sqlite3") as ob:
        ob.put_many([mk(i, "low") for i in range(50)])
        ob.put_many([mk(i, "routine") for i in range(50)])
        ob.put_many([mk(i, "urgent") for i in range(200)])
        batch = ob.lease(20)
        prios = [b.priority for b in batch]
        assert prios.count("urgent") >= 14 and prios.count("routine") >= 1 and prios.count("low") >= 1
        assert batch[0].priority == "urgent"
        # with nothing urgent left, routine goes before low
        ob.retry_all()
        for b in ob.lease(1000):
            if b.priority == "urgent":
                ob.mark_delivered(b.finding_id)
            else:
                ob.requeue(b.finding_id)
        prios = [b.priority for b in ob.lease(20)]
        assert prios.count("routine") > prios.count("low") >= 1
        assert [b.priority for b in ob.list_pending(3)] == ["routine"] * 3


def test_ttl_per_priority_and_purge_is_counted(tmp_path):
    with Outbox(tmp_path / "ob.sqlite3", ttl_s={"low": 0.05}) as ob:
        ob.put_many([mk(i, "low") for i in range(3)] + [mk(0, "urgent")])
        time.sleep(0.1)
        assert [b.priority for b in ob.lease(10)] == ["urgent"]  # expired low is never sent
        assert ob.status().expired_waiting == 3
        assert ob.purge_expired() == 3
        st = ob.status()
        assert st.expired == {"urgent": 0, "routine": 0, "low": 3} and st.depth == 1


def test_quota_drops_oldest_low_only_and_never_urgent(tmp_path):
    one = len(mk(0, "low", pad=400).to_json())
    with Outbox(tmp_path / "ob.sqlite3", quota_bytes=one * 10 + 200) as ob:
        assert ob.put_many([mk(i, "low", pad=400) for i in range(10)]) == 10
        assert ob.put(mk(0, "urgent", pad=400)) is True  # evicts the oldest low
        st = ob.status()
        assert st.dropped_low == 1 and ob.get("f-low-000000") is None and ob.get("f-low-000001") is not None
        assert ob.put_many([mk(i, "routine", pad=400) for i in range(9)]) == 9  # evicts all other low
        assert ob.status().pending["low"] == 0 and ob.status().dropped_low == 10
        assert ob.put(mk(99, "low", pad=400)) is False  # no low left to evict: the new low one is dropped
        assert ob.status().dropped_low == 11
        assert ob.store([mk(98, "low", pad=400), mk(50, "routine", pad=400)]) == [False, True]  # flags line up
        for i in range(1, 6):  # urgent is kept beyond the quota, counted and reported
            assert ob.put(mk(i, "urgent", pad=400)) is True
        st = ob.status()
        assert st.over_quota and st.over_quota_accepted == 6 and st.pending["urgent"] == 6
        assert "OVER QUOTA" in st.describe()
        # delivering frees quota accounting
        for b in ob.lease(100):
            ob.mark_delivered(b.finding_id)
        assert ob.status().pending_bytes == 0


def test_two_threads_each_with_own_connection(tmp_path):
    p = tmp_path / "ob.sqlite3"
    Outbox(p).close()
    delivered: list[str] = []
    done = threading.Event()

    def sender():
        with Outbox(p) as ob:
            while not done.is_set() or ob.depth():
                for it in ob.lease(16):
                    ob.mark_delivered(it.finding_id)
                    delivered.append(it.finding_id)

    t = threading.Thread(target=sender)
    t.start()
    with Outbox(p) as ob:
        for i in range(300):
            assert ob.put(mk(i))
    done.set()
    t.join(30)
    assert sorted(delivered) == [f"f-routine-{i:06d}" for i in range(300)]


def test_put_survives_sigkill(tmp_path):
    """Every put that returned before a SIGKILL is on disk afterwards."""
    p = tmp_path / "ob.sqlite3"
    script = textwrap.dedent(f"""
        import sys
        from edge.findings import Finding, ModelRef
        from edge.link.outbox import Outbox
        m = ModelRef(name="m", version="1", sha256="0" * 64)
        ob = Outbox({str(p)!r})
        i = 0
        while True:
            ob.put(Finding(device_id="d", modality="US", model=m, label="a", confidence=0.5,
                           needs_review=False, finding_id=f"k{{i}}"))
            print(i, flush=True)
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    last = -1
    for line in proc.stdout:
        last = int(line)
        if last >= 200:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with Outbox(p) as ob:
        assert ob.depth() >= last + 1
        assert all(ob.get(f"k{i}") is not None for i in range(last + 1))


def test_unwritable_outbox_is_one_clear_line(tmp_path):
    bad = tmp_path / "file"
    bad.write_text("x")
    with pytest.raises(OutboxError, match=r"file/ob.sqlite3: cannot open outbox"):
        Outbox(bad / "ob.sqlite3")
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError, match="garbage.sqlite3: cannot open outbox"):
        Outbox(garbage)


def test_cli_outbox_commands(tmp_path):
    (tmp_path / "bundle").mkdir()
    (tmp_path / "cine.dcm").write_bytes(b"x")
    prof = tmp_path / "p.yaml"
    prof.write_text(yaml.safe_dump({
        "device": {"id": "d1", "site": "s1"}, "data_dir": str(tmp_path / "data"),
        "models": [{"name": "m", "bundle": "bundle", "require_signature": False}],
        "sources": [{"name": "s", "kind": "replay", "path": "cine.dcm", "model": "m"}],
    }))
    with Outbox(tmp_path / "data" / "outbox.sqlite3", ttl_s={"low": 0.01}) as ob:  # expiry is fixed at insert
        ob.put_many([mk(1, "urgent"), mk(2, "low")])
        ob.lease(1)
    time.sleep(0.05)
    r = CliRunner()
    res = r.invoke(app, ["outbox", "status", "-c", str(prof)])
    assert res.exit_code == 0 and "urgent 0" in res.output and "in flight 1" in res.output
    res = r.invoke(app, ["outbox", "status", "-c", str(prof), "--json"])
    assert '"depth": 2' in res.output
    res = r.invoke(app, ["outbox", "list", "-c", str(prof)])
    assert "f-urgent-000001" in res.output and "in-flight" in res.output
    assert "1 finding(s) re-queued" in r.invoke(app, ["outbox", "retry", "-c", str(prof)]).output
    assert "1 expired finding(s) purged" in r.invoke(app, ["outbox", "purge-expired", "-c", str(prof)]).output


def _profile(tmp_path, data_dir, bundle="bundle"):
    (tmp_path / "cine.dcm").write_bytes(b"x")
    prof = tmp_path / "p.yaml"
    prof.write_text(yaml.safe_dump({
        "device": {"id": "d1", "site": "s1"}, "data_dir": str(data_dir),
        "models": [{"name": "m", "bundle": bundle, "require_signature": False}],
        "sources": [{"name": "s", "kind": "replay", "path": "cine.dcm", "model": "m"}],
    }))
    return prof


def test_looking_creates_nothing_and_a_missing_outbox_is_an_error(tmp_path):
    """On a device a typo in data_dir must not look like an empty, healthy outbox. The bundle need not
    exist (or verify) to read the outbox."""
    prof = _profile(tmp_path, tmp_path / "nowhere", bundle="no-such-bundle")
    r = CliRunner()
    for cmd in (["outbox", "status"], ["outbox", "list"], ["findings", "list"], ["outbox", "retry"]):
        res = r.invoke(app, [*cmd, "-c", str(prof)])
        assert res.exit_code == 2, (cmd, res.output)
        assert "outbox.sqlite3: no outbox here (its folder does not exist either)" in res.output, res.output
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "nowhere").mkdir()
    res = r.invoke(app, ["outbox", "status", "-c", str(prof)])
    assert res.exit_code == 2 and "no outbox here (the folder exists)" in res.output
    assert list((tmp_path / "nowhere").iterdir()) == []
    with Outbox(tmp_path / "nowhere" / "outbox.sqlite3") as ob:  # what the daemon makes
        ob.put(mk(7, "urgent"))
    res = r.invoke(app, ["outbox", "status", "-c", str(prof)])
    assert res.exit_code == 0 and "urgent 1" in res.output  # the missing bundle does not matter for reading


def test_findings_list_and_show_with_delivery_state(tmp_path):
    prof = _profile(tmp_path, tmp_path / "data")
    with Outbox(tmp_path / "data" / "outbox.sqlite3") as ob:
        ob.put_many([mk(1, "urgent"), mk(2, "routine"), mk(3, "low")])
        ids = [it.finding_id for it in ob.lease(3)]
        ob.mark_at_broker_many(ids[:2], 60, 60)
        ob.mark_delivered_many(ids[:1])
    r = CliRunner()
    res = r.invoke(app, ["findings", "list", "-c", str(prof), "--json"])
    rows = {x["finding_id"]: x for x in __import__("json").loads(res.stdout)}
    assert res.exit_code == 0 and len(rows) == 3
    assert rows["f-urgent-000001"]["state"] == "acknowledged" and rows["f-urgent-000001"]["payload_held"] is False
    assert rows["f-routine-000002"]["state"] == "at-broker" and rows["f-low-000003"]["state"] == "in-flight"
    assert {x["modality"] for x in rows.values()} == {"US"} and rows["f-low-000003"]["label"] == "x"
    assert rows["f-low-000003"]["model"] == "m 1 fp32" and rows["f-low-000003"]["needs_review"] is False
    res = r.invoke(app, ["findings", "list", "-c", str(prof), "--state", "acknowledged"])
    assert res.exit_code == 0 and "f-urgent-000001" in res.output and "f-low-000003" not in res.output
    assert "1 finding(s)" in res.output
    res = r.invoke(app, ["findings", "list", "-c", str(prof), "--state", "lost"])
    assert res.exit_code == 2 and "use one of pending, in-flight, at-broker, acknowledged" in res.output
    res = r.invoke(app, ["findings", "show", "f-urgent-000001", "-c", str(prof)])
    assert res.exit_code == 0 and "the hospital has acknowledged it" in res.output  # the summary outlives the payload
    res = r.invoke(app, ["findings", "show", "f-low-000003", "-c", str(prof), "--json"])
    doc = __import__("json").loads(res.stdout)
    assert doc["state"]["state"] == "in-flight" and doc["finding"]["finding_id"] == "f-low-000003"
    res = r.invoke(app, ["findings", "show", "nope", "-c", str(prof)])
    assert res.exit_code == 2 and "finding nope: not in this device's outbox" in res.output


def test_end_to_end_states_resend_with_doubling_wait_and_hospital_ack_in_any_state(tmp_path):
    p = tmp_path / "ob.sqlite3"
    with Outbox(p) as ob:
        ob.put_many([mk(i) for i in range(4)])
        ids = [it.finding_id for it in ob.lease(4)]
        t0 = time.time()
        assert ob.mark_at_broker_many(ids[:3], ack_wait_s=10, max_wait_s=25) == 3
        assert ob.mark_at_broker_many(ids[:1], ack_wait_s=10, max_wait_s=25) == 0  # only from in flight
        st = ob.status()
        assert st.at_broker == 3 and st.in_flight == 1 and st.delivered == 0 and st.depth == 4
        assert ob.get(ids[0]).state == "at-broker" and ob.get(ids[0]).payload is not None  # kept for a resend
        assert ob.retry_all() == 1  # a restart re-sends the in-flight one; at-broker rows keep waiting
        assert ob.status().at_broker == 3
        # the hospital's acknowledgement can overtake the PUBACK: accepted from pending too
        assert ob.mark_delivered_many([ids[3], ids[2]]) == 2
        assert ob.get(ids[3]).state == "acknowledged" and ob.get(ids[3]).payload is None
        assert ob.resend_overdue(now=t0 + 9) == 0
        assert ob.resend_overdue(now=t0 + 11) == 2  # first wait: ack_wait_s
        assert ob.status().resent == 2 and ob.get(ids[0]).attempts == 1
        for attempt, expected_wait in ((1, 20), (2, 25), (3, 25)):  # doubling, capped at max_wait_s
            t = time.time()
            assert [it.finding_id for it in ob.lease(10)] == ids[:2]
            ob.mark_at_broker_many(ids[:2], ack_wait_s=10, max_wait_s=25)
            assert ob.resend_overdue(now=t + expected_wait - 1) == 0, attempt
            assert ob.resend_overdue(now=t + expected_wait + 1) == 2, attempt
        # refused by the receiver (kept in its rejected table): leaves the outbox, counted
        assert ob.mark_delivered_many([ids[0]], rejected=[ids[1]]) == 2
        st = ob.status()
        assert st.depth == 0 and st.delivered == 4 and st.hospital_rejected == 1 and st.pending_bytes == 0
        assert "acknowledged 4 by the hospital" in st.describe() and "1 rejected there" in st.describe()


def test_outbox_from_before_end_to_end_acks_is_upgraded_and_a_newer_one_refused(tmp_path):
    import sqlite3

    p = tmp_path / "old.sqlite3"
    with sqlite3.connect(p) as db:  # the schema-1 table, as a device running the previous medge left it
        db.execute("CREATE TABLE findings (finding_id TEXT PRIMARY KEY, priority INTEGER NOT NULL, state INTEGER NOT"
                   " NULL DEFAULT 0, payload BLOB, size INTEGER NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT"
                   " NULL, attempts INTEGER NOT NULL DEFAULT 0, leased_at REAL, delivered_at REAL)")
        db.execute("INSERT INTO findings VALUES ('old-1', 1, 0, x'7b7d', 2, ?, ?, 0, NULL, NULL)",
                   (time.time(), time.time() + 3600))
    with Outbox(p) as ob:
        (it,) = ob.lease(5)
        assert it.finding_id == "old-1" and it.kind == "finding" and ob.mark_at_broker_many(["old-1"], 5, 5) == 1
        assert ob._db.execute("PRAGMA user_version").fetchone()[0] == 4
    with sqlite3.connect(p) as db:
        db.execute("PRAGMA user_version=99")
    with pytest.raises(OutboxError, match="outbox schema 99 is newer than this medge understands"):
        Outbox(p)


def test_sizes_are_mib_everywhere_the_quota_appears(tmp_path):
    """The profile's quota_mb is MiB; status and doctor print the same number in the same unit."""
    from edge.commands.doctor import check_disk
    from edge.units import MIB

    ob = Outbox(tmp_path / "o.sqlite3", quota_bytes=512 * MIB)
    assert "of 512 MiB quota" in ob.status().describe()
    (c,) = check_disk(tmp_path, 512)
    assert "outbox quota 512 MiB" in c.detail and " MB" not in c.detail


def ev(i: int, priority: str = "low", kind: str = "out_of_scope", pad: int = 0) -> DeviceEvent:
    return DeviceEvent(device_id="d1", kind=kind, reason="modality", detail="CR is not US" + "." * pad, model=MODEL,
                       source="s", modality="CR", priority=priority, event_id=f"e-{priority}-{i:06d}")


def test_outbox_v3_file_is_upgraded_in_place_and_keeps_its_rows(tmp_path):
    import sqlite3

    p = tmp_path / "v3.sqlite3"
    now = time.time()
    with sqlite3.connect(p) as db:  # the schema-3 file, as the previous medge left it
        db.executescript("""
            CREATE TABLE findings (finding_id TEXT PRIMARY KEY, priority INTEGER NOT NULL, state INTEGER NOT NULL DEFAULT 0,
                payload BLOB, size INTEGER NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0, leased_at REAL, delivered_at REAL, due_at REAL, label TEXT,
                modality TEXT, confidence REAL, needs_review INTEGER, model TEXT, acquired_at TEXT, source TEXT);
            CREATE INDEX findings_queue ON findings(state, priority, created_at);
            CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
            PRAGMA user_version=3;
        """)
        payload = mk(1, "urgent").to_json().encode()
        db.execute("INSERT INTO findings VALUES ('f-urgent-000001', 0, 0, ?, ?, ?, ?, 0, NULL, NULL, NULL, 'x', 'US', 0.5, 0,"
                   " 'm 1 fp32', NULL, 's')", (payload, len(payload), now, now + 3600))
        db.execute("INSERT INTO findings VALUES ('f-routine-000002', 1, 2, NULL, 10, ?, ?, 1, NULL, ?, NULL, 'x', 'US', 0.5,"
                   " 1, 'm 1 fp32', NULL, 's')", (now - 60, now + 3600, now - 30))
        db.execute("INSERT INTO counters VALUES ('pending_bytes', ?)", (len(payload),))
    with Outbox(p) as ob:
        assert ob._db.execute("PRAGMA user_version").fetchone()[0] == 4
        assert {"kind", "event_kind", "reason", "detail"} <= {r[1] for r in ob._db.execute("PRAGMA table_info(findings)")}
        rows = {r.finding_id: r for r in ob.list_findings()}
        assert set(rows) == {"f-urgent-000001", "f-routine-000002"} and ob.list_events() == []
        assert rows["f-routine-000002"].state == "acknowledged" and rows["f-routine-000002"].needs_review is True
        assert ob.put(mk(2)) is False  # the acknowledged id still deduplicates
        st = ob.status()
        assert st.depth == 1 and st.events == 0 and st.delivered == 1 and st.pending_bytes == len(payload)
        (it,) = ob.lease(5)
        assert it.finding_id == "f-urgent-000001" and it.kind == "finding" and Finding.from_json(it.payload) == mk(1, "urgent")
        assert ob.put(ev(1)) is True  # and the upgraded file takes events
    with Outbox(p) as ob:  # reopening a v4 file changes nothing
        assert len(ob.list_findings()) == 2 and [e.event_id for e in ob.list_events()] == ["e-low-000001"]


def test_findings_and_events_share_one_transaction_and_are_listed_apart(tmp_path):
    with Outbox(tmp_path / "ob.sqlite3") as ob:
        assert ob.store([mk(1, "urgent"), ev(1, "routine"), ev(1, "routine"), mk(1, "urgent")]) == [True, True, False, False]
        assert ob.put(ev(2, kind="drift")) is True and ob.put_many([ev(2, kind="drift"), mk(2)]) == 1
        assert [r.finding_id for r in ob.list_findings()] == ["f-routine-000002", "f-urgent-000001"]  # never an event
        events = {e.event_id: e for e in ob.list_events()}
        assert set(events) == {"e-routine-000001", "e-low-000002"}
        e = events["e-routine-000001"]
        assert (e.kind, e.reason, e.detail, e.modality, e.model, e.source, e.state) == (
            "out_of_scope", "modality", "CR is not US", "CR", "m 1 fp32", "s", "pending")
        assert "out_of_scope  modality: CR is not US  pending" in e.describe()
        assert ob.list_findings(finding_id="e-routine-000001") == [] and ob.list_events(event_id="f-urgent-000001") == []
        st = ob.status()
        assert st.depth == 4 and st.events == 2 and st.pending == {"urgent": 1, "routine": 2, "low": 1}
        assert "events     2 of these are device events" in st.describe() and st.to_dict()["events"] == 2
        items = {it.finding_id: it for it in ob.lease(10)}
        assert {it.kind for it in items.values()} == {"finding", "event"}
        assert items["f-urgent-000001"].kind == "finding" and items["e-low-000002"].kind == "event"
        back = DeviceEvent.from_dict(__import__("json").loads(items["e-low-000002"].payload))
        assert (back.event_id, back.kind, back.model, back.schema) == ("e-low-000002", "drift", MODEL, "medge.event/1")
        assert ob.get("e-routine-000001").kind == "event" and "event" in ob.get("e-routine-000001").describe()
        # acknowledged by id like a finding: the payload goes, the summary stays
        assert ob.mark_delivered_many(["e-routine-000001", "f-urgent-000001"]) == 2
        (acked,) = ob.list_events(states=("acknowledged",))
        assert acked.event_id == "e-routine-000001" and not acked.payload_held and acked.reason == "modality"
        assert ob.status().events == 1 and ob.status().depth == 2
        with pytest.raises(TypeError, match="findings and device events, not dict"):
            ob.store([{"finding_id": "x"}])


def test_low_priority_events_follow_the_quota_and_ttl_rules(tmp_path):
    one = len(ev(0, pad=400).to_json())
    with Outbox(tmp_path / "ob.sqlite3", quota_bytes=one * 2 + 10, ttl_s={"low": 0.05}) as ob:
        assert ob.put_many([ev(i, pad=400) for i in range(2)]) == 2
        assert ob.put(ev(2, "urgent", pad=400)) is True  # evicts the oldest low event, as it would a low finding
        assert ob.status().dropped_low == 1 and ob.get("e-low-000000") is None
        time.sleep(0.1)
        assert [it.finding_id for it in ob.lease(10)] == ["e-urgent-000002"]  # the expired low one is not sent
        assert ob.purge_expired() == 1 and ob.status().expired["low"] == 1


def test_an_idle_lease_takes_no_lock_until_something_can_be_pending(tmp_path):
    """The sync loop leases 50 times a second; with nothing to send it must not take the write lock each time,
    yet a finding stored by another connection (the pipeline's), or made pending again here, is seen at once."""
    import sqlite3

    from tests.support.sync_helpers import findings

    path = tmp_path / "o.sqlite3"
    sender, pipeline = Outbox(path), Outbox(path)
    assert sender.lease(10) == []
    blocker = sqlite3.connect(str(path), isolation_level=None, timeout=0.1)
    blocker.execute("BEGIN IMMEDIATE")  # someone else holds the write lock
    assert sender.lease(10) == []  # idle: answered without waiting for the lock
    blocker.execute("ROLLBACK")
    pipeline.put_many(findings("d", 3))  # another connection commits
    got = sender.lease(10)
    assert len(got) == 3
    assert sender.lease(10) == []
    assert sender.requeue(got[0].finding_id)  # made pending again on this connection
    assert [i.finding_id for i in sender.lease(10)] == [got[0].finding_id]
    sender.put(findings("d", 1, start=9)[0])  # stored on this connection
    assert len(sender.lease(10)) == 1
    sender.close()
    pipeline.close()
