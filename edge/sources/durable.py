"""Bookkeeping shared by the two durable sources (dicom-folder, dicom-store).

A received object is the only copy of a finding's input until its findings are in the outbox, so the
file stays in the incoming folder until `complete()` has been called for every frame decoded from it;
then it moves to ``processed/``. A crash before that leaves it in incoming, and the next start
re-processes it (finding ids are deterministic, so the outbox deduplicates). Bad objects are quarantined
with their one-line reason, whatever exception reading them raised. A frame the pipeline could not
finish (``ok=False``: outbox full, backend error) is retried a few times with backoff before the object
is quarantined, so one poisonous object cannot loop forever and a transient failure does not lose an
object.

An object can also kill the process outright (a decoder's native crash, the kernel's OOM killer), and
then it would do so again at every restart: a crash loop. So the inbox writes a durable mark before it
starts on an object (`AttemptJournal`) and removes it when the object is finished one way or another.
An object found marked by ``POISON_AFTER`` earlier runs that never finished it is quarantined at the
next start instead of being opened again.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edge.durable_files import move_durably, write_atomic
from edge.errors import InputError, one_line
from edge.frames import Frame
from edge.imaging.dicom import frames_from_file
from edge.imaging.limits import DEFAULT_LIMITS, DecodeLimits
from edge.sources import SourceStats
from edge.sources.quarantine import Quarantine

MAX_ATTEMPTS = 3
POISON_AFTER = 2  # runs that died while processing the same object


class AttemptJournal:
    """One small file per object in progress, holding how many runs have started on it."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _mark(self, path: Path) -> Path:
        return self.folder / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json")

    def started(self, path: Path) -> int:
        """Runs that started on ``path`` and never finished it (0: none)."""
        try:
            return int(json.loads(self._mark(path).read_text())["attempts"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def begin(self, path: Path) -> int:
        """Record a start (durably, before anything is decoded); returns the earlier unfinished starts."""
        before = self.started(path)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self._mark(path), json.dumps({"path": str(path), "attempts": before + 1}).encode())
        return before

    def end(self, path: Path) -> None:
        self._mark(path).unlink(missing_ok=True)

    def sweep(self) -> None:
        """Forget marks whose object is gone (finished by a run that died before removing the mark)."""
        if not self.folder.is_dir():
            return
        for m in self.folder.glob("*.json"):
            try:
                if not Path(json.loads(m.read_text())["path"]).exists():
                    m.unlink(missing_ok=True)
            except (OSError, ValueError, KeyError, TypeError):
                m.unlink(missing_ok=True)


@dataclass
class _Entry:
    yielded: int = 0
    completed: int = 0
    finished_reading: bool = False
    failed: bool = False
    error: str | None = None
    attempts: int = 0


class DurableInbox:
    """Tracks objects from incoming through the pipeline to processed/ or quarantine."""

    def __init__(self, name: str, processed_dir: Path, quarantine: Quarantine, stats: SourceStats, log, *,
                 journal_dir: Path, retry_base_s: float = 1.0, limits: DecodeLimits = DEFAULT_LIMITS,
                 default_modality: str | None = None) -> None:
        self.name = name
        self.default_modality = default_modality  # for objects without Modality (the profile's, never guessed)
        self.processed_dir = Path(processed_dir)
        self.limits = limits
        self.journal = AttemptJournal(journal_dir)
        self.journal.sweep()
        self.quarantine = quarantine
        self.stats = stats
        self.log = log
        self.retry_base_s = retry_base_s
        self._lock = threading.Lock()
        self._entries: dict[Path, _Entry] = {}
        self._retry_at: dict[Path, tuple[float, int]] = {}  # path -> (monotonic time, attempts so far)

    def busy(self, path: Path) -> bool:
        """In the pipeline now, or waiting for its retry time."""
        with self._lock:
            if path in self._entries:
                return True
            r = self._retry_at.get(path)
            return r is not None and time.monotonic() < r[0]

    def frames(self, path: Path, stop: threading.Event) -> Iterator[Frame]:
        """Decode one object into frames; refusals are quarantined here and yield nothing."""
        path = Path(path)
        with self._lock:
            attempts = self._retry_at.pop(path, (0.0, 0))[1]
            entry = self._entries[path] = _Entry(attempts=attempts)
        self.stats.bump(received=1)
        read_all = False
        try:
            died = self.journal.begin(path)
        except OSError as e:  # a data folder that cannot be written fails loudly elsewhere too; keep going
            died = 0
            self.log.error("%s: cannot record the processing attempt (%s)", path, e.strerror)
        if died >= POISON_AFTER:
            entry.error = (f"{path}: the daemon stopped {died} times while processing this object (crash, out of "
                           "memory or power loss); quarantined as poison so it cannot stop the device again")
            self.stats.error(entry.error)
            self.log.error("%s", entry.error)
            with self._lock:
                entry.finished_reading = True
            self._maybe_finish(path, entry)
            return
        try:
            for frame in frames_from_file(path, self.name, self.limits, self.default_modality):
                with self._lock:
                    entry.yielded += 1
                self.stats.bump(accepted=1)
                yield frame
                if stop.is_set() and entry.yielded < (frame.frame_count or 1):
                    break  # the rest of the object is re-read after a restart
            read_all = True
        except InputError as e:
            entry.error = str(e)
            self.stats.error(str(e))
            self.log.error("%s", e)
        except OSError as e:
            entry.error = f"{path}: cannot read ({e.strerror})"
            self.stats.error(entry.error)
        except Exception as e:  # whatever else one malformed object raises stays with that object
            entry.error = f"{path}: cannot be processed ({one_line(e)})"
            self.stats.error(entry.error)
            self.log.error("%s", entry.error)
        finally:
            stopped_early = not read_all and entry.error is None
            with self._lock:
                entry.finished_reading = True
                if stopped_early:
                    entry.failed = True  # keep in incoming; never moved half-processed
            self._maybe_finish(path, entry)

    def complete(self, frame: Frame, ok: bool) -> None:
        if frame.origin is None:
            return
        path = Path(frame.origin)
        with self._lock:
            entry = self._entries.get(path)
            if entry is None:
                return
            entry.completed += 1
            if not ok:
                entry.failed = True
        self._maybe_finish(path, entry)

    def _maybe_finish(self, path: Path, entry: _Entry) -> None:
        with self._lock:
            if not entry.finished_reading or entry.completed < entry.yielded or self._entries.get(path) is not entry:
                return
            del self._entries[path]
        try:
            if entry.error is not None:
                self.quarantine.put(path, entry.error, self.name)
                self.stats.bump(quarantined=1)
            elif entry.failed:
                attempts = entry.attempts + 1
                if attempts >= MAX_ATTEMPTS:
                    self.quarantine.put(path, f"{path.name}: processing failed {attempts} times", self.name)
                    self.stats.bump(quarantined=1)
                else:
                    with self._lock:
                        self._retry_at[path] = (time.monotonic() + self.retry_base_s * 2**attempts, attempts)
            else:
                dest = self.processed_dir / path.name
                if dest.exists():
                    dest = dest.with_name(f"{dest.stem}-{time.time_ns()}{dest.suffix}")
                move_durably(path, dest)
        except OSError as e:
            msg = f"{path}: cannot move out of incoming ({e.strerror}); it will be re-processed"
            self.stats.error(msg)
            self.log.error("%s", msg)
        self.journal.end(path)  # finished (moved, quarantined or waiting for a retry): not a crash

    def pending(self) -> int:
        with self._lock:
            return len(self._entries)
