"""The review station's test fixtures: a receiver database holding real findings, users, a real server.

Findings are `edge.findings.Finding` documents with OpenCV-made overlay PNGs, stored through the receiver's
own store API (`open_store(...).add([Received...], [])`), exactly as `medge receive` stores them, in a
`TestDB` of either kind (the ``store_db`` fixture, or `sqlite_db` for the tests whose subject is not the store).
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np

from edge.findings import Finding, ModelRef, iso_utc
from hospital.store import Received, open_store
from tests.support import ROOT
from tests.support.mqtt_broker import free_port, wait_port
from tests.support.postgres import TestDB

PASSWORDS = {"admin": "admin-password-1", "rita": "reviewer-password-1"}
CXR = ModelRef("cxr-opacity", "1.0.0", "c" * 64, "int8")
US = ModelRef("us-free-fluid", "1.0.0", "f" * 64, "int8")


def overlay_png(w: int = 160, h: int = 120) -> str:
    """A small picture like the devices send: grey image, a coloured contour, black outside the region."""
    img = np.zeros((h, w, 3), np.uint8)
    cv2.circle(img, (w // 2, h // 2), min(w, h) // 2 - 4, (90, 90, 90), -1)
    cv2.ellipse(img, (w // 2 + 10, h // 2), (24, 14), 20, 0, 360, (0, 200, 255), 2)
    return base64.b64encode(cv2.imencode(".png", img)[1].tobytes()).decode("ascii")


def finding(fid: str, *, model: ModelRef = CXR, label: str = "focal_opacity", priority: str = "routine",
            needs_review: bool = False, acquired: datetime, device: str = "xray-1", modality: str = "CR",
            confidence: float = 0.9, overlay: bool = True) -> Finding:
    return Finding(device_id=device, modality=modality, model=model, label=label, confidence=confidence,
                   needs_review=needs_review, priority=priority, acquired_at=iso_utc(acquired.timestamp()),
                   created_at=iso_utc(acquired.timestamp() + 2), source="test",
                   measurements={"probability": confidence, "area_mm2": 312.5},
                   review_reasons=["uncertain: confidence 0.55 inside the review band 0.4-0.6"] if needs_review else [],
                   overlay_png_b64=overlay_png() if overlay else None, finding_id=fid)


def store(db: Path | str, findings: list[tuple[str, Finding]]) -> None:
    """(site, finding) pairs into the receiver's database, one commit, the receiver's way."""
    s = open_store(str(db))
    try:
        s.add([Received(f.finding_id, site, f.device_id, f.priority, f"medge/{site}/{f.device_id}/findings/{f.priority}",
                        iso_utc(), f.to_json()) for site, f in findings], [])
    finally:
        s.close()


NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)

# the worklist's expected order: urgent first, then needs_review, then oldest first
WORKLIST_ORDER = ["urgent-review", "urgent-plain", "routine-review", "routine-old", "routine-new", "low-one"]


def worklist_findings(now: datetime = NOW) -> list[tuple[str, Finding]]:
    h = timedelta(hours=1)
    return [
        ("site-a", finding("routine-new", acquired=now - 1 * h)),
        ("site-a", finding("low-one", priority="low", acquired=now - 9 * h, label="normal", overlay=False)),
        ("site-a", finding("routine-old", acquired=now - 8 * h)),
        ("site-b", finding("routine-review", needs_review=True, acquired=now - 2 * h, confidence=0.55)),
        ("site-b", finding("urgent-plain", model=US, label="free_fluid", priority="urgent", acquired=now - 7 * h,
                           device="cart-1", modality="US")),
        ("site-b", finding("urgent-review", model=US, label="free_fluid", priority="urgent", needs_review=True,
                           acquired=now - 3 * h, device="cart-1", modality="US", confidence=0.5)),
    ]


def sqlite_db(folder: Path) -> TestDB:
    """A SQLite receiver database, for the tests where the store does not matter (they run once)."""
    return TestDB("sqlite", str(folder / "hospital.sqlite3"))


def db_errors() -> tuple[type[Exception], ...]:
    """What a refused statement raises in either store."""
    import sqlite3

    try:
        import psycopg
    except ImportError:
        return (sqlite3.DatabaseError,)
    return (sqlite3.DatabaseError, psycopg.Error)


def make_db(db: TestDB, findings: list[tuple[str, Finding]] | None = None) -> TestDB:
    """A receiver database with the worklist findings, the review tables, an admin and a reviewer."""
    from hospital.review.auth import create_user
    from hospital.review.db import ReviewDB

    store(db.url, worklist_findings() if findings is None else findings)
    r = ReviewDB(db.url)
    try:
        create_user(r, "admin", "admin", PASSWORDS["admin"], None)
        create_user(r, "rita", "reviewer", PASSWORDS["rita"], "admin")
    finally:
        r.close()
    return db


@dataclass
class Server:
    """`medge review serve` in a subprocess, on a free loopback port."""

    db: str  # the --db value
    log: Path
    proc: subprocess.Popen | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.port = free_port()
        self._log = self.log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "review", "--db", self.db, "--listen", f"127.0.0.1:{self.port}",
             "--refresh", "600"],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            wait_port("127.0.0.1", self.port, timeout=30)
        except RuntimeError:
            self.__exit__()
            raise RuntimeError(f"medge review did not start: {self.log.read_text()[-2000:]}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **kw):  # noqa: ANN002, ANN003
        return None


def http(method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One request, redirects not followed: (status, headers, body)."""
    opener = urllib.request.build_opener(_NoRedirect)
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def wait_http(url: str, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            http("GET", url, timeout=2)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} does not answer")


