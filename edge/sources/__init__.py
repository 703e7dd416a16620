"""Where frames come from: live video, a watched DICOM folder, a C-STORE receiver, or a replayed file.

Every source has the same small surface (`Source`) so the pipeline does not care which one it runs.
Sources never stop on bad input: a refused object is logged in one line, counted in `SourceStats` and
quarantined, and the next one is read.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edge.config import SourceConfig
from edge.errors import ConfigError
from edge.frames import Frame
from edge.imaging.dicom_guard import DEFAULT_LIMITS, DecodeLimits
from edge.sources.quarantine import Quarantine


@dataclass
class SourceStats:
    """Counters a source keeps for metrics and `medge doctor` (thread-safe increments)."""

    received: int = 0  # objects (files, C-STORE requests) or raw video frames read
    accepted: int = 0  # frames handed to the pipeline
    quarantined: int = 0  # objects refused and moved to quarantine
    dropped: int = 0  # frames skipped by the source itself (max_fps)
    errors: int = 0  # read/decode/processing failures (each one also logged)
    reopens: int = 0  # video device/stream re-opened after a failure
    last_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def bump(self, **counts: int) -> None:
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def error(self, message: str) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = message

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {k: getattr(self, k) for k in ("received", "accepted", "quarantined", "dropped", "errors", "reopens",
                                                  "last_error")}


class Source(Protocol):
    name: str
    stats: SourceStats

    def frames(self, stop: threading.Event) -> Iterator[Frame]: ...  # ends when a finite source is exhausted or stop is set

    def complete(self, frame: Frame, ok: bool) -> None: ...  # the frame's findings are durably in the outbox

    def close(self) -> None: ...


@dataclass
class SourceContext:
    """What a source needs from the daemon: where to keep files, how to report, how large an object may be."""

    data_dir: Path
    quarantine_dir: Path | None = None  # default: <data_dir>/quarantine
    logger: logging.Logger | None = None
    device_id: str | None = None
    limits: DecodeLimits = DEFAULT_LIMITS

    def log(self, name: str) -> logging.Logger:
        return self.logger or logging.getLogger(f"medge.source.{name}")

    def quarantine(self, name: str) -> Quarantine:
        return Quarantine(self.quarantine_dir or Path(self.data_dir) / "quarantine", self.log(name))


def build_source(cfg: SourceConfig, ctx: SourceContext) -> Source:
    """The source for one profile entry. Nothing is opened or bound until `frames()` (or `start()`)."""
    if cfg.kind == "video":
        from edge.sources.video import VideoSource

        return VideoSource(cfg, ctx)
    if cfg.kind == "dicom-folder":
        from edge.sources.dicom_folder import DicomFolderSource

        return DicomFolderSource(cfg, ctx)
    if cfg.kind == "dicom-store":
        from edge.sources.dicom_store import DicomStoreSource

        return DicomStoreSource(cfg, ctx)
    if cfg.kind == "replay":
        from edge.sources.replay import ReplaySource

        return ReplaySource(cfg, ctx)
    raise ConfigError(f"source {cfg.name!r}: unknown kind {cfg.kind!r}")
