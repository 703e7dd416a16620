"""Bookkeeping shared by the two durable sources (dicom-folder, dicom-store).

A received object is the only copy of a finding's input until its findings are in the outbox, so the
file stays in the incoming folder until `complete()` has been called for every frame decoded from it;
then it moves to ``processed/``. A crash before that leaves it in incoming, and the next start
re-processes it (finding ids are deterministic, so the outbox deduplicates). Bad objects are quarantined
with their one-line reason. A frame the pipeline could not finish (``ok=False``: outbox full, backend
error) is retried a few times with backoff before the object is quarantined, so one poisonous object
cannot loop forever and a transient failure does not lose an object.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..dicom import frames_from_file
from ..durable_files import move_durably
from ..errors import InputError
from ..frames import Frame
from ..quarantine import Quarantine
from . import SourceStats

MAX_ATTEMPTS = 3


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

    def __init__(self, name: str, processed_dir: Path, quarantine: Quarantine, stats: SourceStats, log,
                 retry_base_s: float = 1.0) -> None:
        self.name = name
        self.processed_dir = Path(processed_dir)
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
            for frame in frames_from_file(path, self.name):
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

    def pending(self) -> int:
        with self._lock:
            return len(self._entries)
