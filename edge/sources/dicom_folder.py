"""A folder a modality console (or a USB stick copy) drops DICOM files into.

Consoles write files in place, so a file is only read once it has kept the same size and modification
time across two polls and is at least ``settle_s`` old; temp/partial/hidden names are never read. A
processed file moves to ``<data_dir>/processed/<source>/``; a refused one to the quarantine folder.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

from edge.config import SourceConfig
from edge.frames import Frame
from edge.sources import SourceContext, SourceStats
from edge.sources.durable import DurableInbox

PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".filepart", ".crdownload", ".lock")


def is_candidate(path: Path, root: Path) -> bool:
    rel = path.relative_to(root)
    if any(part.startswith(".") for part in rel.parts):
        return False
    name = path.name.lower()
    return not (name.endswith(PARTIAL_SUFFIXES) or name.endswith("~") or name.endswith(".reason.txt"))


class DicomFolderSource:
    def __init__(self, cfg: SourceConfig, ctx: SourceContext) -> None:
        if cfg.path is None:
            raise ValueError("dicom-folder needs a path")  # config validation already refuses this
        self.name = cfg.name
        self.cfg = cfg
        self.folder = Path(cfg.path)
        self.stats = SourceStats()
        self.log = ctx.log(cfg.name)
        self.inbox = DurableInbox(cfg.name, Path(ctx.data_dir) / "processed" / cfg.name, ctx.quarantine(cfg.name),
                                  self.stats, self.log, retry_base_s=max(cfg.poll_interval_s, 0.5),
                                  journal_dir=Path(ctx.data_dir) / "attempts" / cfg.name, limits=ctx.limits,
                                  default_modality=cfg.default_modality)
        self._seen: dict[Path, tuple[int, int]] = {}
        self._missing_logged = False

    def ready_files(self) -> list[Path]:
        """Files that have stopped changing (see the module docstring), oldest first."""
        if not self.folder.is_dir():
            if not self._missing_logged:
                self.log.error("%s: watched folder does not exist (waiting for it)", self.folder)
                self._missing_logged = True
            return []
        self._missing_logged = False
        now = time.time()
        seen: dict[Path, tuple[int, int]] = {}
        ready: list[tuple[int, Path]] = []
        for p in self.folder.rglob("*"):
            try:
                if not p.is_file() or not is_candidate(p, self.folder):
                    continue
                st = p.stat()
            except OSError:
                continue  # vanished between listing and stat
            sig = (st.st_size, st.st_mtime_ns)
            seen[p] = sig
            if self._seen.get(p) == sig and now - st.st_mtime >= self.cfg.settle_s:
                ready.append((st.st_mtime_ns, p))
        self._seen = seen
        return [p for _, p in sorted(ready)]

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        while not stop.is_set():
            batch = [p for p in self.ready_files() if not self.inbox.busy(p)]
            for p in batch:
                if stop.is_set():
                    return
                if p.exists():
                    yield from self.inbox.frames(p, stop)
            stop.wait(self.cfg.poll_interval_s)

    def complete(self, frame: Frame, ok: bool) -> None:
        self.inbox.complete(frame, ok)

    def close(self) -> None:
        pass
