"""Helpers shared by the sync tests and benchmarks: a receiver thread, deterministic findings, DB reads."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edge.findings import Finding, ModelRef
from edge.receive import Receiver

from .mqtt_broker import Broker

MODEL = ModelRef(name="m", version="1", sha256="0" * 64)
PRIOS = ("urgent", "routine", "low")


def findings(device: str, n: int, start: int = 0, prefix: str = "f") -> list[Finding]:
    """Deterministic ids (like findings from stored DICOM objects): re-producing them is idempotent."""
    return [Finding(device_id=device, modality="US", model=MODEL, label="lesion", confidence=0.9, needs_review=False,
                    priority=PRIOS[i % 3], finding_id=f"{prefix}-{device}-{i:06d}") for i in range(start, start + n)]


class ReceiverThread:
    """``medge receive`` in-process: a real Receiver on the real broker, stoppable and restartable."""

    def __init__(self, broker: Broker, db: Path, client_id: str = "rx-1", group: str = "medge-receivers") -> None:
        self.broker, self.db, self.client_id, self.group = broker, db, client_id, group
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.rx: Receiver | None = None

    def start(self, wait_ready: bool = True) -> ReceiverThread:
        b = self.broker
        self.stop_event = threading.Event()
        self.rx = Receiver(b.url, str(self.db), group=self.group, ca_file=b.ca, cert_file=b.cert("receiver"),
                           key_file=b.key("receiver"), client_id=self.client_id, backoff_min_s=0.05, backoff_max_s=0.5)
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
