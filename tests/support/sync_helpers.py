"""Helpers shared by the sync tests and benchmarks: a receiver thread, deterministic findings, DB reads."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edge.findings import Finding, ModelRef
from hospital.receiver import Receiver, ReceiverConfig
from tests.support.mqtt_broker import Broker

MODEL = ModelRef(name="m", version="1", sha256="0" * 64)
PRIOS = ("urgent", "routine", "low")


def findings(device: str, n: int, start: int = 0, prefix: str = "f") -> list[Finding]:
    """Deterministic ids (like findings from stored DICOM objects): re-producing them is idempotent."""
    return [Finding(device_id=device, modality="US", model=MODEL, label="lesion", confidence=0.9, needs_review=False,
                    priority=PRIOS[i % 3], finding_id=f"{prefix}-{device}-{i:06d}") for i in range(start, start + n)]


class ReceiverThread:
    """``medge receive`` in-process: a real Receiver on the real broker, stoppable and restartable."""

    def __init__(self, broker: Broker, db: Path, identity: str | None = None, group: str = "medge-receivers") -> None:
        # the broker makes the certificate identity the client id, so each receiver has its own certificate
        self.identity = identity or broker.receivers[0]
        self.broker, self.db, self.client_id, self.group = broker, db, self.identity, group
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.rx: Receiver | None = None

    def start(self, wait_ready: bool = True) -> ReceiverThread:
        b = self.broker
        self.stop_event = threading.Event()
        self.rx = Receiver(ReceiverConfig(b.url, str(self.db), group=self.group, ca_file=b.ca,
                                          cert_file=b.cert(self.identity), key_file=b.key(self.identity),
                                          client_id=self.client_id, backoff_min_s=0.05, backoff_max_s=0.5))
        self.thread = threading.Thread(target=self.rx.run, args=(self.stop_event,), daemon=True)
        self.thread.start()
        if wait_ready and not self.rx.ready.wait(15):
            raise TimeoutError("receiver did not subscribe within 15 s")
        return self

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread:
            self.thread.join(15)

    def __enter__(self) -> ReceiverThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stored_ids(db: Path) -> list[str]:
    if not Path(db).exists():
        return []
    con = sqlite3.connect(str(db), timeout=30)
    try:
        return [r[0] for r in con.execute("SELECT finding_id FROM findings")]
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def wait_for(cond: Callable[[], bool], timeout: float, what: str, step: float = 0.1) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Monitor:
    """A ``#`` subscriber with the monitoring identity, as a hospital's dashboard or a debugging tap would
    run one: it reconnects and re-subscribes after broker restarts. While it is subscribed, a broker
    that lost the receivers' shared subscription still has a match and answers PUBACK 0x00."""

    def __init__(self, broker: Broker, topic: str = "#", identity: str = "monitor") -> None:
        from edge.link.mqtt import new_client, parse_broker_url

        url = parse_broker_url(broker.url)
        self.topics: list[str] = []
        self.subscribed = threading.Event()
        self.c = new_client(f"{identity}-tap", url, broker.ca, broker.cert(identity), broker.key(identity))
        self.c.reconnect_delay_set(0.05, 0.3)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=0)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.c.on_message = lambda c, u, m: self.topics.append(m.topic)
        self.c.connect_async(url.host, url.port, keepalive=5)
        self.c.loop_start()
        if not self.subscribed.wait(15):
            raise TimeoutError("monitor did not subscribe")

    def findings_seen(self) -> int:
        return sum("/findings/" in t for t in list(self.topics))

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
