"""`medge hospital forward`: every finding the receivers store, as SR (+ SC) in the PACS, exactly once.

Durability is the outbox's (`edge.link.outbox`): the forwarder's state is a SQLite file of its own (WAL,
``synchronous=FULL``), by default next to a SQLite receiver database (``<db>.forward.sqlite3``; for a
PostgreSQL one ``--queue`` names it), so the receiver's schema stays the receiver's. It holds

- ``source``: the receiver database it follows (another one is refused: the cursor would mean nothing);
- ``cursor``: the receiver's position already queued: SQLite's rowid (commit order), or PostgreSQL's
  received_at in microseconds, which concurrent receivers stamp before they commit, so the forwarder
  re-reads the last 10 minutes behind it at start and every minute (`ForwardQueue.follow`);
- ``queue``: one row per finding: state (pending, done, failed), attempts, when it is due again, the last
  error, and when it was done.

Each pass first copies new receiver rows into the queue and advances the cursor in one commit, then works
through the due pending findings in insertion order: open the sealed origin, C-FIND the study (patient
attributes), build the objects, C-STORE each. A finding becomes ``done`` only in the commit that follows
every C-STORE answering 0x0000. Anything else leaves it pending with a doubling delay (5 s up to 1 h):

- the PACS is down, refuses the association or stops answering: the finding is retried later and the pass
  ends (the next finding would fail the same way); nothing is marked done.
- the PACS does not hold the study (yet: the modality's images may arrive after the finding): retried later,
  never written as a study without patient.
- a C-STORE status other than 0x0000 (warnings included): retried later.

A finding that cannot be written at all (no sealed origin, a key that does not open it, an origin without the
image) is ``failed`` with the reason. Failed findings are tried again each time the forwarder starts (a key
loaded since, a profile fixed). A crash between the last C-STORE and the commit resends the finding later;
the SOP Instance UIDs come from the finding id (`hospital.dicom.uids`), so the PACS stores the same
instances again instead of a second report. One forwarder per queue file (an exclusive lock).
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.errors import ConfigError, MedgeError
from edge.link.backoff import Backoff
from hospital.dicom.objects import build_objects, kind
from hospital.dicom.pacs import SUCCESS, Pacs, PacsAddress, PacsError
from hospital.dicom.sr import DicomBuildError
from hospital.relink import RelinkError

if TYPE_CHECKING:
    from hospital.store import FindingStore

log = logging.getLogger("medge.forward")

PENDING, DONE, FAILED = "pending", "done", "failed"
SCHEMA_VERSION = 1
BATCH = 200

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cursor (id INTEGER PRIMARY KEY CHECK (id = 0), store_rowid INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS source (id INTEGER PRIMARY KEY CHECK (id = 0), store TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queue (
    finding_id  TEXT PRIMARY KEY,
    store_rowid INTEGER NOT NULL,
    state       TEXT NOT NULL DEFAULT 'pending',
    attempts    INTEGER NOT NULL DEFAULT 0,
    due_at      REAL NOT NULL DEFAULT 0,
    last_error  TEXT,
    queued_at   REAL NOT NULL,
    done_at     REAL,
    instances   TEXT
);
CREATE INDEX IF NOT EXISTS queue_due ON queue(state, store_rowid);
"""


class ForwardError(MedgeError):
    """The forwarder's queue or the receiver's database cannot be used."""


LOOK_BACK_US = 600 * 1_000_000  # how far behind its cursor a follower of PostgreSQL re-reads (see `follow`)


def default_queue_path(db: str) -> Path:
    from hospital.store import is_postgres

    if is_postgres(db):
        raise ConfigError("--db is a PostgreSQL URL: name the forwarder's own queue file with --queue FILE (on the "
                          "forwarder's host, e.g. /var/lib/medge-forward/queue.sqlite3)")
    return Path(f"{db}.forward.sqlite3")


@dataclass
class ForwardStats:
    queued: int = 0  # new findings copied from the receiver's store
    done: int = 0
    retried: int = 0
    failed: int = 0


