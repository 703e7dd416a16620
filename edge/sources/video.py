"""Live video from a frame grabber (ultrasound HDMI/SDI capture), a camera device, or an RTSP/GStreamer URL.

Frame grabbers get unplugged and network streams drop, so a read failure is never fatal: the capture is
released and re-opened with exponential backoff (0.5 s doubling up to ``reopen_backoff_max_s``) until it
comes back or the daemon stops. Frames are ``live``: the pipeline keeps only the newest when the model
is slower than the camera, so findings are about what is on screen now. A plain video *file* given as
``path`` is finite (it ends, or loops with ``loop: true``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import cv2

from edge.config import SourceConfig
from edge.errors import one_line
from edge.frames import Frame
from edge.imaging.video import capture_fps, to_rgb
from edge.sources import SourceContext, SourceStats

BACKOFF_MIN_S = 0.5
NET_TIMEOUT_MS = 5000


class VideoSource:
    def __init__(self, cfg: SourceConfig, ctx: SourceContext) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.stats = SourceStats()
        self.log = ctx.log(cfg.name)
        if cfg.device is not None:
            self.target: int | str = int(cfg.device)
        elif cfg.url is not None:
            self.target = cfg.url
        else:
            self.target = str(cfg.path)
        self.finite = cfg.device is None and cfg.url is None
        self.frame_rate: float | None = None

    def _open(self) -> Any | None:
        t = self.target
        if isinstance(t, str) and " ! " in t:  # a GStreamer pipeline (Jetson capture cards)
            cap = cv2.VideoCapture(t, cv2.CAP_GSTREAMER)
        elif isinstance(t, str) and "://" in t:
            # bounded open/read: a dropped RTSP stream must fail in seconds, not block the reopen loop forever
            cap = cv2.VideoCapture(t, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, NET_TIMEOUT_MS,
                                                       cv2.CAP_PROP_READ_TIMEOUT_MSEC, NET_TIMEOUT_MS])
        else:
            cap = cv2.VideoCapture(t)
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        first_backoff = min(BACKOFF_MIN_S, self.cfg.reopen_backoff_max_s)
        backoff = first_backoff
        index = 0
        last_emit = 0.0
        min_interval = 1.0 / self.cfg.max_fps if self.cfg.max_fps else 0.0
        opened_before = False
        while not stop.is_set():
            cap = self._open()
            if cap is None:
                msg = f"video {self.target}: cannot open"
                if self.finite:
                    self.stats.error(msg)
                    self.log.error("%s", msg)
                    return
                self.stats.error(msg)
                self.log.warning("%s; retrying in %.1f s", msg, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, self.cfg.reopen_backoff_max_s)
                continue
            if opened_before:
                self.stats.bump(reopens=1)
                self.log.info("video %s: re-opened", self.target)
            opened_before = True
            self.frame_rate = capture_fps(cap)
            got_any = False
            try:
                while not stop.is_set():
                    ok, img = cap.read()
                    if not ok or img is None:
                        break
                    got_any = True
                    backoff = first_backoff
                    self.stats.bump(received=1)
                    now = time.monotonic()
                    if min_interval and now - last_emit < min_interval:
                        self.stats.bump(dropped=1)
                        continue
                    last_emit = now
                    self.stats.bump(accepted=1)
                    yield Frame(pixels=to_rgb(img), modality=self.cfg.modality, source=self.name, index=index,
                                frame_rate=self.frame_rate, captured_at=now, live=True)
                    index += 1
            except Exception as e:  # a frame the capture backend or the conversion chokes on: re-open
                msg = f"video {self.target}: frame cannot be read ({one_line(e)})"
                self.stats.error(msg)
                self.log.error("%s", msg)
            finally:
                cap.release()
            if stop.is_set():
                return
            if self.finite:
                if self.cfg.loop and got_any:
                    continue
                return
            msg = f"video {self.target}: read failed (unplugged or stream ended)"
            self.stats.error(msg)
            self.log.warning("%s; re-opening in %.1f s", msg, backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, self.cfg.reopen_backoff_max_s)

    def complete(self, frame: Frame, ok: bool) -> None:
        pass  # live frames are not durable: nothing to keep or move

    def close(self) -> None:
        pass  # the capture is released when frames() ends
