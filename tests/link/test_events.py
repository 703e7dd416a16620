"""Device events end to end: outbox -> SyncClient -> real mosquitto (mTLS, per-device ACL) -> receiver -> its own table."""

from __future__ import annotations

import json
import sqlite3

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties

from edge.config import load_config
from edge.events import DeviceEvent
from edge.link.mqtt import new_client, parse_broker_url
from edge.link.outbox import Outbox
from edge.link.sync import SyncClient
from edge.link.topics import parse_ack
from hospital.receiver import parse_message
from hospital.store import SqliteStore
from tests.support.mqtt_broker import device_profile
from tests.support.sync_helpers import MODEL, Monitor, ReceiverThread, findings, stored_ids, wait_for

EVENT_ID = "7d4c1f0e-2b9a-5c3d-8e6f-0a1b2c3d4e5f"


def event(device: str = "d1", event_id: str = EVENT_ID, priority: str = "low") -> DeviceEvent:
    return DeviceEvent(device_id=device, kind="out_of_scope", reason="modality", detail="CR is not in the model's intended use (US)",
                       model=MODEL, source="s", modality="CR", priority=priority, study_id="P-1", event_id=event_id)


def event_ids(db) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return [r[0] for r in con.execute("SELECT event_id FROM events")]
    finally:
        con.close()


def test_a_finding_and_an_event_reach_their_own_tables_and_both_are_acknowledged(tmp_path, broker):
    cfg = load_config(device_profile(tmp_path, broker, "d1"))
    (finding,) = findings("d1", 1)
    with Outbox.from_config(cfg) as ob:
        assert ob.store([finding, event()]) == [True, True]
    tap = Monitor(broker, "medge/s1/d1/events/#")
    seen: list[mqtt.MQTTMessage] = []
    tap.c.on_message = lambda c, u, m: seen.append(m)
    db = tmp_path / "rx.sqlite3"
    with ReceiverThread(broker, db) as rx:
        sync = SyncClient(cfg)
        sync.start()
        try:
            with Outbox.from_config(cfg) as ob:
                wait_for(lambda: ob.depth() == 0, 30, "both acknowledged by the hospital")
                st = ob.status()
                assert st.delivered == 2 and st.events == 0 and st.hospital_rejected == 0
                (row,) = ob.list_events()
                assert row.state == "acknowledged" and row.event_id == EVENT_ID and not row.payload_held
                assert [r.state for r in ob.list_findings()] == ["acknowledged"]
        finally:
            assert sync.stop(10)
        assert rx.rx.stats.stored == 2 and rx.rx.stats.rejected == 0
    tap.close()
    assert stored_ids(db) == [finding.finding_id] and event_ids(db) == [EVENT_ID]  # each in its own table
    store = SqliteStore(db, create=False)
    try:
        (stored,) = store.events()
        assert store.count_events() == 1 and store.count() == 1
    finally:
        store.close()
    assert (stored.site, stored.device_id, stored.priority) == ("s1", "d1", "low")
    assert stored.event["schema"] == "medge.event/1" and stored.event["kind"] == "out_of_scope"
    assert "finding_id" not in stored.event
    (m,) = [m for m in seen if m.topic == "medge/s1/d1/events/low"]
    assert ("event_id", EVENT_ID) in m.properties.UserProperty and json.loads(m.payload)["event_id"] == EVENT_ID
    assert sync.stats().delivered == 2


def test_forged_duplicate_and_malformed_events(tmp_path, broker):
    """A device can only write under its own topic, so an event naming another device is a forgery: it is kept
    in the rejected table and the sender is told; a repeated event is stored once and acknowledged each time."""
    db = tmp_path / "rx.sqlite3"
    url = parse_broker_url(broker.url)
    tap = Monitor(broker, "medge/s1/d1/ack")
    acks: list[bytes] = []
    tap.c.on_message = lambda c, u, m: acks.append(m.payload)
    forged_id = "0e9d8c7b-6a5f-5e4d-9c3b-2a1f0e9d8c7b"
    with ReceiverThread(broker, db) as rx:
        c = new_client("raw-d1", url, broker.ca, broker.cert("d1"), broker.key("d1"))
        pubacks: list[int] = []
        c.on_publish = lambda cl, u, mid, rc, p: pubacks.append(rc.value)
        c.connect(url.host, url.port)
        c.loop_start()
        c.publish("medge/s1/d1/events/low", event(device="d2", event_id=forged_id).to_json(), qos=1)
        wait_for(lambda: rx.rx.stats.rejected == 1, 10, "the forgery rejected")
        for k in (2, 3):
            c.publish("medge/s1/d1/events/low", event().to_json(), qos=1)
            wait_for(lambda k=k: rx.rx.stats.received == k, 10, f"message {k}")
        wait_for(lambda: rx.rx.stats.duplicates == 1, 10, "the duplicate")
        c.disconnect()
        c.loop_stop()
    wait_for(lambda: sum(len(parse_ack(p)[0]) for p in acks) == 2 and any(parse_ack(p)[1] for p in acks), 10, "acks")
    tap.close()
    assert event_ids(db) == [EVENT_ID] and stored_ids(db) == [] and pubacks == [0, 0, 0]
    con = sqlite3.connect(db)
    (reason,) = [r[0] for r in con.execute("SELECT reason FROM rejected")]
    assert "device_id 'd2' does not match the topic's device 'd1'" in reason
    refused = {k: v for p in acks for k, v in parse_ack(p)[1].items()}
    assert list(refused) == [forged_id] and "does not match the topic's device" in refused[forged_id]


