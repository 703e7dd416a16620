"""SyncClient and receiver against a real mosquitto (mTLS, per-device ACL) on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties

from edge.config import load_config
from edge.link.mqtt import new_client, parse_broker_url
from edge.link.outbox import Outbox
from edge.link.sync import SyncClient
from hospital.receiver import parse_message
from tests.support import ROOT
from tests.support.mqtt_broker import Broker, device_profile
from tests.support.sync_helpers import Monitor, ReceiverThread, findings, stored_ids, wait_for


class Watcher:
    """A monitoring identity reading one device's topics (with the identity rule, a watcher sharing the
    receiver's certificate would take the receiver's session)."""

    def __init__(self, b: Broker, topic: str) -> None:
        self.msgs: list[mqtt.MQTTMessage] = []
        url = parse_broker_url(b.url)
        self.c = new_client("watcher", url, b.ca, b.cert("monitor"), b.key("monitor"))
        self.c.on_message = lambda c, u, m: self.msgs.append(m)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.c.connect(url.host, url.port)
        self.c.loop_start()

    def topics(self) -> list[str]:
        return [m.topic for m in list(self.msgs)]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_findings_reach_receiver_exactly_once_with_status_and_heartbeat(tmp_path, broker):
    cfg = load_config(device_profile(tmp_path, broker, "d1"))
    with Outbox.from_config(cfg) as ob:
        ob.put_many(findings("d1", 150))
    watcher = Watcher(broker, "medge/s1/d1/#")
    seen_props: list[Properties] = []
    telemetry_calls = threading.Event()

    def telemetry():
        telemetry_calls.set()
        return {"fps": 12.5, "latency_ms_p95": 41.0, "model": "m@1"}

    db = tmp_path / "rx.sqlite3"
    with ReceiverThread(broker, db):
        sync = SyncClient(cfg, telemetry=telemetry)
        sync.start()
        try:
            wait_for(lambda: len(stored_ids(db)) >= 150, 30, "150 findings at the receiver")
            with Outbox.from_config(cfg) as ob:
                wait_for(lambda: ob.depth() == 0, 10, "outbox drained")
                assert ob.status().delivered == 150
            wait_for(lambda: "medge/s1/d1/telemetry" in watcher.topics(), 10, "heartbeat")
        finally:
            assert sync.stop(10)
    ids = stored_ids(db)
    assert sorted(ids) == sorted(f.finding_id for f in findings("d1", 150))
    st = sync.stats()
    assert st.delivered == 150 and st.rejected == 0 and st.connects == 1
    msgs = list(watcher.msgs)
    watcher.close()
    finding_msgs = [m for m in msgs if "/findings/" in m.topic]
    for m in finding_msgs:
        doc = json.loads(m.payload)
        assert m.topic == f"medge/s1/d1/findings/{doc['priority']}"
        seen_props.append(m.properties)
        assert ("finding_id", doc["finding_id"]) in m.properties.UserProperty
    assert {m.topic.rsplit("/", 1)[1] for m in finding_msgs} == {"urgent", "routine", "low"}
    status = [json.loads(m.payload) for m in msgs if m.topic.endswith("/status")]
    assert status[0]["state"] == "online" and status[-1] == {**status[-1], "state": "offline", "reason": "stopped"}
    hb = json.loads([m for m in msgs if m.topic.endswith("/telemetry")][0].payload)
    assert hb["fps"] == 12.5 and hb["model"] == "m@1" and "queue_depth" in hb and "disk_free_mb" in hb
    assert "oldest_pending_age_s" in hb and telemetry_calls.is_set()
    # the receiver stored exactly the payloads that were sent
    con = sqlite3.connect(db)
    row = con.execute("SELECT site, device_id, priority, payload FROM findings WHERE finding_id=?",
                      ("f-d1-000000",)).fetchone()
    assert row[:3] == ("s1", "d1", "urgent") and json.loads(row[3])["label"] == "lesion"


def test_last_will_marks_device_offline_when_link_dies(tmp_path, broker):
    cfg = load_config(device_profile(tmp_path, broker, "d1", keepalive_s=5))
    watcher = Watcher(broker, "medge/s1/d1/status")
    sync = SyncClient(cfg)
    sync.start()
    wait_for(lambda: sync.stats().connected, 10, "device connected")
    wait_for(lambda: len(watcher.msgs) >= 1, 10, "online status")
    # kill the device's TCP connection from the broker side: restart the broker (graceful stop sends wills)
    broker.restart()
    wait_for(lambda: any(json.loads(m.payload).get("reason") == "connection lost" for m in list(watcher.msgs)), 15,
             "last-will offline status")
    sync.stop(10)
    watcher.close()


def test_device_outside_its_acl_is_refused_visibly_and_keeps_its_findings(tmp_path, broker, caplog):
    # a device configured as d2 but holding d1's certificate: its topics medge/s1/d2/# are outside d1's ACL
    cfg = load_config(device_profile(tmp_path, broker, "d2", cert_name="d1"))
    with Outbox.from_config(cfg) as ob:
        ob.put_many(findings("d2", 5))
    db = tmp_path / "rx.sqlite3"
    caplog.set_level(logging.WARNING, logger="medge.sync")
    with ReceiverThread(broker, db):
        sync = SyncClient(cfg)
        sync.start()
        try:
            wait_for(lambda: sync.stats().rejected >= 5, 15, "PUBACK refusals")
        finally:
            sync.stop(10)
    st = sync.stats()
    assert st.delivered == 0 and "Not authorized" in st.last_rejection and "medge/s1/d2/findings/" in st.last_rejection
    assert any("refused finding" in r.message and "Not authorized" in r.message for r in caplog.records)
    # the broker names the certificate identity, not the configured client id "medge-d2": the client id
    # is the identity, so this device could not have taken another's session either
    assert "Denied PUBLISH from d1 " in broker.log() and "medge-d2" not in broker.log()
    assert any("refused this device's subscription to medge/s1/d2/ack" in r.message for r in caplog.records)
    assert st.ack_subscription is not None and "Not authorized" in st.ack_subscription
    assert stored_ids(db) == []
    with Outbox.from_config(cfg) as ob:
        assert ob.depth() == 5  # nothing marked delivered, nothing lost


def test_findings_are_held_until_a_receiver_subscribes(tmp_path, broker):
    """0x10 'No matching subscribers' is a success code in MQTT 5, yet the broker discarded the message."""
    cfg = load_config(device_profile(tmp_path, broker, "d1"))
    with Outbox.from_config(cfg) as ob:
        ob.put_many(findings("d1", 20))
    sync = SyncClient(cfg)
    sync.start()
    db = tmp_path / "rx.sqlite3"
    try:
        wait_for(lambda: sync.stats().no_subscribers >= 20, 10, "no-subscriber replies")
        with Outbox.from_config(cfg) as ob:
            assert ob.depth() == 20
        with ReceiverThread(broker, db):
            wait_for(lambda: len(stored_ids(db)) == 20, 30, "held findings delivered")
    finally:
        sync.stop(10)
    assert sorted(stored_ids(db)) == sorted(f.finding_id for f in findings("d1", 20))


def test_tls_failures_are_one_line_and_leak_no_secret(tmp_path, broker, caplog):
    other = Broker(tmp_path / "other", devices={"d1": "s1"})  # a CA the broker does not trust; never started
    secret = "hunter2-very-secret"
    pw = tmp_path / "pw"
    pw.write_text(secret)
    caplog.set_level(logging.DEBUG)
    # 1) wrong CA for the server certificate
    cfg = load_config(device_profile(tmp_path / "a", broker, "d1", ca_file=str(other.ca), username="d1",
                                     password_file=str(pw)))
    sync = SyncClient(cfg)
    sync.start()
    wait_for(lambda: "TLS certificate verification failed" in (sync.stats().last_error or ""), 10, "verify failure")
    sync.stop(5)
    assert "TLS certificate verification failed" in sync.stats().last_error
    # 2) a client certificate from a CA the broker does not trust
    cfg = load_config(device_profile(tmp_path / "b", broker, "d1", cert_file=str(other.cert("d1")),
                                     key_file=str(other.key("d1")), password_file=str(pw), username="d1"))
    sync = SyncClient(cfg)
    sync.start()
    wait_for(lambda: sync.stats().connect_failures >= 1, 10, "client certificate refused")
    sync.stop(5)
    assert not sync.stats().connects
    assert secret not in caplog.text and "BEGIN" not in caplog.text


def test_receiver_rejects_forged_and_malformed_messages():
    good = json.dumps({"finding_id": "x1", "device_id": "d1", "priority": "urgent"}).encode()
    assert parse_message("medge/s1/d1/findings/urgent", good, None).finding_id == "x1"
    forged = parse_message("medge/s1/d1/findings/urgent", good.replace(b'"d1"', b'"d9"'), None)
    assert "does not match the topic's device" in forged.reason
    assert "not a finding" in parse_message("medge/s1/d1/findings/urgent", b"{not json", None).reason
    assert "topic does not follow" in parse_message("medge/s1/d1/other", good, None).reason
    props = Properties(mqtt.PacketTypes.PUBLISH)
    props.UserProperty = ("finding_id", "x2")
    assert "differs from the payload" in parse_message("medge/s1/d1/findings/urgent", good, props).reason


def test_receiver_stores_rejections_and_acknowledges_them(tmp_path, broker):
    """After each commit the receiver tells the device, on the device's ack topic: committed ids (a
    duplicate again, since its earlier acknowledgement may have been lost) and refused ids with the reason."""
    from edge.link.topics import parse_ack

    db = tmp_path / "rx.sqlite3"
    url = parse_broker_url(broker.url)
    tap = Monitor(broker, "medge/s1/d1/ack")
    payloads: list[bytes] = []
    tap.c.on_message = lambda c, u, m: payloads.append(m.payload)
    with ReceiverThread(broker, db) as rx:
        c = new_client("raw-d1", url, broker.ca, broker.cert("d1"), broker.key("d1"))
        acks = []
        c.on_publish = lambda cl, u, mid, rc, p: acks.append(rc.value)
        c.connect(url.host, url.port)
        c.loop_start()
        good = findings("d1", 1)[0]
        c.publish("medge/s1/d1/findings/routine", b"garbage", qos=1)
        c.publish("medge/s1/d1/findings/routine",
                  json.dumps({"finding_id": "forged", "device_id": "d2", "priority": "routine"}), qos=1)
        wait_for(lambda: rx.rx.stats.rejected == 2, 10, "two rejections")
        for k in (3, 4):  # the same finding twice: stored once, acknowledged twice
            c.publish(f"medge/s1/d1/findings/{good.priority}", good.to_json(), qos=1)
            wait_for(lambda k=k: rx.rx.stats.received == k, 10, f"message {k}")
        wait_for(lambda: rx.rx.stats.duplicates == 1, 10, "the duplicate")
        c.disconnect()
        c.loop_stop()
    wait_for(lambda: sum(len(parse_ack(p)[0]) for p in payloads) == 2, 10, "acknowledgements")
    tap.close()
    con = sqlite3.connect(db)
    reasons = [r[0] for r in con.execute("SELECT reason FROM rejected")]
    assert len(reasons) == 2 and stored_ids(db) == [good.finding_id] and acks == [0, 0, 0, 0]
    parsed = [parse_ack(p) for p in payloads]
    assert [ids for ids, _ in parsed if ids] == [[good.finding_id], [good.finding_id]]
    refused = {k: v for _, r in parsed for k, v in r.items()}
    assert list(refused) == ["forged"] and "does not match the topic's device" in refused["forged"]
    assert all(json.loads(p)["by"] == rx.client_id for p in payloads)


def test_medge_sync_once_flushes_and_says_what_is_left(tmp_path, broker):
    import subprocess
    import sys

    profile = device_profile(tmp_path, broker, "d1")
    with Outbox.from_config(load_config(profile)) as ob:
        ob.put_many(findings("d1", 10))
    db = tmp_path / "rx.sqlite3"
    cmd = [sys.executable, "-m", "edge.cli", "sync", "--once", "-c", str(profile), "--timeout", "20"]
    # no receiver: the broker takes them, the hospital never acknowledges
    r = subprocess.run(cmd[:-1] + ["4"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "10 finding(s) not acknowledged by the hospital yet after 4 s" in r.stdout, r.stdout + r.stderr
    assert "at the broker" in r.stdout and "they stay in the outbox" in r.stdout
    with ReceiverThread(broker, db):
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "all 10 finding(s) acknowledged by the hospital" in r.stdout, r.stdout + r.stderr
        wait_for(lambda: len(stored_ids(db)) == 10, 10, "10 findings")
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "the outbox is empty" in r.stdout
    bad = subprocess.run([sys.executable, "-m", "edge.cli", "sync", "--once", "-c", str(tmp_path / "nope.yaml")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "nope.yaml: profile not found" in bad.stderr


def test_two_receivers_share_the_load_through_a_shared_subscription(tmp_path):
    broker = Broker(tmp_path, devices={"d1": "s1"}, receivers=("rx-a", "rx-b"))
    broker.start()
    cfg = load_config(device_profile(tmp_path, broker, "d1"))
    with Outbox.from_config(cfg) as ob:
        ob.put_many(findings("d1", 200))
    db = tmp_path / "rx.sqlite3"  # one hospital database, two receiver processes' worth of connections
    with broker, ReceiverThread(broker, db, "rx-a") as a, ReceiverThread(broker, db, "rx-b") as b:
        sync = SyncClient(cfg)
        sync.start()
        try:
            wait_for(lambda: len(stored_ids(db)) >= 200, 30, "200 findings")
        finally:
            sync.stop(10)
        got_a, got_b = a.rx.stats.received, b.rx.stats.received
    assert got_a > 0 and got_b > 0 and got_a + got_b == 200  # split, not duplicated
    assert sorted(stored_ids(db)) == sorted(f.finding_id for f in findings("d1", 200))
