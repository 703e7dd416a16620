"""A device process for the fault matrix: produces findings into its outbox while SyncClient drains it.

``python -m tests.support.sync_device --config P --count N --rate R`` puts N findings with deterministic ids
(so a restarted process re-produces the same ids and the outbox ignores the ones it already has),
prints progress lines, and exits 0 once the outbox is empty. Tests SIGKILL it mid-publish.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time

from edge.config import load_config
from edge.link.outbox import Outbox
from edge.link.sync import SyncClient
from tests.support.sync_helpers import findings


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--rate", type=float, default=0, help="findings per second (0: all at once)")
    ap.add_argument("--no-sync", action="store_true", help="only fill the outbox")
    ap.add_argument("--max-seconds", type=float, default=60)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_config(a.config)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sync = None if a.no_sync else SyncClient(cfg)
    if sync:
        sync.start()
    end = time.monotonic() + a.max_seconds
    with Outbox.from_config(cfg) as ob:
        batch = 10
        for i in range(0, a.count, batch):
            new = ob.put_many(findings(cfg.device.id, min(batch, a.count - i), start=i))
            print(f"put {i + batch} new {new}", flush=True)
            if a.rate:
                time.sleep(batch / a.rate)
        print("produced", flush=True)
        while sync and not stop.is_set() and time.monotonic() < end:
            if ob.depth() == 0:
                print("drained", flush=True)
                break
            time.sleep(0.1)
    if sync:
        sync.stop(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