def test_receiver_checks_an_event_like_a_finding():
    good = event().to_json().encode()
    ok = parse_message("medge/s1/d1/events/low", good, None)
    assert ok.kind == "event" and ok.finding_id == EVENT_ID and ok.priority == "low"
    assert parse_message("medge/s1/d1/events/routine", good, None).reason.startswith("priority 'low' does not match")
    props = Properties(mqtt.PacketTypes.PUBLISH)
    props.UserProperty = ("event_id", "other")
    assert "event_id property 'other' differs from the payload's" in parse_message("medge/s1/d1/events/low", good, props).reason
    no_schema = json.dumps({k: v for k, v in json.loads(good).items() if k != "schema"}).encode()
    assert "schema None is not 'medge.event/1'" in parse_message("medge/s1/d1/events/low", no_schema, None).reason
    # neither can pass for the other: an event has no finding_id, a finding no event_id, and the schemas differ
    (f,) = findings("d1", 1)
    assert "payload is not a finding" in parse_message("medge/s1/d1/findings/low", good, None).reason
    assert "payload is not an event" in parse_message(f"medge/s1/d1/events/{f.priority}", f.to_json().encode(), None).reason
    both = json.dumps({**json.loads(good), "finding_id": EVENT_ID}).encode()
    assert "is not 'medge.finding/1'" in parse_message("medge/s1/d1/findings/low", both, None).reason
    assert "topic does not follow" in parse_message("medge/s1/d1/event/low", good, None).reason


def test_events_filter_follows_the_findings_filter():
    import pytest

    from edge.errors import ConfigError
    from hospital.receiver import Receiver, ReceiverConfig

    rx = Receiver(ReceiverConfig("mqtt://127.0.0.1:1", "x.sqlite3", topic="medge/site-a/+/findings/#"))
    assert rx.events_filter == "$share/medge-receivers/medge/site-a/+/events/#"
    with pytest.raises(ConfigError, match=r"--topic '#': expected <prefix>/<site>/<device>/findings/"):
        Receiver(ReceiverConfig("mqtt://127.0.0.1:1", "x.sqlite3", topic="#"))


def test_a_broker_acl_from_before_events_stops_events_not_findings(tmp_path, caplog):
    """Receivers updated before the broker: the events subscription is refused, findings keep flowing and the
    device holds its events (no matching subscribers) instead of losing them."""
    import logging

    from tests.support.mqtt_broker import Broker

    b = Broker(tmp_path, devices={"d1": "s1"}, verbose=False)
    dynsec = json.loads(b.dynsec_file.read_text())
    for role in dynsec["roles"]:
        role["acls"] = [a for a in role["acls"] if "/events/" not in a["topic"]]
    b.dynsec_file.write_text(json.dumps(dynsec))
    caplog.set_level(logging.ERROR, logger="medge.receive")
    cfg = load_config(device_profile(tmp_path, b, "d1"))
    (finding,) = findings("d1", 1)
    with Outbox.from_config(cfg) as ob:
        ob.store([finding, event()])
    db = tmp_path / "rx.sqlite3"
    with b, ReceiverThread(b, db):
        sync = SyncClient(cfg)
        sync.start()
        try:
            wait_for(lambda: stored_ids(db) == [finding.finding_id], 20, "the finding stored")
            wait_for(lambda: sync.stats().rejected + sync.stats().no_subscribers >= 1, 20, "the event held")
        finally:
            sync.stop(10)
    assert any("events/# refused" in r.message and "medge hospital broker-config" in r.message for r in caplog.records)
    assert event_ids(db) == []
    with Outbox.from_config(cfg) as ob:
        assert [it.finding_id for it in ob.list_pending()] == [EVENT_ID] and ob.status().events == 1
