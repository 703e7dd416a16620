"""Fault matrix: real device processes, a real mosquitto (mTLS + ACL), a real receiver.

Every scenario ends with each finding stored at the receiver exactly once and none lost (except
low-priority findings the quota policy dropped, which are counted by the outbox and must match).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge.config import load_config
from edge.link.outbox import Outbox
from tests.support import ROOT
from tests.support.mqtt_broker import Broker, device_profile
from tests.support.sync_helpers import Monitor, ReceiverThread, findings, stored_ids, wait_for

pytestmark = [pytest.mark.timeout(120), pytest.mark.quiet_broker]  # logs stay small under load


def start_device(profile: Path, count: int, rate: float = 0, log: Path | None = None, no_sync: bool = False):
    args = [sys.executable, "-m", "tests.support.sync_device", "--config", str(profile), "--count", str(count),
            "--rate", str(rate)] + (["--no-sync"] if no_sync else [])
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def finish(proc: subprocess.Popen, timeout: float = 60) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def assert_exactly_once(db: Path, expected: set[str]) -> None:
    ids = stored_ids(db)
    assert len(ids) == len(set(ids)), "duplicates at the receiver"
    missing, extra = expected - set(ids), set(ids) - expected
    assert not missing and not extra, f"missing {len(missing)} e.g. {sorted(missing)[:3]}, unexpected {len(extra)}"


def test_broker_stopped_and_restarted_mid_stream(tmp_path, broker):
    n = 300
    profile = device_profile(tmp_path, broker, "d1")
    db = tmp_path / "rx.sqlite3"
    with ReceiverThread(broker, db) as rx:
        dev = start_device(profile, n, rate=100, log=tmp_path / "dev.log")
        devlog = tmp_path / "dev.log"
        for k in range(3):  # each restart hits a connected, streaming device
            wait_for(lambda k=k: devlog.read_text().count("sync: connected to") > k, 20, f"device connection {k + 1}")
            time.sleep(0.3)
            broker.stop()
            time.sleep(0.7)
            broker.start()
        assert finish(dev) == 0, (tmp_path / "dev.log").read_text()[-3000:]
        wait_for(lambda: len(stored_ids(db)) >= n, 30, "all findings at the receiver")
        time.sleep(0.3)
    assert_exactly_once(db, {f.finding_id for f in findings("d1", n)})
    log = (tmp_path / "dev.log").read_text()
    assert log.count("sync: connected to") >= 3 and "drained" in log
    assert rx.rx.stats.connects >= 3


def test_device_sigkilled_mid_publish_and_restarted(tmp_path, broker):
    n = 300
    profile = device_profile(tmp_path, broker, "d1", inflight=16)
    db = tmp_path / "rx.sqlite3"
    with ReceiverThread(broker, db):
        for k in (1, 2):
            dev = start_device(profile, n, rate=150, log=tmp_path / "dev.log")
            wait_for(lambda k=k: len(stored_ids(db)) >= 60 * k, 30, "some findings delivered")
            os.kill(dev.pid, signal.SIGKILL)
            dev.wait()
        with Outbox.from_config(load_config(profile)) as ob:
            st = ob.status()
            assert st.depth > 0 or st.delivered < n  # killed mid-stream: work left in the outbox or not yet produced
        dev = start_device(profile, n, rate=0, log=tmp_path / "dev.log")
        assert finish(dev) == 0
        wait_for(lambda: len(stored_ids(db)) >= n, 30, "all findings at the receiver")
        time.sleep(0.3)
    assert_exactly_once(db, {f.finding_id for f in findings("d1", n)})
    with Outbox.from_config(load_config(profile)) as ob:
        assert ob.depth() == 0 and ob.status().delivered == n


def test_long_link_outage_backlog_and_receiver_offline(tmp_path, broker):
    n = 600
    profiles = [device_profile(tmp_path, broker, d) for d in ("d1", "d2")]
    db = tmp_path / "rx.sqlite3"
    with ReceiverThread(broker, db):  # create the receiver's persistent shared-subscription session
        pass
    broker.stop()  # the link is down while both devices produce
    devs = [start_device(p, n, rate=0, log=tmp_path / f"dev{i}.log") for i, p in enumerate(profiles)]
    for p in profiles:
        with Outbox.from_config(load_config(p)) as ob:
            wait_for(lambda ob=ob: ob.depth() == n, 30, "backlog in the outbox")
    time.sleep(1.0)  # several failed reconnects with backoff
    broker.start()  # link back, receiver still offline. mosquitto 2.0.11 does not restore shared
    # subscriptions from its persistence file, so it answers 0x10 "no matching subscribers": the devices
    # must hold their findings instead of counting them as delivered.
    wait_for(lambda: "no receiver subscribed" in (tmp_path / "dev0.log").read_text(), 20, "devices holding")
    with Outbox.from_config(load_config(profiles[0])) as ob:
        assert ob.status().delivered < n
    with ReceiverThread(broker, db):
        for d in devs:
            assert finish(d) == 0
        wait_for(lambda: len(stored_ids(db)) >= 2 * n, 40, "backlog at the receiver")
        time.sleep(0.3)
    expected = {f.finding_id for d in ("d1", "d2") for f in findings(d, n)}
    assert_exactly_once(db, expected)
    log = (tmp_path / "dev0.log").read_text()
    assert "connection refused" in log and "drained" in log


def test_quota_hit_during_outage_keeps_urgent_and_routine_and_counts_drops(tmp_path, broker):
    n = 150  # 50 of each priority; ~10 KB quota holds about 35 findings
    profile = device_profile(tmp_path, broker, "d1", outbox={"quota_mb": 0.01})
    db = tmp_path / "rx.sqlite3"
    assert finish(start_device(profile, n, no_sync=True, log=tmp_path / "fill.log")) == 0
    cfg = load_config(profile)
    with Outbox.from_config(cfg) as ob:
        st = ob.status()
        kept = {it.finding_id for it in ob.list_pending(10_000)}
    assert st.over_quota and st.dropped_low > 0 and st.pending["urgent"] == 50 and st.pending["routine"] == 50
    assert st.pending["low"] + st.dropped_low == 50
    with ReceiverThread(broker, db):
        dev = start_device(profile, n, rate=0, log=tmp_path / "dev.log")  # re-produces: dropped lows may return
        assert finish(dev) == 0
        with Outbox.from_config(cfg) as ob:
            st2 = ob.status()
        wait_for(lambda: len(stored_ids(db)) >= st2.delivered, 30, "all stored findings at the receiver")
        time.sleep(0.3)
    ids = set(stored_ids(db))
    assert kept <= ids  # nothing the outbox accepted was lost
    all_ids = {f.finding_id for f in findings("d1", n)}
    lost = all_ids - ids
    assert all(fid_priority(f) == "low" for f in lost)  # only low-priority ones, and each was counted
    assert len(lost) <= st2.dropped_low
    assert_exactly_once(db, all_ids - lost)


def fid_priority(fid: str) -> str:
    return ("urgent", "routine", "low")[int(fid.rsplit("-", 1)[1]) % 3]


def test_receiver_killed_mid_stream_redelivers_without_duplicates(tmp_path, broker):
    n = 300
    profile = device_profile(tmp_path, broker, "d1")
    db = tmp_path / "rx.sqlite3"
    cmd = [sys.executable, "-m", "edge.cli", "receive", "--broker", broker.url, "--db", str(db), "--ca-file",
           str(broker.ca), "--cert-file", str(broker.cert("receiver")), "--key-file", str(broker.key("receiver")),
           "--client-id", "rx-proc"]
    rxlog = open(tmp_path / "rx.log", "ab")  # noqa: SIM115
    rx = subprocess.Popen(cmd, cwd=ROOT, stdout=rxlog, stderr=subprocess.STDOUT)
    wait_for(lambda: "subscribing" in (tmp_path / "rx.log").read_text(), 20, "receiver subscribed")
    time.sleep(0.3)
    dev = start_device(profile, n, rate=150, log=tmp_path / "dev.log")
    wait_for(lambda: len(stored_ids(db)) >= 60, 30, "some findings stored")
    os.kill(rx.pid, signal.SIGKILL)
    rx.wait()
    # the broker keeps PUBACKing (it queues for the receiver's session), but without the hospital's
    # acknowledgement the device keeps every finding the receiver has not committed
    wait_for(lambda: "produced" in (tmp_path / "dev.log").read_text(), 30, "device produced everything")
    with Outbox.from_config(load_config(profile)) as ob:
        wait_for(lambda: ob.status().in_flight == 0 and ob.status().pending == {"urgent": 0, "routine": 0, "low": 0},
                 30, "everything at the broker")
        st = ob.status()
    assert st.at_broker > 0 and st.delivered + st.at_broker == n and st.delivered <= len(stored_ids(db))
    assert dev.poll() is None  # not drained: it waits for the hospital
    rx = subprocess.Popen(cmd + ["--max-seconds", "30"], cwd=ROOT, stdout=rxlog, stderr=subprocess.STDOUT)
    try:
        assert finish(dev) == 0
        assert "drained" in (tmp_path / "dev.log").read_text()
        wait_for(lambda: len(stored_ids(db)) >= n, 30, "all findings after the receiver restart")
    finally:
        rx.send_signal(signal.SIGTERM)
        rx.wait(15)
        rxlog.close()
    assert_exactly_once(db, {f.finding_id for f in findings("d1", n)})


def test_frozen_broker_ack_timeout_requeues_and_nothing_is_duplicated(tmp_path, broker):
    """SIGSTOP the broker: PUBACKs stop, the ack timeout re-queues, SIGCONT lets everything through once."""
    from edge.link.sync import SyncClient

    n = 200
    cfg = load_config(device_profile(tmp_path, broker, "d1", ack_timeout_s=0.7, keepalive_s=30, inflight=4))
    with Outbox.from_config(cfg) as ob:
        ob.put_many(findings("d1", n))
    db = tmp_path / "rx.sqlite3"
    with ReceiverThread(broker, db):
        broker.proc.send_signal(signal.SIGSTOP)
        sync = SyncClient(cfg)
        try:
            sync.start()
            time.sleep(0.5)  # the TCP connect completes in the kernel; CONNACK waits for the broker
            broker.proc.send_signal(signal.SIGCONT)
            wait_for(lambda: sync.stats().published > 0, 15, "first publishes", step=0.005)
            broker.proc.send_signal(signal.SIGSTOP)
            wait_for(lambda: sync.stats().ack_timeouts > 0, 15, "ack timeouts while the broker is frozen")
            time.sleep(1.0)
        finally:
            broker.proc.send_signal(signal.SIGCONT)
        try:
            wait_for(lambda: len(stored_ids(db)) >= n, 30, "all findings after the broker resumes")
            with Outbox.from_config(cfg) as ob:
                wait_for(lambda: ob.depth() == 0, 15, "outbox drained")
        finally:
            sync.stop(10)
    assert_exactly_once(db, {f.finding_id for f in findings("d1", n)})


def test_broker_restarts_with_a_monitoring_subscriber_and_receiver_down_lose_nothing(tmp_path, broker):
    """The loss the fault harness measured: a restarted mosquitto restores the receiver's session but not
    its ``$share`` subscription, a ``#`` monitor still matches, the broker answers PUBACK 0x00 and drops the
    findings for the receivers. Only the hospital's end-to-end acknowledgement can tell the device."""
    n = 300
    profile = device_profile(tmp_path, broker, "d1", hospital_ack_timeout_s=2.0, hospital_ack_max_s=4.0)
    db = tmp_path / "rx.sqlite3"
    monitor = Monitor(broker)
    rx = ReceiverThread(broker, db).start()
    dev = start_device(profile, n, rate=60, log=tmp_path / "dev.log")
    try:
        wait_for(lambda: len(stored_ids(db)) > 20, 20, "traffic")
        broker.restart()  # 1: receiver reconnects by itself
        wait_for(lambda: monitor.findings_seen() > 0 and rx.rx.ready.is_set(), 20, "monitor and receiver back")
        rx.stop()
        broker.restart()  # 2: with the receiver down across it
        stored_before = len(stored_ids(db))
        time.sleep(1.5)  # the device keeps publishing; the broker PUBACKs on the monitor's match
        rx = ReceiverThread(broker, db).start()
        broker.restart()  # 3: mid-feed again
        assert finish(dev, 90) == 0, (tmp_path / "dev.log").read_text()[-3000:]
        wait_for(lambda: len(stored_ids(db)) >= n, 30, "all findings at the receiver")
    finally:
        rx.stop()
        monitor.close()
    assert "drained" in (tmp_path / "dev.log").read_text()
    assert_exactly_once(db, {f.finding_id for f in findings("d1", n)})
    with Outbox.from_config(load_config(profile)) as ob:
        st = ob.status()
    assert st.depth == 0 and st.delivered == n
    # the receiver was down with the device feeding: nothing reached the database meanwhile, and the
    # monitor saw findings the whole time
    assert stored_before < n and monitor.findings_seen() > 0
    print(f"resent {st.resent} finding(s) after missing hospital acknowledgements; monitor saw "
          f"{monitor.findings_seen()} findings")


