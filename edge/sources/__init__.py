"""Where frames come from: live video, a watched DICOM folder, a C-STORE receiver, or a replayed file.

Every source has the same small surface (`Source`) so the pipeline does not care which one it runs.
Sources never stop on bad input: a refused object is logged in one line, counted in `SourceStats` and
quarantined, and the next one is read.

Kinds are registered once, in `SOURCE_KINDS`: the module and class that implement the kind (imported
only when a profile uses it), its profile checks (run by `medge config check` and at start) and what
`medge doctor` looks at on the device. Adding a source: one entry here and one module.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edge.config import SourceConfig
from edge.errors import ConfigError
from edge.frames import Frame
from edge.imaging.limits import DEFAULT_LIMITS, DecodeLimits
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


Problem = tuple[str, str, str]  # (key below the source entry, what is wrong, what to do)


def _none(*_: Any) -> list:
    return []


@dataclass(frozen=True)
class SourceKind:
    name: str
    module: str  # implements the kind
    cls: str
    check: Callable[[SourceConfig, bool], list[Problem]] = _none  # (source, files exist?) -> profile problems
    preflight: Callable[[SourceConfig], list[str]] = _none  # what doctor warns about on this device
    listens: bool = False  # binds ``port`` (no two sources, nor the metrics endpoint, may share one)
    # the modality the profile declares for this source's frames (None: each object says its own)
    declared_modality: Callable[[SourceConfig], str | None] = lambda s: s.default_modality

    def load(self) -> type:
        return getattr(importlib.import_module(self.module), self.cls)


def _check_video(s: SourceConfig, check_files: bool) -> list[Problem]:
    return [] if (s.device is not None or s.url or s.path) else [("", "video needs one of device, url or path", "")]


def _preflight_video(s: SourceConfig) -> list[str]:
    if s.device is not None and not Path(f"/dev/video{s.device}").exists():
        return [f"/dev/video{s.device} not present; is the frame grabber plugged in? medge will keep retrying"]
    return []


def _check_folder(s: SourceConfig, check_files: bool) -> list[Problem]:
    return [] if s.path is not None else [("path", "dicom-folder needs a folder to watch", "")]


def _preflight_folder(s: SourceConfig) -> list[str]:
    if s.path is not None and not s.path.is_dir():
        return [f"folder {s.path} does not exist yet; medge waits for it"]
    return []


def _check_store(s: SourceConfig, check_files: bool) -> list[Problem]:
    out: list[Problem] = []
    if not s.allowed_aes:
        out.append(("allowed_aes", "is empty: the C-STORE receiver would accept nobody",
                    "list the AE titles of the modalities allowed to send"))
    if not 1 <= len(s.ae_title) <= 16:
        out.append(("ae_title", "must be 1-16 characters (DICOM AE title)", ""))
    return out


def _replay_modality(s: SourceConfig) -> str | None:
    from edge.imaging.dicom import is_dicom_file

    return s.default_modality if s.path is not None and is_dicom_file(s.path) else s.modality


def _check_replay(s: SourceConfig, check_files: bool) -> list[Problem]:
    if s.path is None or (check_files and not s.path.is_file()):
        return [("path", "replay needs an existing file" if s.path else "replay needs a path",
                 "point it at a multi-frame DICOM or a video file")]
    return []


SOURCE_KINDS: dict[str, SourceKind] = {k.name: k for k in (
    SourceKind("video", "edge.sources.video", "VideoSource", _check_video, _preflight_video,
               declared_modality=lambda s: s.modality),
    SourceKind("dicom-folder", "edge.sources.dicom_folder", "DicomFolderSource", _check_folder, _preflight_folder),
    SourceKind("dicom-store", "edge.sources.dicom_store", "DicomStoreSource", _check_store, listens=True),
    SourceKind("replay", "edge.sources.replay", "ReplaySource", _check_replay, declared_modality=_replay_modality),
)}


def build_source(cfg: SourceConfig, ctx: SourceContext) -> Source:
    """The source for one profile entry. Nothing is opened or bound until `frames()` (or `start()`)."""
    kind = SOURCE_KINDS.get(cfg.kind)
    if kind is None:
        raise ConfigError(f"source {cfg.name!r}: unknown kind {cfg.kind!r}; use one of {', '.join(SOURCE_KINDS)}")
    return kind.load()(cfg, ctx)
