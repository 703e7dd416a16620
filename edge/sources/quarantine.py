"""Bad input leaves the processing path but is never deleted: it goes to a quarantine folder with a
one-line reason next to it, so on-site staff can see what a modality sent and why medge refused it.

The reason sidecar is written (temp, fsync, rename) *before* the file is moved: a crash in between leaves
the input where it was, and the source re-processes and re-quarantines it, rather than leaving a
quarantined file nobody can explain.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from edge.durable_files import move_durably, write_atomic

REASON_SUFFIX = ".reason.txt"


@dataclass(frozen=True)
class Quarantined:
    original: Path
    path: Path
    reason: str


class Quarantine:
    """A quarantine folder plus a count of what this process put there (for source statistics)."""

    def __init__(self, directory: Path, logger: logging.Logger | None = None) -> None:
        self.directory = Path(directory)
        self.log = logger or logging.getLogger("medge.quarantine")
        self._lock = threading.Lock()
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def put(self, path: Path, reason: str, source: str | None = None) -> Quarantined:
        """Move ``path`` into quarantine with ``reason`` (one line) beside it; returns where it went."""
        path = Path(path)
        reason = " ".join(str(reason).split())  # always one line
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        dest = self.directory / f"{stamp}-{uuid.uuid4().hex[:6]}-{path.name}"
        line = f"{reason}\nsource: {source or '-'}\noriginal: {path.name}\nat: {stamp}Z\n"
        write_atomic(dest.with_name(dest.name + REASON_SUFFIX), line.encode())
        move_durably(path, dest)
        with self._lock:
            self._count += 1
        self.log.warning("quarantined %s: %s", path.name, reason)
        return Quarantined(original=path, path=dest, reason=reason)

    def list(self) -> list[Quarantined]:
        """Everything in the folder (also from earlier runs), oldest first."""
        out = []
        if not self.directory.is_dir():
            return out
        for side in sorted(self.directory.glob("*" + REASON_SUFFIX)):
            data = side.with_name(side.name[: -len(REASON_SUFFIX)])
            reason = side.read_text().splitlines()[0] if side.stat().st_size else ""
            out.append(Quarantined(original=Path(data.name.split("-", 2)[-1]), path=data, reason=reason))
        return out
