"""Live pipeline metrics: latency percentiles, throughput and drops while the daemon runs.

An operator debugging a slow cart needs the numbers *now*, not in a summary at exit, so `Metrics` keeps
rolling windows (recent latencies, recent frame times), logs one line every ``interval`` seconds, writes
the snapshot to a JSON file atomically (temp + fsync + rename, so a reader never sees half a file) and
can serve it on a tiny HTTP endpoint bound to 127.0.0.1 only. `snapshot()` is also what the sync
heartbeat sends upstream.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from edge.durable_files import write_atomic


def percentiles(values: Any, qs: tuple[float, ...] = (50, 95, 99)) -> dict[str, float | None]:
    a = np.asarray(list(values), np.float64)
    if a.size == 0:
        return {f"p{int(q)}": None for q in qs}
    return {f"p{int(q)}": round(float(np.percentile(a, q)), 2) for q in qs}


@dataclass
class StreamStats:
    """Counters and rolling windows for one source's pipeline."""

    window: int = 2048
    fps_window_s: float = 10.0
    frames_in: int = 0  # frames the source produced
    frames_done: int = 0  # frames that went through the whole pipeline
    dropped: int = 0  # live frames replaced by a newer one before inference
    errors: int = 0  # frames that failed (bad pixels, backend error)
    findings: int = 0  # findings written to the outbox
    out_of_scope: dict[str, int] = field(default_factory=dict)  # frames not read, per intended-use reason
    out_of_scope_frames: int = 0  # frames not read (a frame can break several rules)
    duplicates: int = 0  # findings the outbox already had (re-processing after a restart)
    latencies_ms: deque = field(default_factory=deque)
    stage_ms: dict[str, deque] = field(default_factory=dict)
    done_times: deque = field(default_factory=deque)

    def add_latency(self, ms: float, now: float) -> None:
        self.latencies_ms.append(ms)
        if len(self.latencies_ms) > self.window:
            self.latencies_ms.popleft()
        self.done_times.append(now)
        while self.done_times and now - self.done_times[0] > self.fps_window_s:
            self.done_times.popleft()

    def add_stage(self, stage: str, ms: float) -> None:
        d = self.stage_ms.setdefault(stage, deque())
        d.append(ms)
        if len(d) > self.window:
            d.popleft()

    def fps(self, now: float) -> float:
        t = self.done_times
        while t and now - t[0] > self.fps_window_s:
            t.popleft()
        if len(t) < 2:
            return 0.0
        span = max(now - t[0], t[-1] - t[0])
        return round((len(t) - 1) / span, 2) if span > 0 else 0.0

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "frames_in": self.frames_in,
            "frames_done": self.frames_done,
            "dropped": self.dropped,
            "errors": self.errors,
            "findings": self.findings,
            "duplicates": self.duplicates,
            "out_of_scope": dict(self.out_of_scope),
            "out_of_scope_frames": self.out_of_scope_frames,
            "fps": self.fps(now),
            "latency_ms": percentiles(self.latencies_ms),
            "stage_ms": {k: percentiles(v, (50, 95)) for k, v in self.stage_ms.items()},
        }


