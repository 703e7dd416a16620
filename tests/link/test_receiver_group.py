"""Many receivers in one shared-subscription group: one is SIGKILLed mid-batch; the others keep storing while it
is down, and when it comes back (systemd restarts it, same client id) the broker hands it what its session held:
nothing is lost and nothing is stored twice (on SQLite and on a real PostgreSQL).

mosquitto keeps a dead member's persistent session in the group and queues its share there until the session
expires; a receiver retired for good therefore delays its share by up to its session expiry, after which the
devices' resends (`sync.hospital_ack_timeout_s`) reach the others (docs/DEPLOYMENT.md)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from edge.config import load_config
from edge.link.outbox import Outbox
from edge.link.sync import SyncClient
from tests.support import ROOT
from tests.support.mqtt_broker import Broker, device_profile
from tests.support.sync_helpers import findings, wait_for

pytestmark = [pytest.mark.timeout(180)]


def _receiver(broker: Broker, db: str, name: str, log) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "edge.cli", "receive", "--broker", broker.url, "--db", db, "--ca-file", str(broker.ca),
           "--cert-file", str(broker.cert(name)), "--key-file", str(broker.key(name)), "--client-id", name]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def test_a_receiver_killed_mid_batch_loses_and_duplicates_nothing(tmp_path, store_db):
    devices = {"d1": "s1", "d2": "s1", "d3": "s2"}
    broker = Broker(tmp_path, devices=devices, receivers=("rx-a", "rx-b", "rx-c"), verbose=False)
    n = 300
    logs = {r: open(tmp_path / f"{r}.log", "ab") for r in ("rx-a", "rx-b", "rx-c")}  # noqa: SIM115
    cfgs = [load_config(device_profile(tmp_path, broker, d)) for d in devices]
    rx: dict[str, subprocess.Popen] = {}
    syncs: list[SyncClient] = []
    with broker:
        try:
            for r in logs:
                rx[r] = _receiver(broker, store_db.url, r, logs[r])
            for r in logs:
                wait_for(lambda r=r: "subscribing" in (tmp_path / f"{r}.log").read_text(), 30, f"{r} subscribed")
            time.sleep(0.5)
            syncs = [SyncClient(c) for c in cfgs]
            for s in syncs:
                s.start()
            for c in cfgs:  # the devices produce while the group consumes
                with Outbox.from_config(c) as ob:
                    ob.put_many(findings(c.device.id, n // 2))
            wait_for(lambda: len(store_db.ids()) >= n // 2, 60, "the group is storing")
            rx["rx-a"].send_signal(signal.SIGKILL)  # mid-batch
            rx["rx-a"].wait()
            before = len(store_db.ids())
            for c in cfgs:
                with Outbox.from_config(c) as ob:
                    ob.put_many(findings(c.device.id, n - n // 2, start=n // 2))
            wait_for(lambda: len(store_db.ids()) > before + 100, 60, "the survivors storing while rx-a is down")
            time.sleep(2.0)
            rx["rx-a"] = _receiver(broker, store_db.url, "rx-a", logs["rx-a"])  # systemd's Restart=always
            expected = {f.finding_id for c in cfgs for f in findings(c.device.id, n)}

            def drained() -> bool:
                for c in cfgs:
                    with Outbox.from_config(c) as ob:
                        if ob.depth():
                            return False
                return True

            wait_for(lambda: set(store_db.ids()) >= expected and drained(), 120,
                     "every finding stored and acknowledged")
        finally:
            for s in syncs:
                s.stop(10)
            for p in rx.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in rx.values():
                p.wait(30)
            for f in logs.values():
                f.close()
    ids = store_db.ids()
    assert len(ids) == len(set(ids)) == len(expected) and set(ids) == expected  # none lost, none twice
    stopped = [(tmp_path / f"{r}.log").read_text() for r in ("rx-b", "rx-c")]
    assert all("receiver stopped:" in s for s in stopped)
    assert all(int(s.split("stored ")[-1].split(",")[0]) > 0 for s in stopped)  # the group shared the load
