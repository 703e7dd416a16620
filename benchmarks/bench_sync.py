"""End-to-end sync throughput through a real mosquitto (mTLS + ACL) to a real `medge receive` process.

Two measurements in one run, same broker, same disk:
  live    a producer thread puts findings (batches of 32) while SyncClient drains: findings/s from the
          first put to the last finding committed at the receiver;
  backlog N findings (default 100,000) already in the outbox when the link comes up (the ambulance
          returns to coverage): seconds from SyncClient.start() until the receiver has committed all.
The receiver runs as a separate process (`python -m edge.cli receive`), the device side in this one.
Exactly-once is checked at the end of each phase (count == distinct ids == N).

    python -m benchmarks.bench_sync [--live 20000] [--backlog 100000] [--inflight 100]

Writes benchmarks/results/sync.json and sync.md (temp file + fsync + rename). Needs mosquitto.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.results_io import write_results
from edge.config import load_config
from edge.outbox import Outbox
from edge.sync import SyncClient
from tests.mqtt_broker import Broker, device_profile
from tests.sync_helpers import findings

ROOT = Path(__file__).resolve().parents[1]


def count(db: Path) -> int:
    try:
        con = sqlite3.connect(str(db), timeout=30)
        try:
            return int(con.execute("SELECT COUNT(*) FROM findings").fetchone()[0])
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0


def wait_count(db: Path, n: int, timeout: float) -> float:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if count(db) >= n:
            return time.monotonic()
        time.sleep(0.2)
    raise TimeoutError(f"receiver has {count(db)} of {n} after {timeout}s")


def distinct(db: Path) -> tuple[int, int]:
    con = sqlite3.connect(str(db))
    try:
        return con.execute("SELECT COUNT(*), COUNT(DISTINCT finding_id) FROM findings").fetchone()
    finally:
        con.close()


def start_receiver(b: Broker, db: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "edge.cli", "receive", "--broker", b.url, "--db", str(db), "--ca-file", str(b.ca),
           "--cert-file", str(b.cert("receiver")), "--key-file", str(b.key("receiver")), "--client-id", "rx-bench"]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
    end = time.monotonic() + 20
    while "subscribing" not in log.read_text():
        if time.monotonic() > end or p.poll() is not None:
            raise RuntimeError("receiver did not start: " + log.read_text()[-1000:])
        time.sleep(0.1)
    time.sleep(0.5)  # SUBACK
    return p


def live_phase(cfg, db: Path, n: int) -> dict:
    sync = SyncClient(cfg)
    sync.start()
    t0 = time.monotonic()

    def produce():
        with Outbox.from_config(cfg) as ob:
            for i in range(0, n, 32):
                ob.put_many(findings(cfg.device.id, min(32, n - i), start=i, prefix="live"))

    th = threading.Thread(target=produce)
    th.start()
    th.join()
    t_put = time.monotonic()
    t_end = wait_count(db, n, 600)
    sync.stop(15)
    total, uniq = distinct(db)
    return {"findings": n, "seconds": round(t_end - t0, 2), "findings_per_s": round(n / (t_end - t0)),
            "producer_seconds": round(t_put - t0, 2), "receiver_rows": total, "distinct": uniq,
            "sync": dataclasses.asdict(sync.stats())}


def backlog_phase(cfg, db: Path, n: int, already: int) -> dict:
    t = time.monotonic()
    with Outbox.from_config(cfg) as ob:
        for i in range(0, n, 1000):
            ob.put_many(findings(cfg.device.id, min(1000, n - i), start=i, prefix="backlog"))
        depth = ob.depth()
    fill_s = time.monotonic() - t
    sync = SyncClient(cfg)
    t0 = time.monotonic()
    sync.start()
    t_end = wait_count(db, already + n, 900)
    sync.stop(15)
    total, uniq = distinct(db)
    return {"findings": n, "outbox_depth_before": depth, "fill_seconds": round(fill_s, 1),
            "drain_seconds": round(t_end - t0, 1), "findings_per_s": round(n / (t_end - t0)),
            "receiver_rows": total - already, "distinct": uniq - already, "sync": dataclasses.asdict(sync.stats())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--live", type=int, default=20000)
    ap.add_argument("--backlog", type=int, default=100_000)
    ap.add_argument("--inflight", type=int, default=100)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        b = Broker(d, devices={"cart-07": "site-a"}, verbose=False)
        b.start()
        rx = None
        try:
            cfg = load_config(device_profile(d, b, "cart-07", inflight=a.inflight, heartbeat_s=5.0, ack_timeout_s=30.0))
            db = d / "hospital.sqlite3"
            rx = start_receiver(b, db, d / "rx.log")
            live = live_phase(cfg, db, a.live) if a.live else None
            backlog = backlog_phase(cfg, db, a.backlog, a.live) if a.backlog else None
        finally:
            if rx is not None:
                rx.send_signal(signal.SIGTERM)
                rx.wait(30)
            b.stop()
        rx_summary = [ln for ln in (d / "rx.log").read_text().splitlines() if ln.startswith("received ")]
    out = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
           "broker": "mosquitto 2.0.11, TLS 1.3 client certificates, ACL, persistence on", "inflight": a.inflight,
           "live": live, "backlog": backlog, "receiver": rx_summary,
           "target_backlog_100k_s": 120,
           "pass": bool(backlog and backlog["findings"] >= 100_000 and backlog["drain_seconds"] < 120
                        and backlog["distinct"] == backlog["findings"])}
    lines = ["# Sync benchmark", "",
             f"{out['when']}, {out['cpus']} CPUs (shared with other work; noisy). Device (SyncClient + outbox, this "
             f"process) -> {out['broker']} -> `medge receive` (separate process, SQLite). Window {a.inflight}.", "",
             "| phase | findings | seconds | findings/s | at receiver (distinct) |", "| --- | --- | --- | --- | --- |"]
    if live:
        lines.append(f"| live (produce while sending) | {live['findings']} | {live['seconds']} | {live['findings_per_s']} | "
                     f"{live['receiver_rows']} ({live['distinct']}) |")
    if backlog:
        lines.append(f"| backlog drain (outbox full, link comes up) | {backlog['findings']} | {backlog['drain_seconds']} | "
                     f"{backlog['findings_per_s']} | {backlog['receiver_rows']} ({backlog['distinct']}) |")
        lines += ["", f"Backlog fill (put_many of 1000) took {backlog['fill_seconds']} s. "
                  f"Target: 100k backlog drained in < 120 s: {'PASS' if out['pass'] else 'FAIL'}."]
    lines += ["", "Receiver: " + "; ".join(rx_summary), ""]
    md = "\n".join(lines)
    write_results("sync", out, md, folder=a.out, indent=1)
    print(md)


if __name__ == "__main__":
    main()