class Clock:
    """A clock the station reads, moved by the test (session expiry, lockout)."""

    def __init__(self, start: float | None = None) -> None:
        self.t = time.time() if start is None else start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class LiveStation:
    """The review application on a real uvicorn server in a thread (127.0.0.1, free port), with a test clock."""

    def __init__(self, db: TestDB, clock: Clock | None = None) -> None:
        self.test_db, self.clock = db, clock or Clock()

    def __enter__(self) -> LiveStation:
        import threading

        import uvicorn

        from hospital.review.app import Station
        from hospital.review.commands import uvicorn_config
        from hospital.review.db import ReviewDB

        self.db = ReviewDB(self.test_db.url)
        self.station = Station(self.db, clock=self.clock)
        self.app = self.station.app()
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn_config(self.app, "127.0.0.1", self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        end = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > end or not self.thread.is_alive():
                raise RuntimeError("the review station did not start")
            time.sleep(0.02)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Client:
        return Client(self.url)

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.db.close()


class Client:
    """A cookie-keeping HTTP client that does not follow redirects (each answer is checked as it is)."""

    def __init__(self, base: str) -> None:
        self.base, self.cookies = base, {}
        self.csrf = ""

    def request(self, method: str, path: str, form: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        from urllib.parse import urlencode

        h = dict(headers or {})
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        data = None
        if form is not None or method not in ("GET", "HEAD"):
            data = urlencode(form or {}).encode()
            h["Content-Type"] = "application/x-www-form-urlencoded"
        opener = urllib.request.build_opener(_NoRedirect)
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=h)
        try:
            with opener.open(req, timeout=20) as r:
                status, hdrs, body = r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            status, hdrs, body = e.code, e.headers, e.read()
        for c in hdrs.get_all("Set-Cookie") or []:
            name, _, rest = c.partition("=")
            value = rest.split(";", 1)[0]
            if 'Max-Age=0' in c or value in ('""', ""):
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        text = body.decode("utf-8", "replace")
        import re

        m = re.search(r'name="csrf_token" value="([^"]*)"', text)
        if m and path != "/login":
            self.csrf = m.group(1)
        self.last_headers = hdrs
        return status, dict(hdrs), text

    def get(self, path: str, **kw) -> tuple[int, dict[str, str], str]:
        return self.request("GET", path, **kw)

    def post(self, path: str, form: dict[str, str] | None = None, **kw) -> tuple[int, dict[str, str], str]:
        return self.request("POST", path, form, **kw)

    def login(self, username: str, password: str | None = None) -> int:
        import re

        status, _, text = self.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', text).group(1)
        status, headers, _ = self.post("/login", {"username": username, "password": password or PASSWORDS[username],
                                                  "csrf_token": token, "next": "/"})
        if status == 303:
            self.get("/")  # picks up the session's CSRF token
        return status
