"""Driving a source as the pipeline does, without the pipeline."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import SourceConfig
from edge.sources import SourceContext


class ListSource:
    """A finite in-test source implementing the Source protocol; records completions."""

    def __init__(self, frames, name="test", interval_s=0.0):
        self.name = name
        self._frames = frames
        self.interval_s = interval_s
        self.completed: list[tuple[int, bool]] = []
        self.yielded = 0

    def frames(self, stop: threading.Event):
        for f in self._frames:
            if stop.is_set():
                return
            if self.interval_s:
                time.sleep(self.interval_s)
            f.captured_at = time.monotonic()
            self.yielded += 1
            yield f

    def complete(self, frame, ok):
        self.completed.append((frame.index, ok))

    def close(self):
        pass


class Runner:
    """Plays the pipeline's part: pulls frames in a thread and completes each one (ok unless told)."""

    def __init__(self, src, ok: bool = True, complete: bool = True):
        self.src, self.ok, self.do_complete = src, ok, complete
        self.frames: list = []
        self.times: list[float] = []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        for f in self.src.frames(self.stop):
            self.frames.append(f)
            self.times.append(time.monotonic())
            if self.do_complete:
                self.src.complete(f, self.ok)

    def wait_for(self, cond, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return True
            time.sleep(0.02)
        return False

    def finish(self, timeout: float = 5.0):
        self.stop.set()
        self.t.join(timeout)
        assert not self.t.is_alive()
        self.src.close()


def ctx(tmp_path: Path) -> SourceContext:
    return SourceContext(data_dir=tmp_path / "data")


def folder_cfg(watch: Path, **kw) -> SourceConfig:
    return SourceConfig(name="drop", kind="dicom-folder", model="m", path=watch, settle_s=0.0, poll_interval_s=0.05, **kw)


def write_video(path: Path, n: int = 12, fps: float = 25.0) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    if not w.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG video")
    for i in range(n):
        img = np.zeros((48, 64, 3), np.uint8)
        img[..., 2] = 255  # BGR red
        img[:, : 4 + i] = 0
        w.write(img)
    w.release()
    return path
