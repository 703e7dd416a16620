"""The hospital side as IT staff meet it: listing what the receivers stored, and what `medge receive`
refuses before it starts."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

from edge.findings import Finding, ModelRef
from hospital.receiver import Receiver, ReceiverConfig
from hospital.store import Received, SqliteStore
from tests.support import ROOT
from tests.support.mqtt_broker import Broker
from tests.support.sync_helpers import wait_for


def _medge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_findings_list_and_show_without_sql(tmp_path):
    db = tmp_path / "h.sqlite3"
    store = SqliteStore(db)
    f = Finding(device_id="cart-1", modality="US", model=ModelRef("us-free-fluid", "1.0.0", "a" * 64, "int8"),
                label="free_fluid", confidence=0.93, needs_review=True, priority="urgent", finding_id="id-1")
    store.add([Received("id-1", "site-a", "cart-1", "urgent", "medge/site-a/cart-1/findings/urgent",
                        "2026-12-01T10:00:00.000Z", f.to_json())], [])
    store.close()
    r = _medge("hospital", "findings", "list", "--db", str(db))
    assert r.returncode == 0, r.stderr
    line = r.stdout.splitlines()[0]
    for part in ("urgent", "free_fluid", "0.93", "US", "NEEDS REVIEW", "site-a/cart-1", "us-free-fluid 1.0.0", "id-1"):
        assert part in line, line
    r = _medge("hospital", "findings", "show", "id-1", "--db", str(db), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["finding"]["label"] == "free_fluid"
    r = _medge("hospital", "findings", "show", "id-2", "--db", str(db))
    assert r.returncode == 2 and "finding id-2: not in" in r.stderr


def test_events_list_without_sql_and_apart_from_findings(tmp_path):
    from edge.events import DeviceEvent

    db = tmp_path / "h.sqlite3"
    store = SqliteStore(db)
    e = DeviceEvent(device_id="cart-1", kind="drift", reason="intensity_psi", detail="window PSI 0.41 above 0.25",
                    model=ModelRef("us-free-fluid", "1.0.0", "a" * 64, "int8"), source="cine", priority="routine",
                    event_id="ev-1")
    assert store.add([Received("ev-1", "site-a", "cart-1", "routine", "medge/site-a/cart-1/events/routine",
                               "2026-12-01T10:00:00.000Z", e.to_json(), "event")], []) == 1
    store.close()
    r = _medge("hospital", "events", "list", "--db", str(db))
    assert r.returncode == 0, r.stderr
    line, count = r.stdout.splitlines()
    for part in ("routine", "drift", "intensity_psi: window PSI 0.41 above 0.25", "site-a/cart-1", "us-free-fluid 1.0.0",
                 "ev-1"):
        assert part in line, line
    assert count == "1 event(s)"
    r = _medge("hospital", "events", "list", "--db", str(db), "--json")
    (doc,) = json.loads(r.stdout)
    assert doc["event_id"] == "ev-1" and doc["event"]["kind"] == "drift" and doc["site"] == "site-a"
    r = _medge("hospital", "findings", "list", "--db", str(db))
    assert r.returncode == 0 and r.stdout.strip() == "0 finding(s)"  # an event is never listed as a finding
    # a database written by a receiver from before device events: read-only, nothing added, no events
    import sqlite3

    old = tmp_path / "old.sqlite3"
    with sqlite3.connect(old) as con:
        con.execute("CREATE TABLE findings (finding_id TEXT PRIMARY KEY)")
        con.execute("CREATE TABLE rejected (id INTEGER PRIMARY KEY)")
    before = old.read_bytes()
    r = _medge("hospital", "events", "list", "--db", str(old))
    assert r.returncode == 0 and r.stdout.strip() == "0 event(s)" and old.read_bytes() == before
    r = _medge("hospital", "events", "list", "--db", str(tmp_path / "typo.sqlite3"))
    assert r.returncode == 2 and "typo.sqlite3: no receiver database here" in r.stderr
    outbox = tmp_path / "outbox.sqlite3"  # a device outbox holds events too, but is no receiver database
    with sqlite3.connect(outbox) as con:
        con.execute("CREATE TABLE findings (finding_id TEXT PRIMARY KEY, kind TEXT)")
    before = outbox.read_bytes()
    r = _medge("hospital", "events", "list", "--db", str(outbox))
    assert r.returncode == 2 and "not a receiver database" in r.stderr and outbox.read_bytes() == before


def test_looking_creates_no_database_and_receive_needs_an_existing_folder(tmp_path):
    r = _medge("hospital", "findings", "list", "--db", str(tmp_path / "typo.sqlite3"))
    assert r.returncode == 2 and "typo.sqlite3: no receiver database here" in r.stderr
    assert not (tmp_path / "typo.sqlite3").exists()
    r = _medge("receive", "--broker", "mqtt://127.0.0.1:1", "--db", str(tmp_path / "no" / "such" / "h.sqlite3"),
               "--max-seconds", "5")
    assert r.returncode == 2 and "folder" in r.stderr and "does not exist; create it" in r.stderr
    assert not (tmp_path / "no").exists()
    assert "is plain MQTT" in r.stderr  # and it says so loudly
    # a mistyped --db naming some other SQLite file (a device's outbox) is refused and left untouched
    import sqlite3

    other = tmp_path / "outbox.sqlite3"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE findings (finding_id TEXT PRIMARY KEY, state INTEGER)")
    before = other.read_bytes()
    r = _medge("hospital", "findings", "list", "--db", str(other))
    assert r.returncode == 2 and "not a receiver database" in r.stderr and other.read_bytes() == before


def test_two_receivers_on_one_host_get_their_own_client_ids(tmp_path):
    """On a broker that honours client ids (no identity rule), two `medge receive` with the defaults used to
    take each other's session every half second."""
    b = Broker(tmp_path, devices={"d1": "s1"})
    conf = b.conf_file.read_text().replace("use_username_as_clientid true\n", "")
    b.conf_file.write_text(conf)
    with b:
        rxs = [Receiver(ReceiverConfig(b.url, str(tmp_path / "h.sqlite3"), ca_file=b.ca, cert_file=b.cert("receiver"),
                                       key_file=b.key("receiver"), backoff_min_s=0.05, backoff_max_s=0.5))
               for _ in range(2)]
        assert rxs[0].client_id != rxs[1].client_id  # host and process: unique per process
        stop = threading.Event()
        threads = [threading.Thread(target=rx.run, args=(stop,), daemon=True) for rx in rxs]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: all(rx.ready.is_set() for rx in rxs), 15, "both subscribed")
            stop.wait(2.0)
            assert [rx.stats.connects for rx in rxs] == [1, 1]  # nobody was knocked off
        finally:
            stop.set()
            for t in threads:
                t.join(10)