@dataclass
class ForwardConfig:
    db: str
    pacs: PacsAddress
    relink_keys: list[Path]
    calling_aet: str = "MEDGE"
    queue: Path | None = None
    timeout_s: float = 30.0
    poll_s: float = 2.0
    retry_min_s: float = 5.0
    retry_max_s: float = 3600.0
    look_back_every_s: float = 60.0  # PostgreSQL stores: how often `ForwardQueue.follow` re-reads behind its cursor
    rng: random.Random = field(default_factory=random.Random)


class ForwardQueue:
    """The forwarder's durable state (one SQLite file, one handle per process)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise ConfigError(f"{self.path}: folder {self.path.parent} does not exist")
        self._lock = open(f"{self.path}.lock", "a+")  # noqa: SIM115 (held for the queue's lifetime)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise ForwardError(f"{self.path}: another medge hospital forward is using this queue") from None
        try:
            self.db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
            mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ForwardError(f"{self.path}: cannot switch the forward queue to WAL mode (got {mode})")
            self.db.execute("PRAGMA synchronous=FULL")
            version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise ForwardError(f"{self.path}: forward queue schema {version} is newer than this medge understands")
            self.db.executescript(_SCHEMA)
            self.db.execute("INSERT OR IGNORE INTO cursor(id, store_rowid) VALUES (0, 0)")
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            self.close()
            raise ForwardError(f"{self.path}: cannot open the forward queue ({e})") from None

    def close(self) -> None:
        if getattr(self, "db", None) is not None:
            self.db.close()
            self.db = None  # type: ignore[assignment]
        self._lock.close()

    def __enter__(self) -> ForwardQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def bind(self, store: str) -> None:
        """One queue follows one receiver database: its cursor means nothing for another."""
        row = self.db.execute("SELECT store FROM source").fetchone()
        if row is None:
            self.db.execute("INSERT INTO source(id, store) VALUES (0, ?)", (store,))
        elif row[0] != store:
            raise ForwardError(f"{self.path}: this queue follows {row[0]}, not {store}; give each receiver database "
                               "its own --queue")

    def follow(self, store: FindingStore, look_back: int = 0) -> tuple[int, int]:
        """Queue the receiver's findings stored since the last call, one commit per page; (new, of which late).

        The cursor is the store's position (`FindingStore.positions`): SQLite's rowid, in commit order, or
        PostgreSQL's received_at, stamped before a concurrent receiver's batch commits, so a finding can
        become visible behind it. ``look_back`` re-reads that far behind the cursor (the forwarder does every
        minute, `LOOK_BACK_US`); what was queued already is skipped by its key, and what was not is "late"."""
        cursor = start = int(self.db.execute("SELECT store_rowid FROM cursor").fetchone()[0])
        if store.POSITIONS_IN_COMMIT_ORDER and store.last_position() < cursor:
            # the receiver's table was rebuilt (VACUUM renumbers rowids): queue everything again
            log.warning("%s: the receiver's findings were renumbered; re-reading them all (done ones stay done)", self.path)
            cursor = start = 0
        key = (max(0, cursor - look_back), "")
        new = late = 0
        while rows := store.positions(key, BATCH * 5):
            now = time.time()
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for pos, fid in rows:
                    added = self.db.execute("INSERT OR IGNORE INTO queue(finding_id, store_rowid, queued_at) "
                                            "VALUES (?, ?, ?)", (fid, pos, now)).rowcount
                    new += added
                    late += added if pos < start else 0
                cursor = max(cursor, int(rows[-1][0]))
                self.db.execute("UPDATE cursor SET store_rowid = ?", (cursor,))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            key = rows[-1]
        return new, late

    def due(self, now: float | None, limit: int = BATCH) -> list[tuple[str, int]]:
        """(finding id, attempts) of pending findings due by ``now`` (None: all pending), oldest first."""
        if now is None:
            q = self.db.execute("SELECT finding_id, attempts FROM queue WHERE state = ? ORDER BY store_rowid LIMIT ?",
                                (PENDING, limit))
        else:
            q = self.db.execute("SELECT finding_id, attempts FROM queue WHERE state = ? AND due_at <= ? "
                                "ORDER BY store_rowid LIMIT ?", (PENDING, now, limit))
        return [(str(f), int(a)) for f, a in q]

    def next_due(self) -> float | None:
        row = self.db.execute("SELECT MIN(due_at) FROM queue WHERE state = ?", (PENDING,)).fetchone()
        return None if row[0] is None else float(row[0])

    def mark_done(self, finding_id: str, instances: list[str]) -> None:
        self.db.execute("UPDATE queue SET state = ?, done_at = ?, last_error = NULL, instances = ?, "
                        "attempts = attempts + 1 WHERE finding_id = ?",
                        (DONE, time.time(), " ".join(instances), finding_id))

    def mark_retry(self, finding_id: str, error: str, delay_s: float) -> None:
        self.db.execute("UPDATE queue SET attempts = attempts + 1, due_at = ?, last_error = ? WHERE finding_id = ?",
                        (time.time() + delay_s, error, finding_id))

    def mark_failed(self, finding_id: str, error: str) -> None:
        self.db.execute("UPDATE queue SET state = ?, attempts = attempts + 1, last_error = ? WHERE finding_id = ?",
                        (FAILED, error, finding_id))

    def retry_failed(self) -> int:
        return self.db.execute("UPDATE queue SET state = ?, due_at = 0 WHERE state = ?", (PENDING, FAILED)).rowcount

    def counts(self) -> dict[str, int]:
        out = {PENDING: 0, DONE: 0, FAILED: 0}
        out.update({str(s): int(n) for s, n in self.db.execute("SELECT state, COUNT(*) FROM queue GROUP BY state")})
        return out

    def row(self, finding_id: str) -> dict[str, Any] | None:
        cur = self.db.execute("SELECT * FROM queue WHERE finding_id = ?", (finding_id,))
        r = cur.fetchone()
        return None if r is None else dict(zip([d[0] for d in cur.description], r, strict=True))


class Forwarder:
    def __init__(self, cfg: ForwardConfig) -> None:
        from hospital.relink import OriginOpener
        from hospital.store import open_store

        if not cfg.relink_keys:
            raise ConfigError("--relink-key is required: findings carry pseudonyms only, and the original study's "
                              "UIDs open only with the hospital's re-link private key (medge hospital relink-keygen)")
        self.cfg = cfg
        self.queue_path = cfg.queue or default_queue_path(cfg.db)
        self.opener = OriginOpener.load(*cfg.relink_keys)
        self.store = open_store(cfg.db, create=False)
        self.queue = ForwardQueue(self.queue_path)
        try:
            self.queue.bind(self.store.where)
        except ForwardError:
            self.close()
            raise
        self._looked_back_at: float | None = None  # never: the first pass looks back (a restart)
        self.stats = ForwardStats()
        n = self.queue.retry_failed()
        if n:
            log.info("%d failed finding(s) queued again (a new start may have what they lacked)", n)

    def close(self) -> None:
        self.queue.close()
        self.store.close()

    def _retry_delay(self, attempts: int) -> float:
        return Backoff(self.cfg.retry_min_s, self.cfg.retry_max_s, rng=self.cfg.rng, attempt=attempts).next()

    def _retry(self, fid: str, attempts: int, error: str) -> None:
        delay = self._retry_delay(attempts)
        self.queue.mark_retry(fid, error, delay)
        self.stats.retried += 1
        log.warning("finding %s: %s; retry in %.0f s", fid, error, delay)

    def run_pass(self, everything: bool = False) -> bool:
        """Queue new findings, then send the due ones (``everything``: all pending, due or not). False when
        the PACS could not be reached (the caller backs off)."""
        look_back = 0
        if not self.store.POSITIONS_IN_COMMIT_ORDER and (
                self._looked_back_at is None or time.monotonic() - self._looked_back_at >= self.cfg.look_back_every_s):
            look_back, self._looked_back_at = LOOK_BACK_US, time.monotonic()
        new, late = self.queue.follow(self.store, look_back)
        self.stats.queued += new
        if late:
            log.info("%d finding(s) committed behind the cursor were queued by the look-back", late)
        due = self.queue.due(None if everything else time.time())
        if not due:
            return True
        try:
            with Pacs(self.cfg.pacs, self.cfg.calling_aet, self.cfg.timeout_s) as pacs:
                for fid, attempts in due:
                    row = self.store.get(fid)
                    if row is None:
                        self.queue.mark_failed(fid, "no longer in the receiver's database")
                        self.stats.failed += 1
                        continue
                    try:
                        origin = self.opener.open(row.finding)
                        study = pacs.find_study(origin.study_uid)
                        if study is None:
                            self._retry(fid, attempts, f"PACS {self.cfg.pacs} has no study {origin.study_uid} yet "
                                        "(its images may not have arrived)")
                            continue
                        objects = build_objects(row.finding, origin, study)
                        bad = []
                        for ds in objects:
                            status = pacs.store(ds)
                            if status != SUCCESS:
                                bad.append(f"C-STORE of the {kind(ds)} {ds.SOPInstanceUID} answered 0x{status:04X}")
                        if bad:
                            self._retry(fid, attempts, f"PACS {self.cfg.pacs}: " + "; ".join(bad))
                            continue
                    except (RelinkError, DicomBuildError) as e:
                        self.queue.mark_failed(fid, str(e))
                        self.stats.failed += 1
                        log.error("%s (not retried until the forwarder restarts)", e)
                        continue
                    except PacsError as e:
                        self._retry(fid, attempts, str(e))
                        return False
                    self.queue.mark_done(fid, [str(ds.SOPInstanceUID) for ds in objects])
                    self.stats.done += 1
                    log.info("finding %s: %s stored in PACS %s", fid,
                             " and ".join(f"{kind(ds)} {ds.SOPInstanceUID}" for ds in objects), self.cfg.pacs)
        except PacsError as e:
            fid, attempts = due[0]
            self._retry(fid, attempts, str(e))
            return False
        return True

    def run(self, stop: threading.Event, max_seconds: float | None = None) -> None:
        backoff = Backoff(self.cfg.retry_min_s, min(self.cfg.retry_max_s, 300.0), rng=self.cfg.rng)
        end = None if max_seconds is None else time.monotonic() + max_seconds
        while not stop.is_set() and (end is None or time.monotonic() < end):
            ok = self.run_pass()
            if ok:
                backoff.reset()
                nxt = self.queue.next_due()
                wait = self.cfg.poll_s if nxt is None else min(self.cfg.poll_s, max(0.0, nxt - time.time()))
            else:
                wait = backoff.next()
            if end is not None:
                wait = min(wait, max(0.0, end - time.monotonic()))
            stop.wait(max(wait, 0.05))

    def summary(self) -> str:
        c = self.queue.counts()
        return (f"forward: {c[DONE]} done, {c[PENDING]} pending, {c[FAILED]} failed in {self.queue_path} "
                f"(this run: {self.stats.queued} queued, {self.stats.done} stored, {self.stats.retried} to retry, "
                f"{self.stats.failed} failed)")


def forward_command(cfg: ForwardConfig, once: bool, max_seconds: float | None = None) -> int:
    """`medge hospital forward`: 0 when the queue holds nothing pending or failed afterwards, else 1 (--once);
    the loop runs until SIGTERM/SIGINT."""
    from hospital.dicom.pacs import quiet_pynetdicom

    quiet_pynetdicom()
    fw = Forwarder(cfg)
    try:
        if once:
            fw.run_pass(everything=True)
        else:
            stop = threading.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
            log.info("forwarding %s to PACS %s as %s (queue %s, pid %d)", cfg.db, cfg.pacs, cfg.calling_aet,
                     fw.queue_path, os.getpid())
            fw.run(stop, max_seconds)
        log.info(fw.summary())
        c = fw.queue.counts()
        return 0 if c[PENDING] == 0 and c[FAILED] == 0 else 1
    finally:
        fw.close()
