"""The durable outbox: the only thing that keeps a finding safe while the device is offline.

paho-mqtt keeps its session in memory, so a power cut loses whatever it was holding. Every finding is
therefore committed here (SQLite, WAL, ``synchronous=FULL``: the commit has reached the disk when
``put`` returns) before anything tries to send it, and it leaves only when the hospital says its store
has committed it (the end-to-end acknowledgement, see `edge.link.sync`). A broker PUBACK only means "the
broker took it": a broker that restarts without the receivers' shared subscription, or a subscriber
the ACL then refuses, answers PUBACK and drops the message.

Lifecycle of a row: pending (0) -> in flight (1, leased by the sync thread, PUBACK outstanding) -> at
broker (3, PUBACK received, payload kept) -> acknowledged (2, the hospital committed it; payload
dropped, id kept so a re-processed DICOM object is recognised as a duplicate). ``requeue`` and
``retry_all`` move in-flight rows back to pending (PUBACK timeout, broker rejection, restart);
``resend_overdue`` moves at-broker rows whose acknowledgement is overdue back to pending, with a
doubling wait per attempt, so receivers that are down for hours do not multiply the broker's queue.
The hospital's acknowledgement is accepted in any state (it can overtake the PUBACK).

Ordering: urgent first, then routine, then low, oldest first inside a priority. To keep a steady
stream of urgent findings from starving the rest, ``lease(n)`` reserves a share of each batch for lower
priorities whenever they have pending rows (see ``RESERVED_SHARE``).

Disk quota policy (``quota_bytes`` counts the payload bytes of undelivered rows):
  1. A new finding that would exceed the quota first evicts the oldest *pending low-priority*
     findings, oldest first; each eviction is counted (``dropped_low``) and logged.
  2. If that is not enough, a new *low* finding is itself dropped (counted, ``put`` returns False).
  3. Urgent and routine findings are never dropped for quota: they are stored beyond it, counted
     (``over_quota_accepted``) and reported (``status().over_quota``, heartbeat telemetry), so the
     operator sees the device needs a link or a purge. Only a full disk refuses them (OutboxError).
Findings whose time-to-live (per priority) has passed are not sent; ``purge_expired`` removes them
and counts them per priority, never silently.

Device events (`edge.events.DeviceEvent`: an object outside a model's intended use, input drift) are
rows of the same table with ``kind = 'event'``: the hospital must not miss them any more than a finding,
so they share the transaction, quota, TTL, priority and acknowledgement rules and the id space (the
row id is the event id). They are listed apart (``list_events``) so no findings list shows one.

Only a new row's commit must reach the disk before the call returns (``synchronous=FULL``). Every later
state change (lease, PUBACK, the hospital's acknowledgement, resend, purge) commits with ``synchronous=
NORMAL``: WAL keeps the file consistent, and a power cut can only undo the changes made since the last
sync (the next new row's commit or checkpoint syncs them), which puts rows back into an earlier state: they
are sent again and the receiver de-duplicates them by id. A finding is never lost that way, and the device
saves an fsync per state change (~90 us of CPU each here; bench_fleet's device CPU per finding went from
1.45 to 1.02 ms).

Connections are per thread (sqlite3 enforces it): the pipeline thread and the sync thread each open
their own ``Outbox`` on the same file.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import MedgeError
from edge.events import DeviceEvent
from edge.findings import PRIORITIES, Finding
from edge.units import MIB, mib

log = logging.getLogger("medge.outbox")

PENDING, IN_FLIGHT, DELIVERED, AT_BROKER = 0, 1, 2, 3  # DELIVERED: acknowledged by the hospital's store
STATE_NAMES = {PENDING: "pending", IN_FLIGHT: "in-flight", AT_BROKER: "at-broker", DELIVERED: "acknowledged"}
# 1: no at-broker state (PUBACK meant delivered); 2: end-to-end acknowledgements; 3: a summary of each
# finding kept after its payload is dropped (what `medge findings list` shows); 4: device events next to
# findings (``kind``, and their summary: event_kind, reason, detail)
SCHEMA_VERSION = 4
SUMMARY_COLUMNS = {"label": "TEXT", "modality": "TEXT", "confidence": "REAL", "needs_review": "INTEGER",
                   "model": "TEXT", "acquired_at": "TEXT", "source": "TEXT",
                   "event_kind": "TEXT", "reason": "TEXT", "detail": "TEXT"}
PRIO_RANK = {p: i for i, p in enumerate(PRIORITIES)}  # urgent=0, routine=1, low=2
# Fraction of each lease batch kept for lower priorities when they have work waiting: urgent still
# gets most of the link, but a routine/low backlog always moves.
RESERVED_SHARE = {"routine": 0.2, "low": 0.05}
DEFAULT_TTL_S = {"urgent": 30 * 86400.0, "routine": 14 * 86400.0, "low": 3 * 86400.0}
DELIVERED_KEEP_S = 30 * 86400.0  # how long delivered ids are kept for de-duplication
COUNTERS = ("dropped_low", "over_quota_accepted", "expired_urgent", "expired_routine", "expired_low",
            "delivered_total", "pending_bytes", "resent", "hospital_rejected")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS findings (
    finding_id   TEXT PRIMARY KEY,
    priority     INTEGER NOT NULL,
    state        INTEGER NOT NULL DEFAULT 0,
    payload      BLOB,
    size         INTEGER NOT NULL,
    created_at   REAL NOT NULL,
    expires_at   REAL NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    leased_at    REAL,
    delivered_at REAL,
    due_at       REAL,
    kind         TEXT NOT NULL DEFAULT 'finding'
);
CREATE INDEX IF NOT EXISTS findings_queue ON findings(state, priority, created_at);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class OutboxError(MedgeError):
    """The outbox file cannot be opened or written (disk full, permissions, corruption)."""


@dataclass(frozen=True)
class OutboxItem:
    finding_id: str  # the row id: a finding's finding_id or an event's event_id
    priority: str
    state: str
    payload: bytes | None
    size: int
    created_at: float  # wall clock (epoch seconds): survives reboots, unlike the monotonic clock
    expires_at: float
    attempts: int
    kind: str = "finding"  # or "event": decides the topic it is published on

    def describe(self) -> str:
        age = max(0.0, time.time() - self.created_at)
        return (f"{self.finding_id}  {self.kind:<7}  {self.priority:<7}  {self.state:<9}  age {_fmt_age(age):>7}  "
                f"attempts {self.attempts}  {self.size} B")


@dataclass(frozen=True)
class FindingRow:
    """What `medge findings list` shows for one finding, delivered or not."""

    finding_id: str
    priority: str
    state: str
    created_at: float
    delivered_at: float | None
    attempts: int
    payload_held: bool
    label: str | None  # None: stored by a medge before outbox schema 3
    modality: str | None
    confidence: float | None
    needs_review: bool | None
    model: str | None
    acquired_at: str | None
    source: str | None

    def to_dict(self) -> dict[str, Any]:
        return _row_dict(self)

    def describe(self) -> str:
        review = " NEEDS REVIEW" if self.needs_review else ""
        conf = "-" if self.confidence is None else f"{self.confidence:.2f}"
        return (f"{_iso(self.created_at)}  {self.priority:<7}  {self.label or '?'}  {conf}  {self.modality or '?'}{review}  "
                f"{self.state}  ({self.source or '-'}, {self.model or '?'})  {self.finding_id}")


@dataclass(frozen=True)
class EventRow:
    """What `medge events list` shows for one device event, delivered or not."""

    event_id: str
    priority: str
    state: str
    created_at: float
    delivered_at: float | None
    attempts: int
    payload_held: bool
    kind: str  # a key of edge.events.EVENT_KINDS
    reason: str
    detail: str
    modality: str | None
    model: str | None
    acquired_at: str | None
    source: str | None

    def to_dict(self) -> dict[str, Any]:
        return _row_dict(self)

    def describe(self) -> str:
        return (f"{_iso(self.created_at)}  {self.priority:<7}  {self.kind}  {self.reason}: {self.detail}  "
                f"{self.state}  ({self.source or '-'}, {self.model or '-'})  {self.event_id}")


def _row_dict(row: FindingRow | EventRow) -> dict[str, Any]:
    """A listing row as JSON for scripts: times as ISO 8601 UTC."""
    d = asdict(row)
    d["created_at"] = _iso(row.created_at)
    d["delivered_at"] = _iso(row.delivered_at) if row.delivered_at else None
    return d


def _iso(epoch: float) -> str:
    from edge.findings import iso_utc

    return iso_utc(epoch, timespec="seconds")


@dataclass(frozen=True)
class OutboxStatus:
    path: str
    pending: dict[str, int]
    in_flight: int
    delivered: int  # acknowledged by the hospital (ids kept for de-duplication)
    oldest_pending_age_s: float | None
    pending_bytes: int
    quota_bytes: int
    file_bytes: int
    dropped_low: int
    over_quota_accepted: int
    expired: dict[str, int]
    expired_waiting: int  # past TTL, not yet purged
    at_broker: int = 0  # the broker took them (PUBACK); the hospital has not acknowledged them yet
    resent: int = 0  # at-broker findings sent again because their acknowledgement was overdue
    hospital_rejected: int = 0  # acknowledged by the hospital as rejected (kept in its rejected table)
    events: int = 0  # of the depth: device events (edge.events), not findings
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def depth(self) -> int:
        """Findings and events the hospital does not have yet (pending, in flight or at the broker)."""
        return sum(self.pending.values()) + self.in_flight + self.at_broker

    @property
    def over_quota(self) -> bool:
        return self.pending_bytes > self.quota_bytes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("counters")
        d["depth"] = self.depth
        d["over_quota"] = self.over_quota
        return d

    def describe(self) -> str:
        p = self.pending
        oldest = "-" if self.oldest_pending_age_s is None else _fmt_age(self.oldest_pending_age_s)
        lines = [
            f"outbox {self.path}",
            f"  pending    urgent {p['urgent']}  routine {p['routine']}  low {p['low']}  in flight {self.in_flight}",
            f"  at broker  {self.at_broker} (the broker has them; waiting for the hospital's acknowledgement;"
            f" resent {self.resent})",
            f"  oldest     {oldest} (oldest finding the hospital does not have yet)",
            f"  events     {self.events} of these are device events (out of scope, drift), not findings",
            f"  size       {mib(self.pending_bytes)} of {mib(self.quota_bytes)} quota"
            f"{'  OVER QUOTA' if self.over_quota else ''} (file {mib(self.file_bytes)})",
            f"  acknowledged {self.delivered} by the hospital (ids kept for de-duplication"
            f"{f'; {self.hospital_rejected} rejected there' if self.hospital_rejected else ''})",
            f"  dropped    {self.dropped_low} low-priority (quota); accepted over quota {self.over_quota_accepted}",
            f"  expired    urgent {self.expired['urgent']}  routine {self.expired['routine']}  low {self.expired['low']}"
            f"  (waiting for purge: {self.expired_waiting})",
        ]
        return "\n".join(lines)


def _fmt_age(s: float) -> str:
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    if s < 172800:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


class Outbox:
    """One thread's handle on the outbox file. Open one per thread; close it (or use ``with``)."""

    def __init__(self, path: Path | str, quota_bytes: int = 512 * MIB,
                 ttl_s: Mapping[str, float] | None = None, busy_timeout_s: float = 30.0, create: bool = True) -> None:
        """``create=False``: only open an outbox that exists (commands that look must not make one; an empty
        new outbox on a device would hide a typo in the profile)."""
        self.path = Path(path)
        if not create and not self.path.is_file():
            where = "its folder does not exist either" if not self.path.parent.is_dir() else "the folder exists"
            raise OutboxError(f"{self.path}: no outbox here ({where}); has medge run with this profile and data_dir? "
                              "check data_dir / outbox.path")
        self.quota_bytes = int(quota_bytes)
        self.ttl_s = dict(DEFAULT_TTL_S)
        if ttl_s:
            unknown = set(ttl_s) - set(PRIORITIES)
            if unknown:
                raise ValueError(f"ttl_s has unknown priorities {sorted(unknown)}")
            self.ttl_s.update({k: float(v) for k, v in ttl_s.items()})
        self._db: sqlite3.Connection | None = None
        # `PRAGMA data_version` when a lease last found nothing more to send (None: unknown). Until another
        # connection commits (the pipeline storing a finding) or this one makes rows pending again, a lease
        # cannot find anything, so it returns at once instead of taking the write lock: the sync loop asks
        # 50 times a second, and an idle device (or a fleet of them on one host) should not pay for that.
        self._idle_version: int | None = None
        deadline = time.monotonic() + busy_timeout_s
        while True:
            try:
                self._open(busy_timeout_s)
                break
            except sqlite3.OperationalError as e:
                # Switching to WAL while another connection opens the same new file returns "locked"
                # without waiting for the busy handler; retry within the busy timeout.
                if self._db is not None:
                    self._db.close()
                    self._db = None
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise OutboxError(f"{self.path}: cannot open outbox ({e})") from None
                time.sleep(0.05)
            except sqlite3.DatabaseError as e:
                raise OutboxError(f"{self.path}: cannot open outbox ({e})") from None
            except OSError as e:
                raise OutboxError(f"{self.path}: cannot open outbox ({e.strerror})") from None

    def _open(self, busy_timeout_s: float) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, timeout=busy_timeout_s)
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise OutboxError(f"{self.path}: cannot switch the outbox to WAL mode (got {mode})")
        self._db.execute("PRAGMA synchronous=FULL")
        self._durable = True
        self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise OutboxError(f"{self.path}: outbox schema {version} is newer than this medge understands "
                                  f"({SCHEMA_VERSION}); install the medge version that wrote it")
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    self._db.execute(stmt)
            cols = {r[1] for r in self._db.execute("PRAGMA table_info(findings)")}
            if "due_at" not in cols:  # schema 1 file: add the acknowledgement deadline
                self._db.execute("ALTER TABLE findings ADD COLUMN due_at REAL")
            if "kind" not in cols:  # schema < 4: every existing row is a finding
                self._db.execute("ALTER TABLE findings ADD COLUMN kind TEXT NOT NULL DEFAULT 'finding'")
            for name, sql_type in SUMMARY_COLUMNS.items():  # schema < 3: the summary, < 4: the events' (NULL for older rows)
                if name not in cols:
                    self._db.execute(f"ALTER TABLE findings ADD COLUMN {name} {sql_type}")
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._db.executemany("INSERT OR IGNORE INTO counters(name, value) VALUES (?, 0)", [(c,) for c in COUNTERS])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    @classmethod
    def from_config(cls, cfg: Any, create: bool = True) -> Outbox:
        ttl = cfg.outbox.ttl_hours
        return cls(cfg.outbox_path, quota_bytes=int(cfg.outbox.quota_mb * MIB),
                   ttl_s={"urgent": ttl.urgent * 3600, "routine": ttl.routine * 3600, "low": ttl.low * 3600},
                   create=create)

    # ------------------------------------------------------------------------------------- plumbing
    def _tx(self, durable: bool = False) -> _Tx:
        """``durable``: the commit is on disk when the block ends (new rows); otherwise it may be undone by a
        power cut, which only ever makes a finding be sent again (module doc)."""
        if self._db is not None and durable != self._durable:
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._durable = durable
        return _Tx(self._db, self.path)

    def _bump(self, name: str, by: int) -> None:
        if by:
            self._db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (by, name))

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        db, self._db = getattr(self, "_db", None), None
        if db is not None:
            db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------------------------- writes
    def put(self, record: Finding | DeviceEvent) -> bool:
        """Durably store one finding or event. False: already known (duplicate id) or dropped by the quota policy."""
        return self.store([record])[0]

    def put_many(self, records: Iterable[Finding | DeviceEvent]) -> int:
        """Store several findings/events in one transaction (one fsync). Returns how many were stored."""
        return sum(self.store(list(records)))

    def store(self, records: list[Finding | DeviceEvent]) -> list[bool]:
        """Store findings and device events in one transaction (one fsync); for each, whether it was stored
        (False: duplicate id, or a low-priority one dropped by the quota policy). Durable when this returns."""
        self._idle_version = None  # new pending rows: the next lease must look
        now = time.time()
        rows = []
        for r in records:
            rid, kind, summary = _summary(r)
            payload = r.to_json().encode()
            rows.append((rid, kind, PRIO_RANK[r.priority], payload, len(payload), now, now + self.ttl_s[r.priority],
                         summary))
        if not rows:
            return []
        stored: list[bool] = []
        with self._tx(durable=True):
            pending_bytes = self._counter("pending_bytes")
            for fid, kind, prio, payload, size, created, expires, summary in rows:
                if pending_bytes + size > self.quota_bytes:
                    pending_bytes -= self._evict_low(pending_bytes + size - self.quota_bytes, fid)
                    if pending_bytes + size > self.quota_bytes:
                        if prio == PRIO_RANK["low"]:
                            stored.append(False)
                            if self._db.execute("SELECT 1 FROM findings WHERE finding_id=?", (fid,)).fetchone():
                                continue
                            self._bump("dropped_low", 1)
                            log.warning("outbox over quota: low-priority %s %s dropped", kind, fid)
                            continue
                        accepted_over = True
                    else:
                        accepted_over = False
                else:
                    accepted_over = False
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO findings(finding_id, kind, priority, payload, size, created_at, expires_at, "
                    + ", ".join(SUMMARY_COLUMNS) + ") VALUES (?, ?, ?, ?, ?, ?, ?" + ", ?" * len(SUMMARY_COLUMNS) + ")",
                    (fid, kind, prio, payload, size, created, expires, *summary))
                stored.append(cur.rowcount == 1)
                if cur.rowcount == 1:
                    pending_bytes += size
                    if accepted_over:
                        self._bump("over_quota_accepted", 1)
                        log.warning("outbox over quota (%d of %d bytes): %s %s %s kept anyway",
                                    pending_bytes, self.quota_bytes, PRIORITIES[prio], kind, fid)
            self._db.execute("UPDATE counters SET value=? WHERE name='pending_bytes'", (pending_bytes,))
        return stored

    def _evict_low(self, need: int, incoming_id: str) -> int:
        """Drop the oldest pending low-priority rows until ``need`` bytes are free; returns bytes freed."""
        freed = 0
        while freed < need:
            rows = self._db.execute(
                "SELECT finding_id, size FROM findings WHERE state=? AND priority=? AND finding_id<>?"
                " ORDER BY created_at, rowid LIMIT 256", (PENDING, PRIO_RANK["low"], incoming_id)).fetchall()
            if not rows:
                break
            victims = []
            for fid, size in rows:
                victims.append((fid,))
                freed += size
                if freed >= need:
                    break
            self._db.executemany("DELETE FROM findings WHERE finding_id=?", victims)
            self._bump("dropped_low", len(victims))
            log.warning("outbox over quota: dropped %d oldest low-priority finding(s)", len(victims))
        return freed

    def lease(self, n: int) -> list[OutboxItem]:
        """Take up to ``n`` pending findings for sending (urgent first, with a reserved share for the rest)."""
        if n <= 0:
            return []
        if self._idle_version is not None and self._data_version() == self._idle_version:
            return []
        now = time.time()
        with self._tx():
            # up to n candidates per priority straight off the (state, priority, created_at) index; no
            # COUNT over a 100k backlog on every lease
            cand = {p: self._db.execute(
                "SELECT " + _ITEM_COLS + " FROM findings"
                " WHERE state=? AND priority=? AND expires_at>? ORDER BY created_at, rowid LIMIT ?",
                (PENDING, PRIO_RANK[p], now, n)).fetchall() for p in PRIORITIES}
            quota = _split(n, {p: len(rows) for p, rows in cand.items()})
            items = [_item(r, state_override=IN_FLIGHT) for p in PRIORITIES for r in cand[p][:quota[p]]]
            self._db.executemany("UPDATE findings SET state=?, leased_at=? WHERE finding_id=?",
                                 [(IN_FLIGHT, now, it.finding_id) for it in items])
        self._idle_version = self._data_version() if len(items) < n else None
        return items

    def _data_version(self) -> int:
        """Changes when another connection commits to the file (PRAGMA data_version; cheap, no lock)."""
        if self._db is None:
            raise OutboxError(f"{self.path}: outbox is closed")
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def mark_at_broker_many(self, finding_ids: Iterable[str], ack_wait_s: float, max_wait_s: float) -> int:
        """PUBACKs: in flight -> at broker. Each row becomes due for a resend ``ack_wait_s * 2**attempts``
        (at most ``max_wait_s``) from now unless the hospital acknowledges it first."""
        ids = [(fid,) for fid in finding_ids]
        if not ids:
            return 0
        now = time.time()
        with self._tx():
            cur = self._db.executemany(
                "UPDATE findings SET state=?, leased_at=NULL, due_at=? + MIN(?, ? * (1 << MIN(attempts, 20)))"
                " WHERE finding_id=? AND state=?",
                [(AT_BROKER, now, float(max_wait_s), float(ack_wait_s), fid, IN_FLIGHT) for (fid,) in ids])
        return cur.rowcount

    def resend_overdue(self, now: float | None = None) -> int:
        """At-broker rows whose hospital acknowledgement is overdue go back to pending (sent again; the
        receiver de-duplicates by id and acknowledges again)."""
        now = time.time() if now is None else now
        if self._db is not None and not self._db.execute(  # asked every second: no write lock when nothing is due
                "SELECT 1 FROM findings WHERE state=? AND due_at<=? LIMIT 1", (AT_BROKER, now)).fetchone():
            return 0
        with self._tx():
            cur = self._db.execute("UPDATE findings SET state=?, attempts=attempts+1, due_at=NULL"
                                   " WHERE state=? AND due_at<=?", (PENDING, AT_BROKER, now))
            self._bump("resent", cur.rowcount)
        if cur.rowcount:
            self._idle_version = None
        return cur.rowcount

    def mark_delivered(self, finding_id: str) -> bool:
        """The hospital has committed it: keep only the id (for de-duplication)."""
        return self.mark_delivered_many([finding_id]) == 1

    def mark_delivered_many(self, finding_ids: Iterable[str], rejected: Iterable[str] = ()) -> int:
        """Several hospital acknowledgements in one transaction (one fsync). Accepted in any state: the
        acknowledgement can overtake the PUBACK, or arrive after a resend was queued. ``rejected`` ids
        were acknowledged as refused by the receiver (kept in its rejected table): they leave the
        outbox too, and are counted."""
        refused = set(rejected)
        ids = list(dict.fromkeys([*finding_ids, *refused]))
        if not ids:
            return 0
        now = time.time()
        n = n_refused = 0
        with self._tx():
            freed = 0
            for fid in ids:
                row = self._db.execute("SELECT size FROM findings WHERE finding_id=? AND state<>?",
                                       (fid, DELIVERED)).fetchone()
                if not row:
                    continue
                self._db.execute("UPDATE findings SET state=?, payload=NULL, delivered_at=?, due_at=NULL"
                                 " WHERE finding_id=?", (DELIVERED, now, fid))
                freed += int(row[0])
                n += 1
                n_refused += fid in refused
            self._bump("pending_bytes", -freed)
            self._bump("delivered_total", n)
            self._bump("hospital_rejected", n_refused)
        return n

    def requeue(self, finding_id: str) -> bool:
        """Back to pending after an ack timeout, a rejection or a lost connection."""
        with self._tx():
            cur = self._db.execute("UPDATE findings SET state=?, attempts=attempts+1, leased_at=NULL"
                                   " WHERE finding_id=? AND state=?", (PENDING, finding_id, IN_FLIGHT))
        self._idle_version = None
        return cur.rowcount == 1

    def retry_all(self, at_broker: bool = False) -> int:
        """Every in-flight finding becomes pending again (used at sync start: no lease survives a restart).
        At-broker rows keep waiting for their acknowledgement, which the broker holds for the device,
        unless ``at_broker`` (the operator's ``medge outbox retry``) sends them again now too."""
        states = (IN_FLIGHT, AT_BROKER) if at_broker else (IN_FLIGHT, IN_FLIGHT)
        with self._tx():
            cur = self._db.execute("UPDATE findings SET state=?, leased_at=NULL, due_at=NULL WHERE state IN (?, ?)",
                                   (PENDING, *states))
        self._idle_version = None
        return cur.rowcount

    def purge_expired(self) -> int:
        """Remove undelivered findings past their TTL (counted per priority) and old delivered ids."""
        now = time.time()
        with self._tx():
            rows = self._db.execute("SELECT priority, COUNT(*), COALESCE(SUM(size), 0) FROM findings"
                                    " WHERE state<>? AND expires_at<=? GROUP BY priority", (DELIVERED, now)).fetchall()
            n = 0
            for prio, count, size in rows:
                self._bump(f"expired_{PRIORITIES[prio]}", int(count))
                self._bump("pending_bytes", -int(size))
                n += int(count)
                log.warning("outbox: %d %s finding(s) expired undelivered and were purged", count, PRIORITIES[prio])
            self._db.execute("DELETE FROM findings WHERE state<>? AND expires_at<=?", (DELIVERED, now))
            self._db.execute("DELETE FROM findings WHERE state=? AND delivered_at<=?", (DELIVERED, now - DELIVERED_KEEP_S))
        return n

    # ---------------------------------------------------------------------------------------- reads
    def get(self, finding_id: str) -> OutboxItem | None:
        row = self._db.execute("SELECT " + _ITEM_COLS + " FROM findings WHERE finding_id=?", (finding_id,)).fetchone()
        return _item(row) if row else None

    def list_findings(self, n: int = 50, states: tuple[str, ...] | None = None,
                      finding_id: str | None = None) -> list[FindingRow]:
        """The newest findings (or the one with ``finding_id``) with their delivery state (summaries survive
        the payload). Never events: a findings list is what clinicians and audits read."""
        rows = self._listing("finding", ("label", "modality", "confidence", "needs_review", "model", "acquired_at", "source"),
                             n, states, finding_id)
        return [FindingRow(*common, label, modality, confidence, None if review is None else bool(review), model, acquired,
                           source)
                for *common, label, modality, confidence, review, model, acquired, source in rows]

    def list_events(self, n: int = 50, states: tuple[str, ...] | None = None,
                    event_id: str | None = None) -> list[EventRow]:
        """The newest device events (or the one with ``event_id``) with their delivery state."""
        rows = self._listing("event", ("event_kind", "reason", "detail", "modality", "model", "acquired_at", "source"),
                             n, states, event_id)
        return [EventRow(*common, kind or "?", reason or "?", detail or "", modality, model, acquired, source)
                for *common, kind, reason, detail, modality, model, acquired, source in rows]

    def _listing(self, kind: str, summary: tuple[str, ...], n: int, states: tuple[str, ...] | None,
                 row_id: str | None) -> list[tuple]:
        """Rows of one kind, newest first: (id, priority, state, created, delivered, attempts, held, *summary)."""
        where, args = " WHERE kind = ?", [kind]
        if states:
            codes = [k for k, v in STATE_NAMES.items() if v in states]
            where += f" AND state IN ({', '.join('?' * len(codes))})"
            args += codes
        if row_id is not None:
            where, args = " WHERE kind = ? AND finding_id = ?", [kind, row_id]
        rows = self._db.execute(
            "SELECT finding_id, priority, state, created_at, delivered_at, attempts, payload IS NOT NULL, "
            + ", ".join(summary) + f" FROM findings{where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (*args, n)).fetchall()
        return [(fid, PRIORITIES[prio], STATE_NAMES[state], float(created), delivered, int(attempts), bool(held), *rest)
                for fid, prio, state, created, delivered, attempts, held, *rest in rows]

    def list_pending(self, n: int = 50) -> list[OutboxItem]:
        rows = self._db.execute(
            "SELECT " + _ITEM_COLS + " FROM findings"
            " WHERE state<>? ORDER BY priority, created_at, rowid LIMIT ?", (DELIVERED, n)).fetchall()
        return [_item(r) for r in rows]

    def depth(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM findings WHERE state<>?", (DELIVERED,)).fetchone()[0])

    def status(self) -> OutboxStatus:
        now = time.time()
        db = self._db
        pending = {p: 0 for p in PRIORITIES}
        for prio, cnt in db.execute("SELECT priority, COUNT(*) FROM findings WHERE state=? GROUP BY priority", (PENDING,)):
            pending[PRIORITIES[prio]] = int(cnt)
        in_flight = int(db.execute("SELECT COUNT(*) FROM findings WHERE state=?", (IN_FLIGHT,)).fetchone()[0])
        at_broker = int(db.execute("SELECT COUNT(*) FROM findings WHERE state=?", (AT_BROKER,)).fetchone()[0])
        delivered = int(db.execute("SELECT COUNT(*) FROM findings WHERE state=?", (DELIVERED,)).fetchone()[0])
        events = int(db.execute("SELECT COUNT(*) FROM findings WHERE state<>? AND kind='event'", (DELIVERED,)).fetchone()[0])
        oldest = db.execute("SELECT MIN(created_at) FROM findings WHERE state<>?", (DELIVERED,)).fetchone()[0]
        waiting = int(db.execute("SELECT COUNT(*) FROM findings WHERE state<>? AND expires_at<=?",
                                 (DELIVERED, now)).fetchone()[0])
        counters = {k: int(v) for k, v in db.execute("SELECT name, value FROM counters")}
        file_bytes = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        return OutboxStatus(
            path=str(self.path), pending=pending, in_flight=in_flight, delivered=delivered,
            oldest_pending_age_s=None if oldest is None else max(0.0, now - oldest),
            pending_bytes=counters.get("pending_bytes", 0), quota_bytes=self.quota_bytes, file_bytes=file_bytes,
            dropped_low=counters.get("dropped_low", 0), over_quota_accepted=counters.get("over_quota_accepted", 0),
            expired={p: counters.get(f"expired_{p}", 0) for p in PRIORITIES}, expired_waiting=waiting,
            at_broker=at_broker, resent=counters.get("resent", 0), hospital_rejected=counters.get("hospital_rejected", 0),
            events=events, counters=counters)


def _split(n: int, available: Mapping[str, int]) -> dict[str, int]:
    """Divide a lease of ``n`` among priorities: reserved shares for lower ones, the rest urgent-first."""
    take = {p: 0 for p in PRIORITIES}
    left = n
    for p, share in RESERVED_SHARE.items():
        if available[p] and left:
            k = min(available[p], max(1, int(n * share)), left)
            take[p] += k
            left -= k
    for p in PRIORITIES:
        k = min(available[p] - take[p], left)
        take[p] += k
        left -= k
    return take


def _summary(r: Finding | DeviceEvent) -> tuple[str, str, tuple]:
    """(row id, kind, SUMMARY_COLUMNS values): what the listings show after the payload is dropped."""
    if isinstance(r, DeviceEvent):
        model = f"{r.model.name} {r.model.version} {r.model.variant}" if r.model else None
        return r.event_id, "event", (None, r.modality, None, None, model, r.acquired_at, r.source, r.kind, r.reason,
                                     r.detail)
    if isinstance(r, Finding):
        return r.finding_id, "finding", (r.label, r.modality, float(r.confidence), int(bool(r.needs_review)),
                                         f"{r.model.name} {r.model.version} {r.model.variant}", r.acquired_at, r.source,
                                         None, None, None)
    raise TypeError(f"the outbox stores findings and device events, not {type(r).__name__}")


_ITEM_COLS = "finding_id, priority, state, payload, size, created_at, expires_at, attempts, kind"


def _item(row: tuple, state_override: int | None = None) -> OutboxItem:
    fid, prio, state, payload, size, created, expires, attempts, kind = row
    return OutboxItem(finding_id=fid, priority=PRIORITIES[prio],
                      state=STATE_NAMES[state_override if state_override is not None else state],
                      payload=bytes(payload) if payload is not None else None, size=int(size),
                      created_at=float(created), expires_at=float(expires), attempts=int(attempts), kind=kind)


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT: take the write lock up front so two threads never deadlock upgrading."""

    def __init__(self, db: sqlite3.Connection | None, path: Path) -> None:
        if db is None:
            raise OutboxError(f"{path}: outbox is closed")
        self.db, self.path = db, path

    def __enter__(self) -> None:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            raise OutboxError(f"{self.path}: outbox is locked or unwritable ({e})") from None

    def __exit__(self, et: type | None, ev: BaseException | None, tb: object) -> bool:
        if et is None:
            try:
                self.db.execute("COMMIT")
                return False
            except sqlite3.DatabaseError as e:
                self.db.execute("ROLLBACK")
                raise OutboxError(f"{self.path}: cannot commit to the outbox ({e})") from None
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")
        if isinstance(ev, sqlite3.DatabaseError):
            raise OutboxError(f"{self.path}: outbox write failed ({ev})") from None
        return False
