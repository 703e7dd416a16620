"""End-to-end sync throughput through a real mosquitto (mTLS, identity ACL) to a real `medge receive` process.

Two acknowledgement modes side by side in one run, same broker, same receiver, same disk:
  broker      a finding leaves the outbox on the broker's PUBACK (the old behaviour; loses findings when a
              broker accepts what no receiver gets, see docs/ARCHITECTURE.md)
  end-to-end  it leaves when the receiver, after its commit, acknowledges it on the device's ack topic
and two measurements for each:
  live    a producer thread puts findings (batches of 32) while SyncClient drains: findings/s from the
          first put until the device's outbox is empty (broker mode: all PUBACKed; end-to-end: all
          acknowledged by the hospital), and until the receiver has committed all;
  backlog N findings (default 100,000) already in the outbox when the link comes up (the ambulance
          returns to coverage): seconds from SyncClient.start() until the outbox is empty / all committed.
Live runs alternate A B B A to spread machine noise over both modes. The receiver runs as a separate
process (`python -m edge.cli receive`), the device side in this one. Exactly-once is checked at the end
of each phase (count == distinct ids == N).

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
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.results_io import write_results
from edge.config import load_config
from edge.link.outbox import Outbox
from edge.link.sync import SyncClient
from tests.support.mqtt_broker import Broker, device_profile
from tests.support.sync_helpers import findings

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


def outbox_empty_at(cfg, timeout: float) -> float:
    end = time.monotonic() + timeout
    with Outbox.from_config(cfg) as ob:
        while time.monotonic() < end:
            if ob.depth() == 0:
                return time.monotonic()
            time.sleep(0.1)
        raise TimeoutError(f"outbox still holds {ob.depth()} finding(s) after {timeout}s")


def live_phase(cfg, db: Path, n: int, prefix: str, already: int) -> dict:
    sync = SyncClient(cfg)
    sync.start()
    t0 = time.monotonic()

    def produce():
        with Outbox.from_config(cfg) as ob:
            for i in range(0, n, 32):
                ob.put_many(findings(cfg.device.id, min(32, n - i), start=i, prefix=prefix))

    th = threading.Thread(target=produce)
    th.start()
    th.join()
    t_put = time.monotonic()
    t_rx = wait_count(db, already + n, 600)
    t_dev = outbox_empty_at(cfg, 600)
    sync.stop(15)
    total, uniq = distinct(db)
    t_end = max(t_rx, t_dev)
    return {"findings": n, "seconds": round(t_end - t0, 2), "findings_per_s": round(n / (t_end - t0)),
            "receiver_committed_s": round(t_rx - t0, 2), "outbox_empty_s": round(t_dev - t0, 2),
            "producer_seconds": round(t_put - t0, 2), "receiver_rows": total - already, "distinct": uniq - already,
            "sync": dataclasses.asdict(sync.stats())}


def backlog_phase(cfg, db: Path, n: int, prefix: str, already: int) -> dict:
    t = time.monotonic()
    with Outbox.from_config(cfg) as ob:
        for i in range(0, n, 1000):
            ob.put_many(findings(cfg.device.id, min(1000, n - i), start=i, prefix=prefix))
        depth = ob.depth()
    fill_s = time.monotonic() - t
    sync = SyncClient(cfg)
    t0 = time.monotonic()
    sync.start()
    t_rx = wait_count(db, already + n, 900)
    t_dev = outbox_empty_at(cfg, 900)
    sync.stop(15)
    total, uniq = distinct(db)
    t_end = max(t_rx, t_dev)
    return {"findings": n, "outbox_depth_before": depth, "fill_seconds": round(fill_s, 1),
            "drain_seconds": round(t_end - t0, 1), "receiver_committed_s": round(t_rx - t0, 1),
            "outbox_empty_s": round(t_dev - t0, 1), "findings_per_s": round(n / (t_end - t0)),
            "receiver_rows": total - already, "distinct": uniq - already, "sync": dataclasses.asdict(sync.stats())}


MODES = ("broker", "end-to-end")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--live", type=int, default=20000)
    ap.add_argument("--backlog", type=int, default=100_000)
    ap.add_argument("--inflight", type=int, default=100)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    a = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    live: dict[str, list[dict]] = {m: [] for m in MODES}
    backlog: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        b = Broker(d, devices={"cart-07": "site-a"}, verbose=False)
        b.start()
        rx = None
        try:
            cfgs = {m: load_config(device_profile(d / m, b, "cart-07", inflight=a.inflight, heartbeat_s=5.0,
                                                  ack_timeout_s=30.0, ack_mode=m, data_dir=d / m / "data"))
                    for m in MODES}
            db = d / "hospital.sqlite3"
            rx = start_receiver(b, db, d / "rx.log")
            done = 0
            if a.live:
                for k, m in enumerate((MODES[0], MODES[1], MODES[1], MODES[0])):  # A B B A
                    live[m].append(live_phase(cfgs[m], db, a.live, f"live{k}-{m}", done))
                    done += a.live
            if a.backlog:
                for m in MODES:
                    backlog[m] = backlog_phase(cfgs[m], db, a.backlog, f"backlog-{m}", done)
                    done += a.backlog
        finally:
            if rx is not None:
                rx.send_signal(signal.SIGTERM)
                rx.wait(30)
            b.stop()
        rx_summary = [ln for ln in (d / "rx.log").read_text().splitlines() if ln.startswith("received ")]

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    out = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
           "broker": "mosquitto 2.0.11, TLS 1.3 client certificates, dynamic-security ACL, persistence on",
           "inflight": a.inflight, "live": live, "backlog": backlog, "receiver": rx_summary,
           "target_backlog_100k_s": 120}
    e2e = backlog.get("end-to-end")
    out["pass"] = bool(e2e and e2e["findings"] >= 100_000 and e2e["drain_seconds"] < 120 and e2e["distinct"] == e2e["findings"])
    lines = ["# Sync benchmark", "",
             f"{out['when']}, {out['cpus']} CPUs (shared with other work; noisy). Device (SyncClient + outbox, this "
             f"process) -> {out['broker']} -> `medge receive` (separate process, SQLite). Window {a.inflight}.",
             "A finding counts as done when the receiver has committed it *and* the device's outbox has let it go "
             "(broker mode: on PUBACK; end-to-end: on the receiver's acknowledgement after its commit).", "",
             "| phase | ack mode | findings | seconds | findings/s | receiver committed all (s) | outbox empty (s) | "
             "at receiver (distinct) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in MODES:
        for r in live[m]:
            lines.append(f"| live (produce while sending) | {m} | {r['findings']} | {r['seconds']} | {r['findings_per_s']} | "
                         f"{r['receiver_committed_s']} | {r['outbox_empty_s']} | {r['receiver_rows']} ({r['distinct']}) |")
    for m in MODES:
        r = backlog.get(m)
        if r:
            lines.append(f"| backlog drain (outbox full, link comes up) | {m} | {r['findings']} | {r['drain_seconds']} | "
                         f"{r['findings_per_s']} | {r['receiver_committed_s']} | {r['outbox_empty_s']} | "
                         f"{r['receiver_rows']} ({r['distinct']}) |")
    if live["broker"] and live["end-to-end"]:
        ratio = med(live["end-to-end"], "findings_per_s") / max(1, med(live["broker"], "findings_per_s"))
        lines += ["", f"Live: end-to-end acknowledgement runs at {ratio:.2f}x the PUBACK-only throughput "
                  "(median of two runs each, interleaved)."]
    if backlog.get("broker") and e2e:
        ratio = e2e["findings_per_s"] / max(1, backlog["broker"]["findings_per_s"])
        lines += [f"Backlog: {ratio:.2f}x. Backlog fill (put_many of 1000) took {e2e['fill_seconds']} s. "
                  f"Target: 100k backlog drained end-to-end in < 120 s: {'PASS' if out['pass'] else 'FAIL'}."]
    lines += ["", "Receiver: " + "; ".join(rx_summary), ""]
    md = "\n".join(lines)
    write_results("sync", out, md, folder=a.out, indent=1)
    print(md)


if __name__ == "__main__":
    main()
