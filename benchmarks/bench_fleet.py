"""A fleet on one machine: D devices (each a real `SyncClient` on its own outbox) -> mosquitto -> R receivers -> DB.

What a hospital network's receivers face, end to end and with the production code paths: devices are
`edge.link.sync.SyncClient`s on their own SQLite outboxes (threads, spread over ``--workers`` processes),
publishing over mutual TLS with one certificate each, through a real mosquitto (dynamic-security ACL, the
broker identity rules of deploy/mosquitto) into ``--receivers`` `medge receive` processes sharing one
subscription group, into one database (PostgreSQL by default: a throwaway cluster of Debian's
`postgresql` started here; or SQLite). Faults in the middle of the run: one receiver is SIGKILLed and
restarted (``--kill-at``), the database server is restarted (``--restart-db-at``, PostgreSQL only).

Reported (benchmarks/results/fleet.json and fleet.md):

* sustained findings/s: rows committed per second (the database's ``received_at``), median and minimum
  over the steady part of the run (first and last 10 % left out);
* time from outbox insert to database commit, p50/p99, as its upper bound: insert -> the device's outbox
  letting the finding go, which needs the commit *and* the acknowledgement's trip back through the broker;
* lost (produced but never stored) and duplicated (rows beyond one per finding id), and how often the broker
  redelivered (receivers' duplicates: harmless, de-duplicated by the primary key);
* how throughput grows with R (``--scale 1,2``: shorter runs at the same offered load per R).

    python -m benchmarks.bench_fleet [--devices 200] [--receivers 2] [--rate 10] [--seconds 300] [--db postgresql]
"""

from __future__ import annotations