def test_identity_rules_keep_a_rogue_device_out_of_the_receivers_session_and_group(tmp_path, broker):
    """Any valid device certificate tries (1) the receiver's client id with a clean start, which would wipe
    the receiver's queued session, and (2) joining the receivers' shared group, which would take half the
    findings. The broker configuration (hospital.broker) makes both fail; no resend is needed."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from edge.link.mqtt import new_client, parse_broker_url
    from edge.link.sync import SyncClient

    cfg = load_config(device_profile(tmp_path, broker, "d1", hospital_ack_timeout_s=600.0, hospital_ack_max_s=600.0))
    db = tmp_path / "rx.sqlite3"
    with ReceiverThread(broker, db):  # the receiver's persistent session, with its subscription
        pass
    with Outbox.from_config(cfg) as ob:
        ob.put_many(findings("d1", 5))
    sync = SyncClient(cfg)
    sync.start()
    try:
        with Outbox.from_config(cfg) as ob:
            wait_for(lambda: ob.status().at_broker == 5, 15, "5 findings queued for the offline receiver")
        url = parse_broker_url(broker.url)
        results: dict[str, object] = {}

        def rogue(client_id: str, topic: str | None) -> None:
            c = new_client(client_id, url, broker.ca, broker.cert("d2"), broker.key("d2"))
            done = threading.Event()
            c.on_connect = lambda cl, u, f, rc, p: (cl.subscribe(topic, qos=1) if topic else done.set())
            c.on_subscribe = lambda cl, u, mid, rcs, p: (results.__setitem__(topic, [str(r) for r in rcs]), done.set())
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 0
            c.connect(url.host, url.port, clean_start=True, properties=props)
            c.loop_start()
            assert done.wait(10)
            c.disconnect()
            c.loop_stop()

        rogue(ReceiverThread(broker, db).client_id, None)  # takeover attempt with the receiver's client id
        rogue("sneaky", "$share/medge-receivers/medge/+/+/findings/#")
        rogue("sneaky2", "medge/#")
        assert results == {"$share/medge-receivers/medge/+/+/findings/#": ["Not authorized"],
                           "medge/#": ["Not authorized"]}
        with ReceiverThread(broker, db):
            wait_for(lambda: len(stored_ids(db)) == 5, 15, "the receiver's queued findings")
            with Outbox.from_config(cfg) as ob:
                ob.put_many(findings("d1", 45, start=5))
                wait_for(lambda: ob.depth() == 0, 20, "every finding acknowledged")
                assert ob.status().resent == 0  # nothing vanished: no resend was ever needed
    finally:
        sync.stop(10)
    assert_exactly_once(db, {f.finding_id for f in findings("d1", 50)})
    log = broker.log()
    assert " as d2 " in log and " as sneaky" not in log  # the broker used the identity, not the asked-for id


def test_daemon_fed_by_drop_and_c_store_with_poison_broker_restarts_monitor_and_receiver_kill(tmp_path):
    """The fault harness's setup, end to end with the real daemon: studies and poison objects by file drop and
    C-STORE, a `#` monitor, two broker restarts (one with the receiver down), a receiver SIGKILL. Every
    finding the daemon stored reaches the hospital exactly once, the poison is quarantined, and the
    daemon stops cleanly (exit 0)."""
    import json
    import sqlite3

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tests.support.bundles import write_bundle, write_public_key
    from tests.support.daemon import (
        drop_file,
        inbox_source,
        send_raw,
        start_listening,
        stop_daemon,
        store_source,
        wait_daemon,
        write_profile,
        write_studies,
    )
    from tests.support.dicom_mutations import make_poisons
    from tests.support.mqtt_broker import free_port

    key = Ed25519PrivateKey.generate()
    pub = write_public_key(tmp_path / "pub.pem", key)
    bundle = write_bundle(tmp_path / "bundle", key=key, postprocess={"min_area_px": 8}, std=0.6)
    broker = Broker(tmp_path, devices={"test-cart": "lab"}, verbose=False)
    broker.start()
    drop, port = tmp_path / "drop", free_port()
    sync = {"enabled": True, "broker": broker.url, "ca_file": str(broker.ca), "cert_file": str(broker.cert("test-cart")),
            "key_file": str(broker.key("test-cart")), "backoff_min_s": 0.1, "backoff_max_s": 1.0, "keepalive_s": 5,
            "heartbeat_s": 1.0, "hospital_ack_timeout_s": 2.0, "hospital_ack_max_s": 4.0}
    prof = write_profile(tmp_path, pub, bundle, [inbox_source(drop), store_source(port)], sync=sync)
    db = tmp_path / "hospital.sqlite3"
    rx_cmd = [sys.executable, "-m", "edge.cli", "receive", "--broker", broker.url, "--db", str(db), "--ca-file",
              str(broker.ca), "--cert-file", str(broker.cert("receiver")), "--key-file", str(broker.key("receiver"))]
    rxlog = open(tmp_path / "rx.log", "ab")  # noqa: SIM115 - closed below
    rx = subprocess.Popen(rx_cmd, cwd=ROOT, stdout=rxlog, stderr=subprocess.STDOUT)
    monitor = Monitor(broker)
    studies = tmp_path / "studies"
    write_studies(studies, 8)
    poisons = make_poisons(tmp_path / "poison")
    data = tmp_path / "data"
    proc = start_listening(prof, data)
    try:
        files = sorted(studies.glob("*.dcm"))
        for i, p in enumerate(files):
            if i % 2:
                assert send_raw(p, port) == 0x0000
            else:
                drop_file(p, drop)
            if i == 2:
                for q in poisons.values():
                    drop_file(q, drop)
                    assert send_raw(q, port) == 0x0000
                broker.restart()
            if i == 4:
                os.kill(rx.pid, signal.SIGKILL)
                rx.wait()
                broker.restart()  # with the receiver down; the monitor reconnects and keeps matching
                time.sleep(1.0)
                rx = subprocess.Popen(rx_cmd, cwd=ROOT, stdout=rxlog, stderr=subprocess.STDOUT)
        wait_daemon(lambda: not list(drop.glob("*.dcm")) and not list((data / "incoming" / "xray").glob("*.dcm")), 120, proc)

        def outbox() -> dict[str, int]:
            with sqlite3.connect(data / "outbox.sqlite3") as c:
                return dict(c.execute("SELECT finding_id, state FROM findings").fetchall())

        wait_daemon(lambda: outbox() and all(s == 2 for s in outbox().values()), 90, proc)  # all acknowledged
        assert proc.poll() is None
    finally:
        out = stop_daemon(proc)  # exit status 0 asserted inside
        rx.send_signal(signal.SIGTERM)
        rx.wait(15)
        rxlog.close()
        monitor.close()
        broker.stop()
    device_ids = set(outbox())
    assert_exactly_once(db, device_ids)
    reasons = [s.read_text().splitlines()[0] for s in (data / "quarantine").glob("*.reason.txt")]
    assert len(reasons) == 2 * len(poisons) and "Traceback" not in out
    assert len(list((data / "processed").rglob("*.dcm"))) == len(files)
    with sqlite3.connect(db) as c:
        assert {json.loads(p)["device_id"] for (p,) in c.execute("SELECT payload FROM findings")} == {"test-cart"}
    assert monitor.findings_seen() > 0