class Metrics:
    """Thread-safe registry of per-source `StreamStats` plus the periodic reporters."""

    def __init__(self, interval_s: float = 10.0, file: Path | None = None, port: int | None = None,
                 logger: logging.Logger | None = None, extra: dict[str, Any] | None = None) -> None:
        self.interval_s = interval_s
        self.file = Path(file) if file else None
        self.port = port
        self.log = logger or logging.getLogger("medge.metrics")
        self.extra = dict(extra or {})
        self._lock = threading.Lock()
        self._streams: dict[str, StreamStats] = {}
        self._inputs: dict[str, Callable[[], dict[str, Any]]] = {}
        self._drift: dict[str, Callable[[], dict[str, Any]]] = {}
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._http: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None

    def attach_source(self, name: str, counters: Callable[[], dict[str, Any]]) -> None:
        """A source's own counters (received, quarantined, errors...) to report beside its pipeline's."""
        with self._lock:
            self._inputs[name] = counters

    def attach_drift(self, name: str, snapshot: Callable[[], dict[str, Any]]) -> None:
        """A source's drift monitor, reported in the heartbeat and the metrics file (without the histograms)."""
        with self._lock:
            self._drift[name] = snapshot

    # ----------------------------------------------------------------------------- recording (hot path)
    def stream(self, name: str) -> StreamStats:
        with self._lock:
            return self._streams.setdefault(name, StreamStats())

    def frame_in(self, name: str) -> None:
        s = self.stream(name)
        with self._lock:
            s.frames_in += 1

    def dropped(self, name: str, n: int = 1) -> None:
        s = self.stream(name)
        with self._lock:
            s.dropped += n

    def error(self, name: str) -> None:
        s = self.stream(name)
        with self._lock:
            s.errors += 1

    def frame_done(self, name: str, latency_ms: float, stages: dict[str, float] | None = None) -> None:
        s = self.stream(name)
        now = time.monotonic()
        with self._lock:
            s.frames_done += 1
            s.add_latency(latency_ms, now)
            for k, v in (stages or {}).items():
                s.add_stage(k, v)

    def out_of_scope(self, name: str, reasons: list[str]) -> None:
        """One frame not read, and every intended-use rule it broke."""
        s = self.stream(name)
        with self._lock:
            s.out_of_scope_frames += 1
            for reason in reasons:
                s.out_of_scope[reason] = s.out_of_scope.get(reason, 0) + 1

    def finding(self, name: str, new: bool) -> None:
        s = self.stream(name)
        with self._lock:
            if new:
                s.findings += 1
            else:
                s.duplicates += 1

    # --------------------------------------------------------------------------------------- reading
    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            streams = {k: v.to_dict(now) for k, v in self._streams.items()}
            all_lat = [x for v in self._streams.values() for x in v.latencies_ms]
            inputs = dict(self._inputs)
            drift = dict(self._drift)
        for name, counters in inputs.items():
            streams.setdefault(name, StreamStats().to_dict(now))["inputs"] = counters()
        for name, snap in drift.items():
            d = snap()
            streams.setdefault(name, StreamStats().to_dict(now))["drift"] = {
                k: v for k, v in d.items() if k not in ("reference", "recent")}
        total = {
            k: sum(s[k] for s in streams.values())
            for k in ("frames_in", "frames_done", "dropped", "errors", "findings", "duplicates")
        }
        total["quarantined"] = sum(int(s.get("inputs", {}).get("quarantined", 0)) for s in streams.values())
        total["out_of_scope"] = sum(s["out_of_scope_frames"] for s in streams.values())
        total["drifting"] = sorted(n for n, s in streams.items() if s.get("drift", {}).get("state") == "drift")
        total["fps"] = round(sum(s["fps"] for s in streams.values()), 2)
        total["latency_ms"] = percentiles(all_lat)
        return {"time": time.time(), "uptime_s": round(now - self._t0, 1), **self.extra, "total": total,
                "sources": streams}

    def summary_line(self, snap: dict[str, Any] | None = None) -> str:
        s = snap or self.snapshot()
        t = s["total"]
        lat = t["latency_ms"]

        def f(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"

        return (f"frames {t['frames_done']}/{t['frames_in']} fps {t['fps']:.1f} latency p50/p95/p99 "
                f"{f(lat['p50'])}/{f(lat['p95'])}/{f(lat['p99'])} ms dropped {t['dropped']} errors {t['errors']} "
                f"findings {t['findings']} (+{t['duplicates']} dup) quarantined {t.get('quarantined', 0)}")

    def write_file(self) -> None:
        if self.file is None:
            return
        write_json_atomic(self.file, self.snapshot())

    # ------------------------------------------------------------------------------------- reporters
    def start(self) -> None:
        if self.port is not None:  # 0 = any free port (tests)
            self._start_http()
        self._thread = threading.Thread(target=self._loop, name="metrics", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.report()

    def report(self) -> None:
        snap = self.snapshot()
        self.log.info("metrics: %s", self.summary_line(snap))
        if self.file is not None:
            try:
                write_json_atomic(self.file, snap)
            except OSError as e:
                self.log.warning("metrics file %s: cannot write (%s)", self.file, e.strerror)

    def _start_http(self) -> None:
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                if self.path.rstrip("/") not in ("", "/metrics"):
                    self.send_error(404, "try /metrics")
                    return
                body = json.dumps(metrics.snapshot()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", int(self.port)), Handler)
        self._http.daemon_threads = True
        self._http_thread = threading.Thread(target=self._http.serve_forever, name="metrics-http", daemon=True)
        self._http_thread.start()

    @property
    def http_port(self) -> int | None:
        return self._http.server_address[1] if self._http else None

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self._http:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.write_file()


def write_json_atomic(path: Path, data: Any) -> None:
    """Readers (a monitoring agent, `medge doctor`) see the old snapshot or the new one, never half."""
    write_atomic(Path(path), json.dumps(data, indent=1, sort_keys=True).encode())