import argparse
import json
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

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ device workers
def worker(profiles: list[Path], rate: float, seconds: float, out: Path, drain_s: float) -> int:
    """Devices of one process: a SyncClient each, and a producer thread each putting findings at ``rate`` per
    second (every 0.5 s a batch, as a device stores a frame's findings in one transaction)."""
    import logging

    from edge.config import load_config
    from edge.link.outbox import Outbox
    from edge.link.sync import SyncClient
    from tests.support.sync_helpers import findings

    logging.basicConfig(level="WARNING")
    cfgs = [load_config(p) for p in profiles]
    syncs = [SyncClient(c) for c in cfgs]
    for s in syncs:
        s.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    produced = [0] * len(cfgs)
    t0 = time.monotonic()

    def produce(i: int) -> None:
        """One device's findings: its own thread, as each device has its own disk and pipeline (one thread for
        all would serialize 200 devices' fsyncs and measure that instead)."""
        c, tick, carry, k = cfgs[i], 0.5, 0.0, 0
        time.sleep(tick * i / len(cfgs))  # devices do not all store in the same instant
        start = time.monotonic()
        with Outbox.from_config(c) as ob:  # its own connection, as the device's pipeline has
            while not stop.is_set() and time.monotonic() - t0 < seconds:
                carry += rate * tick
                n = int(carry)
                if n:
                    carry -= n
                    ob.put_many(findings(c.device.id, n, start=produced[i], prefix="fleet"))
                    produced[i] += n
                k += 1
                time.sleep(max(0.0, start + k * tick - time.monotonic()))

    threads = [threading.Thread(target=produce, args=(i,), daemon=True) for i in range(len(cfgs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    t_end = time.monotonic()
    boxes = [Outbox.from_config(c) for c in cfgs]
    while time.monotonic() - t_end < drain_s and any(ob.depth() for ob in boxes):
        time.sleep(0.5)
    pending = sum(ob.depth() for ob in boxes)
    for s in syncs:
        s.stop(10)
    lat, resent = [], 0
    for c, ob in zip(cfgs, boxes, strict=True):
        ob.close()
        con = sqlite3.connect(str(c.outbox_path))
        lat += [d - a for a, d in con.execute("SELECT created_at, delivered_at FROM findings WHERE delivered_at IS NOT NULL")]
        resent += int((con.execute("SELECT value FROM counters WHERE name='resent'").fetchone() or [0])[0])
        con.close()
    out.write_text(json.dumps({"produced": sum(produced), "pending": pending, "ack_latency_s": lat, "resent": resent,
                               "cpu_s": time.process_time(),
                               "produce_seconds": t_end - t0, "drain_seconds": time.monotonic() - t_end}))
    return 0


# ------------------------------------------------------------------------------------------ the database
class Database:
    """The receivers' store: a throwaway PostgreSQL cluster (tests.support.postgres) or a SQLite file."""

    def __init__(self, kind: str, folder: Path) -> None:
        self.kind, self.folder, self.pg = kind, folder, None
        if kind == "postgresql":
            from tests.support.postgres import PostgresServer, postgres_bin

            bindir = postgres_bin()
            if bindir is None:
                raise SystemExit("PostgreSQL is not installed (apt-get install -y postgresql), or use --db sqlite")
            self.pg = PostgresServer(bindir)
            self.pg.start()
            self.url = self.pg.url(self.pg.create_database())
        else:
            self.url = str(folder / "hospital.sqlite3")

    def cpu_seconds(self) -> float:
        """The PostgreSQL server's processes (postmaster and its children); 0 for SQLite (in the receivers)."""
        if self.pg is None or self.pg.proc is None:
            return 0.0
        pid = self.pg.proc.pid
        kids = [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        return sum(cpu_seconds(p) for p in [pid, *kids])

    def restart(self) -> float:
        t = time.monotonic()
        if self.pg is not None:
            self.pg.restart("fast")
        return time.monotonic() - t

    def rows(self) -> list[tuple[str, str]]:
        """(finding_id, received_at ISO) of every stored finding."""
        if self.pg is not None:
            import psycopg

            with psycopg.connect(self.url) as con:
                return [(r[0], r[1].isoformat()) for r in con.execute("SELECT finding_id, received_at FROM medge_findings")]
        con = sqlite3.connect(self.url)
        try:
            return list(con.execute("SELECT finding_id, received_at FROM findings"))
        finally:
            con.close()

    def close(self) -> None:
        if self.pg is not None:
            self.pg.close()


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# ------------------------------------------------------------------------------------------ one run
def start_receiver(broker, db_url: str, name: str, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "edge.cli", "receive", "--broker", broker.url, "--db", db_url, "--ca-file",
           str(broker.ca), "--cert-file", str(broker.cert(name)), "--key-file", str(broker.key(name)), "--client-id", name]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (/proc/<pid>/stat), 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def wait_log(log: Path, text: str, timeout: float, already: int = 0) -> None:
    end = time.monotonic() + timeout
    while log.read_text(errors="replace").count(text) <= already:
        if time.monotonic() > end:
            raise RuntimeError(f"{log.name}: no {text!r} within {timeout}s: {log.read_text(errors='replace')[-800:]}")
        time.sleep(0.1)


def run(a: argparse.Namespace, receivers: int, seconds: float, faults: bool, tmp: Path) -> dict:
    from tests.support.mqtt_broker import Broker, device_profile

    devices = {f"dev-{i:03d}": f"site-{i % 10:02d}" for i in range(a.devices)}
    names = tuple(f"rx-{i}" for i in range(receivers))
    broker = Broker(tmp, devices, receivers=names, verbose=False, max_queued=10_000_000)
    broker.start()
    db = Database(a.db, tmp)
    logs = {n: tmp / f"{n}.log" for n in names}
    rx = {}
    events: list[dict] = []
    try:
        for n in names:
            rx[n] = start_receiver(broker, db.url, n, logs[n])
        for n in names:
            wait_log(logs[n], "subscribing", 30)
        time.sleep(1.0)
        profiles = [device_profile(tmp / "devices", broker, d, inflight=64, heartbeat_s=30.0) for d in devices]
        per = [profiles[i::a.workers] for i in range(a.workers)]
        outs = [tmp / f"worker-{i}.json" for i in range(a.workers)]
        t0 = time.time()
        workers = [subprocess.Popen([sys.executable, "-m", "benchmarks.bench_fleet", "--worker", ",".join(map(str, ps)),
                                     "--rate", str(a.rate), "--seconds", str(seconds), "--out", str(o)], cwd=ROOT)
                   for ps, o in zip(per, outs, strict=True)]
        if faults:
            time.sleep(seconds * a.kill_at)
            victim = names[0]
            rx[victim].send_signal(signal.SIGKILL)
            rx[victim].wait()
            events.append({"at_s": round(time.time() - t0, 1), "what": f"SIGKILL receiver {victim} mid-batch"})
            time.sleep(3.0)
            done = logs[victim].read_text(errors="replace").count("subscribing")
            rx[victim] = start_receiver(broker, db.url, victim, logs[victim])
            wait_log(logs[victim], "subscribing", 30, already=done)
            events.append({"at_s": round(time.time() - t0, 1), "what": f"receiver {victim} back (same client id)"})
            if db.pg is not None:
                time.sleep(max(0.0, t0 + seconds * a.restart_db_at - time.time()))
                took = db.restart()
                events.append({"at_s": round(time.time() - t0, 1), "what": f"PostgreSQL restarted ({took:.1f} s)"})
        for w in workers:
            w.wait(seconds + 400)
        t_end = time.time()
        time.sleep(2.0)
        cpu = {"receivers": round(sum(cpu_seconds(p.pid) for p in rx.values()), 1),
               "broker": round(cpu_seconds(broker.proc.pid), 1) if broker.proc else 0.0,
               "database": round(db.cpu_seconds(), 1)}
        stats = [json.loads(o.read_text()) for o in outs]
        cpu["devices"] = round(sum(s["cpu_s"] for s in stats), 1)
        rows = db.rows()
    finally:
        for p in rx.values():
            p.send_signal(signal.SIGTERM)
        for p in rx.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        broker.stop()
        db.close()
    produced = sum(s["produced"] for s in stats)
    ids = [r[0] for r in rows]
    distinct = len(set(ids))
    t_rx = sorted(_epoch(r[1]) for r in rows)
    per_second: dict[int, int] = {}
    for t in t_rx:
        per_second[int(t - t0)] = per_second.get(int(t - t0), 0) + 1
    lo, hi = int(seconds * 0.1), int(seconds * 0.9)
    steady = [per_second.get(s, 0) for s in range(lo, hi)]
    ack = sorted(x for s in stats for x in s["ack_latency_s"])
    dup_redelivered = 0
    for n in names:
        for line in logs[n].read_text(errors="replace").splitlines():
            if "receiver stopped:" in line and "duplicates " in line:
                dup_redelivered += int(line.split("duplicates ")[1].split(",")[0])

    def pct(xs: list[float], q: float) -> float | None:
        return round(xs[min(len(xs) - 1, int(q * len(xs)))], 3) if xs else None

    return {"devices": a.devices, "receivers": receivers, "store": a.db, "offered_per_s": a.devices * a.rate,
            "seconds": seconds, "faults": events, "produced": produced, "stored_rows": len(ids), "stored_distinct": distinct,
            "lost": produced - distinct, "duplicated_rows": len(ids) - distinct,
            "pending_on_devices": sum(s["pending"] for s in stats), "broker_redeliveries_deduplicated": dup_redelivered,
            "device_resends": sum(s["resent"] for s in stats),
            "sustained_per_s_median": statistics.median(steady) if steady else 0,
            "sustained_per_s_min": min(steady) if steady else 0,
            "overall_per_s": round(distinct / max(1e-9, (t_rx[-1] - t0) if t_rx else 1), 1),
            "insert_to_ack_s": {"p50": pct(ack, 0.5), "p99": pct(ack, 0.99), "max": pct(ack, 1.0)},
            "drain_after_stop_s": round(max(s["drain_seconds"] for s in stats), 1), "cpu_seconds": cpu,
            "wall_s": round(t_end - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--receivers", type=int, default=2)
    ap.add_argument("--rate", type=float, default=10.0, help="findings per second per device")
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--workers", type=int, default=4, help="device processes")
    ap.add_argument("--db", default="postgresql", choices=("postgresql", "sqlite"))
    ap.add_argument("--kill-at", type=float, default=0.35)
    ap.add_argument("--restart-db-at", type=float, default=0.65)
    ap.add_argument("--scale", default="1,2", help="receiver counts for the scaling runs ('' for none)")
    ap.add_argument("--scale-seconds", type=float, default=60.0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker is not None:
        prof = os.environ.get("MEDGE_FLEET_PROFILE")  # where a worker's cProfile goes (finding the device-side cost)
        if prof:
            import cProfile

            cProfile.runctx("worker([Path(p) for p in a.worker.split(',')], a.rate, a.seconds, a.out, drain_s=180.0)",
                            globals(), {"a": a, "Path": Path, "worker": worker}, f"{prof}.{os.getpid()}")
            raise SystemExit(0)
        raise SystemExit(worker([Path(p) for p in a.worker.split(",")], a.rate, a.seconds, a.out, drain_s=180.0))
    from benchmarks.results_io import write_results
    from export.report import machine

    results = {"benchmark": "fleet", "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": {**machine(), "cpus": os.cpu_count()}, "workers": a.workers, "runs": []}
    with tempfile.TemporaryDirectory(prefix="medge-fleet-") as tmp:
        results["runs"].append({"kind": "main", **run(a, a.receivers, a.seconds, True, Path(tmp) / "main")})
        for r in [int(x) for x in a.scale.split(",") if x]:
            results["runs"].append({"kind": "scaling", **run(a, r, a.scale_seconds, False, Path(tmp) / f"scale-{r}")})
    write_results("fleet", results, markdown(results), folder=a.out)
    print(markdown(results))


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = ["# Fleet benchmark", "",
             f"{r['time']}; {m['cpus']} CPUs ({m['cpu']}, shared and noisy); Python {m['python']}. Devices are real "
             f"SyncClients on their own SQLite outboxes (threads in {r.get('workers', 4)} processes), mutual TLS with one "
             "certificate each, "
             "mosquitto with the dynamic-security ACL, `medge receive` processes in one shared-subscription group. "
             "`python -m benchmarks.bench_fleet`.", "",
             "| run | devices | receivers | store | offered /s | seconds | sustained /s (median, min) | insert->ack p50 / p99 s "
             "| produced | stored | lost | duplicated | redelivered (deduplicated) | faults |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for x in r["runs"]:
        faults = "; ".join(f"{e['what']} at {e['at_s']} s" for e in x["faults"]) or "-"
        la = x["insert_to_ack_s"]
        lines.append(f"| {x['kind']} | {x['devices']} | {x['receivers']} | {x['store']} | {x['offered_per_s']:.0f} | "
                     f"{x['seconds']:.0f} | {x['sustained_per_s_median']:.0f}, {x['sustained_per_s_min']:.0f} | "
                     f"{la['p50']} / {la['p99']} | {x['produced']} | {x['stored_distinct']} | {x['lost']} | "
                     f"{x['duplicated_rows']} | {x['broker_redeliveries_deduplicated']} | {faults} |")
    lines += ["", "insert->ack is the time from the device's outbox insert until the hospital's acknowledgement let the "
              "finding go: an upper bound of insert->commit (the commit comes first, then the acknowledgement's trip "
              "back through the broker).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
