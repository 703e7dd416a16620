"""Replay a recorded multi-frame DICOM (an ultrasound cine) or a video file, for demos, validation and
`medge replay`, at the recorded frame rate (``realtime``) or as fast as the pipeline takes frames.

Real-time pacing follows an absolute schedule (frame i at t0 + i/rate) so sleep jitter does not
accumulate; if the pipeline stalls (backpressure: replayed frames are never dropped) the schedule is moved
forward instead of bursting to catch up, as a cine player would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

from edge.config import SourceConfig
from edge.errors import InputError, one_line
from edge.frames import Frame
from edge.imaging.dicom import frames_from_file, is_dicom_file
from edge.imaging.video import read_video
from edge.sources import SourceContext, SourceStats


class ReplaySource:
    def __init__(self, cfg: SourceConfig, ctx: SourceContext) -> None:
        if cfg.path is None:
            raise ValueError("replay needs a path")  # config validation already refuses this
        self.name = cfg.name
        self.cfg = cfg
        self.path = Path(cfg.path)
        self.stats = SourceStats()
        self.log = ctx.log(cfg.name)
        self.limits = ctx.limits
        self.frame_rate: float | None = None

    def _video_frames(self) -> Iterator[Frame]:
        for index, pixels, info in read_video(self.path):
            yield Frame(pixels=pixels, modality=self.cfg.modality, source=self.name, index=index,
                        frame_rate=info.frame_rate, live=False, origin=self.path, frame_count=info.frames)

    def _one_pass(self, stop: threading.Event) -> Iterator[Frame]:
        it = (frames_from_file(self.path, self.name, self.limits, self.cfg.default_modality)
              if is_dicom_file(self.path) else self._video_frames())
        t0 = time.monotonic()
        warned = False
        for i, frame in enumerate(it):
            self.stats.bump(received=1)
            rate = frame.frame_rate
            if self.cfg.max_fps:
                rate = min(rate, self.cfg.max_fps) if rate else self.cfg.max_fps
            if self.cfg.realtime:
                if rate:
                    self.frame_rate = rate
                    delay = t0 + i / rate - time.monotonic()
                    if delay > 0:
                        if stop.wait(delay):
                            return
                    elif delay < -2.0 / rate:  # stalled downstream: move the schedule, don't burst
                        t0 -= delay
                elif not warned:
                    self.log.info("%s: no recorded frame rate; replaying as fast as possible", self.path.name)
                    warned = True
            if stop.is_set():
                return
            frame.captured_at = time.monotonic()
            self.stats.bump(accepted=1)
            yield frame

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        while not stop.is_set():
            try:
                yield from self._one_pass(stop)
            except InputError as e:
                self.stats.error(str(e))
                self.log.error("%s", e)
                return
            except Exception as e:  # a malformed file ends its replay, not the daemon
                msg = f"{self.path}: cannot be replayed ({one_line(e)})"
                self.stats.error(msg)
                self.log.error("%s", msg)
                return
            if not self.cfg.loop:
                return

    def complete(self, frame: Frame, ok: bool) -> None:
        pass  # the replayed file is the operator's; it is never moved

    def close(self) -> None:
        pass
