"""A DICOM C-STORE receiver (SCP), the way an ambulance X-ray console pushes images.

The sender deletes its copy when we answer Success, so Success (0x0000) is only returned after the object
is durably on disk: written to a hidden temp file, fsynced, renamed into ``<data_dir>/incoming/<source>/``,
and the directory fsynced. If that fails the answer is 0xA700 (Out of Resources) and the sender keeps
the object and retries. Only the configured calling AE titles may associate (anyone else is rejected
at association, "calling AE title not recognised"). Decoding happens later, in `frames()`, so a slow
model never makes the sender time out.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from edge.config import SourceConfig
from edge.durable_files import write_atomic
from edge.errors import ConfigError
from edge.frames import Frame
from edge.sources import SourceContext, SourceStats
from edge.sources.durable import DurableInbox

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
_SAFE_UID = re.compile(r"^[0-9.]{1,64}$")


class DicomStoreSource:
    def __init__(self, cfg: SourceConfig, ctx: SourceContext) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.stats = SourceStats()
        self.log = ctx.log(cfg.name)
        self.incoming = Path(ctx.data_dir) / "incoming" / cfg.name
        self.inbox = DurableInbox(cfg.name, Path(ctx.data_dir) / "processed" / cfg.name, ctx.quarantine(cfg.name),
                                  self.stats, self.log, retry_base_s=max(cfg.poll_interval_s, 0.5),
                                  journal_dir=Path(ctx.data_dir) / "attempts" / cfg.name, limits=ctx.limits,
                                  default_modality=cfg.default_modality)
        self._server: Any = None
        self._queue: deque[Path] = deque()
        self._queued: set[Path] = set()
        self._cv = threading.Condition()
        self.rejected_associations = 0

    # ------------------------------------------------------------------------------------- server
    def start(self) -> None:
        """Bind and listen (idempotent). Objects already in incoming from a previous run are queued."""
        if self._server is not None:
            return
        self.incoming.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.cfg.ae_title)
        ae.require_calling_aet = list(self.cfg.allowed_aes)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_REJECTED, self._on_rejected)]
        try:
            self._server = ae.start_server((self.cfg.bind, self.cfg.port), block=False, evt_handlers=handlers)
        except OSError as e:
            raise ConfigError(f"source {self.name}: cannot listen on {self.cfg.bind}:{self.cfg.port} ({e.strerror}); "
                              "is another receiver running?") from None
        self.log.info("C-STORE SCP %s listening on %s:%d for %s", self.cfg.ae_title, self.cfg.bind, self.cfg.port,
                      ", ".join(self.cfg.allowed_aes))
        self._scan_incoming()

    def _on_rejected(self, event: Any) -> None:
        self.rejected_associations += 1
        peer = f"{event.assoc.requestor.address}:{event.assoc.requestor.port}"
        msg = f"source {self.name}: association from {peer} AE {event.assoc.requestor.ae_title!r} rejected (not in allowed_aes)"
        self.stats.error(msg)
        self.log.warning("%s", msg)

    def _on_store(self, event: Any) -> int:
        sop = str(event.request.AffectedSOPInstanceUID or "")
        name = (sop if _SAFE_UID.match(sop) else uuid.uuid4().hex) + ".dcm"
        dest = self.incoming / name
        if dest.exists():  # the same instance again (a resend, or a different object claiming its UID):
            # keep both rather than replace one not yet processed; deterministic finding ids absorb a resend
            dest = dest.with_name(f"{dest.stem}-{uuid.uuid4().hex[:8]}.dcm")
            name = dest.name
        try:
            write_atomic(dest, event.encoded_dataset(include_meta=True), mode=0o640)
        except OSError as e:
            msg = f"source {self.name}: cannot store {name} ({e.strerror or e}); answered 0xA700 Out of Resources"
            self.stats.error(msg)
            self.log.error("%s", msg)
            return STATUS_OUT_OF_RESOURCES
        self._enqueue(dest)
        return STATUS_SUCCESS

    def _enqueue(self, path: Path) -> None:
        with self._cv:
            if path not in self._queued:
                self._queued.add(path)
                self._queue.append(path)
                self._cv.notify_all()

    def _scan_incoming(self) -> None:
        """Queue objects left over from a crash or waiting for a retry (oldest first)."""
        try:
            files = sorted((p for p in self.incoming.iterdir() if p.is_file() and not p.name.startswith(".")),
                           key=lambda p: p.stat().st_mtime_ns)
        except OSError:
            return
        for p in files:
            if not self.inbox.busy(p):
                self._enqueue(p)

    # ------------------------------------------------------------------------------------- frames
    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        self.start()
        next_scan = time.monotonic() + self.cfg.poll_interval_s
        while not stop.is_set():
            with self._cv:
                if not self._queue:
                    self._cv.wait(timeout=min(0.2, self.cfg.poll_interval_s))
                path = self._queue.popleft() if self._queue else None
                if path is not None:
                    self._queued.discard(path)
            if path is not None and path.exists() and not self.inbox.busy(path):
                yield from self.inbox.frames(path, stop)
            if time.monotonic() >= next_scan:
                self._scan_incoming()
                next_scan = time.monotonic() + self.cfg.poll_interval_s

    def complete(self, frame: Frame, ok: bool) -> None:
        self.inbox.complete(frame, ok)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server is not None else self.cfg.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
