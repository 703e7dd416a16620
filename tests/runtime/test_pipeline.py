"""Pipeline: stored frames are never dropped and completed after publish; live frames are latest-wins with
drop counts; video events are smoothed; bad frames are reported and skipped; metrics are live."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import numpy as np
import pytest

from edge.commands.replay import MemorySink
from edge.config import ModelConfig
from edge.findings import ModelRef
from edge.frames import Frame, StudyRef
from edge.inference.backends import build_backend
from edge.inference.bundle import load_bundle
from edge.inference.preprocess import Preprocessor
from edge.inference.tasks import build_task
from edge.runtime.finding_builder import FindingBuilder
from edge.runtime.metrics import Metrics
from edge.runtime.pipeline import Pipeline, PipelineSettings
from tests.support.bundles import blob_image, write_bundle
from tests.support.sources import ListSource


class SlowBackend:
    """The real ONNX Runtime backend plus a fixed delay, standing in for a model slower than the camera."""

    def __init__(self, inner, delay_s):
        self.inner, self.delay_s = inner, delay_s
        self.name, self.provider, self.input_name = inner.name, inner.provider, inner.input_name

    def run(self, x):
        time.sleep(self.delay_s)
        return self.inner.run(x)

    def close(self):
        self.inner.close()


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    b = load_bundle(write_bundle(tmp_path_factory.mktemp("p") / "b"))
    be = build_backend(b, ModelConfig(name="m", bundle=b.root, require_signature=False, warmup_runs=1))
    return b, be


def _pipeline(parts, source, delay_s=0.0, depth=2, metrics=None, **settings):
    b, be = parts
    sink = MemorySink()
    p = Pipeline(source=source, preprocessor=Preprocessor(b.manifest.preprocess),
                 backend=SlowBackend(be, delay_s) if delay_s else be, task=build_task(b.manifest),
                 builder=FindingBuilder("dev-1", ModelRef(b.manifest.name, b.manifest.version, b.model_sha256())),
                 sink=sink, metrics=metrics or Metrics(), settings=PipelineSettings(queue_depth=depth, **settings))
    return p, sink.found


def _stored(i, bright, sop=None, count=None, index=None):
    return Frame(pixels=blob_image(box=(30, 30, 70, 70) if bright else None), modality="US", source="folder",
                 index=i if index is None else index, spacing_mm=(0.4, 0.4), frame_count=count,
                 study=StudyRef("1.2", "1.2.3", sop or f"1.2.3.{i}"))


def test_stored_frames_never_dropped_and_completed_in_order_after_publish(parts):
    src = ListSource([_stored(i, bright=i % 3 == 0) for i in range(24)])
    p, store = _pipeline(parts, src, delay_s=0.01, depth=2)
    completed_at_publish = []
    p.on_finding = lambda f, new: completed_at_publish.append(len(src.completed))
    assert p.start().join(30)
    assert src.completed == [(i, True) for i in range(24)]
    assert len(store) == 8 and p.metrics.snapshot()["total"]["dropped"] == 0
    # each finding was published before its own frame was completed
    assert completed_at_publish == [i for i in range(24) if i % 3 == 0]


def test_pipeline_sets_opencv_worker_pool_from_settings(parts):
    import cv2

    before = cv2.getNumThreads()
    try:
        for n in (1, 2):
            p, _ = _pipeline(parts, ListSource([_stored(0, bright=False)]), opencv_threads=n)
            assert p.start().join(30) and cv2.getNumThreads() == n
    finally:
        cv2.setNumThreads(before)


def test_pipeline_sets_the_interpreter_switch_interval_from_settings(parts):
    import sys

    from edge.config import PipelineConfig

    before = sys.getswitchinterval()
    try:
        for ms in (0.5, 2.0):
            p, _ = _pipeline(parts, ListSource([_stored(0, bright=False)]), gil_switch_ms=ms)
            assert p.start().join(30) and sys.getswitchinterval() == pytest.approx(ms / 1000)
        sys.setswitchinterval(0.003)
        p, _ = _pipeline(parts, ListSource([_stored(0, bright=False)]), gil_switch_ms=None)
        assert p.start().join(30) and sys.getswitchinterval() == pytest.approx(0.003)  # None: left as it was
        assert PipelineSettings.from_config(PipelineConfig(gil_switch_ms=1.5)).gil_switch_ms == 1.5
    finally:
        sys.setswitchinterval(before)


def test_live_frames_latest_wins_counts_drops_and_bounds_latency(parts):
    frames = [Frame(pixels=blob_image(box=None), modality="US", source="cam", index=i, live=True) for i in range(80)]
    src = ListSource(frames, interval_s=0.004)  # 250 fps camera, 25 ms model
    p, _ = _pipeline(parts, src, delay_s=0.025, depth=4)
    assert p.start().join(30)
    t = p.metrics.snapshot()["total"]
    assert t["frames_in"] == 80 and t["dropped"] > 40
    assert t["frames_done"] + t["dropped"] == 80
    # no backlog: a frame waits for at most about one inference in each queue
    assert t["latency_ms"]["p95"] < 150


def test_multiframe_object_flicker_gives_one_event_with_deterministic_id(parts):
    pattern = "000" + "1101111011110111" + "0000000"
    def obj():
        return [_stored(0, c == "1", sop="9.9.9", count=len(pattern), index=i) for i, c in enumerate(pattern)]
    p, store = _pipeline(parts, ListSource(obj()))
    assert p.start().join(30)
    (f,) = store.values()
    # a recorded object: the finding covers the whole episode (first to last positive frame), not its onset
    assert f.frame_range == (3, 18) and f.priority == "urgent" and f.measurements["area_mm2"] > 0
    assert 3 <= f.frame_index <= 18
    p2, store2 = _pipeline(parts, ListSource(obj()))  # re-processing after a restart
    assert p2.start().join(30)
    assert list(store2) == list(store)


def test_an_object_cut_short_is_reported_when_the_next_begins_and_a_stop_reports_nothing_partial(parts):
    """Episodes end with their object: at its last frame, when the next object starts (the source gave up on
    this one), or with the run; a shutdown part-way reports nothing (the durable source reads it again)."""
    cut = [_stored(0, i >= 2, sop="7.7.1", count=20, index=i) for i in range(12)]  # decoding stopped at frame 12
    nxt = [_stored(0, False, sop="7.7.2", count=10, index=i) for i in range(10)]
    src = ListSource(cut + nxt)
    p, store = _pipeline(parts, src)
    completed_when_found: list[int] = []
    p.on_finding = lambda f, new: completed_when_found.append(len(src.completed))
    assert p.start().join(30)
    (f,) = store.values()
    assert f.frame_range == (2, 11) and completed_when_found == [12]  # before anything of the next object completed
    # stopped in the middle of an object: no truncated finding (its id would shadow the whole episode's)
    stop = threading.Event()
    frames = [_stored(0, i >= 2, sop="7.7.3", count=200, index=i) for i in range(200)]
    src2 = ListSource(frames, interval_s=0.005)
    p2, store2 = _pipeline(parts, src2)
    p2.stop_event = stop
    p2.start()
    time.sleep(0.3)
    stop.set()
    assert p2.join(30) and 0 < src2.yielded < 200 and store2 == {}


def test_bad_frame_is_reported_and_the_stream_continues(parts, caplog):
    frames = [_stored(i, True) for i in range(4)]
    frames[1].pixels = np.zeros((0, 7), np.uint8)  # corrupt decode result
    src = ListSource(frames)
    p, store = _pipeline(parts, src)
    assert p.start().join(30)
    assert src.completed == [(0, True), (1, False), (2, True), (3, True)]
    assert len(store) == 3 and p.metrics.snapshot()["total"]["errors"] == 1
    assert "frame 1: preprocessing failed" in caplog.text


def test_stop_drains_admitted_frames(parts):
    src = ListSource([_stored(i, True) for i in range(200)], interval_s=0.002)
    p, store = _pipeline(parts, src, delay_s=0.01, depth=3)
    p.start()
    time.sleep(0.3)
    p.stop()
    assert p.join(30)
    assert 0 < len(src.completed) < 200
    assert len(src.completed) == src.yielded and all(ok for _, ok in src.completed) and len(store) == src.yielded


def test_metrics_file_and_http_endpoint_are_live(parts, tmp_path):
    m = Metrics(interval_s=0.1, file=tmp_path / "metrics.json", port=0)
    m.start()
    try:
        frames = [Frame(pixels=blob_image(), modality="US", source="cam", index=i, live=True) for i in range(40)]
        p, _ = _pipeline(parts, ListSource(frames, interval_s=0.01), metrics=m)
        p.start()
        time.sleep(0.3)
        mid = json.loads((tmp_path / "metrics.json").read_text())  # written while running, not only at exit
        assert mid["total"]["frames_done"] > 0
        assert p.join(30)
        with urllib.request.urlopen(f"http://127.0.0.1:{m.http_port}/metrics", timeout=5) as r:
            snap = json.loads(r.read())
        assert snap["sources"]["test"]["frames_done"] == 40 - snap["sources"]["test"]["dropped"]
        assert snap["total"]["latency_ms"]["p99"] is not None and snap["total"]["fps"] > 0
        assert "latency p50/p95/p99" in m.summary_line()
    finally:
        m.stop()


def test_live_video_flicker_gives_one_event_per_episode(parts):
    # two episodes of a bright region with single-frame dropouts, separated by a long empty stretch
    pattern = "0000" + "11011101111" + "0" * 12 + "1110111" + "0000"
    frames = [Frame(pixels=blob_image(box=(30, 30, 70, 70) if c == "1" else None), modality="US", source="cam", index=i,
                    live=True, spacing_mm=(0.3, 0.3)) for i, c in enumerate(pattern)]
    p, store = _pipeline(parts, ListSource(frames, interval_s=0.01), depth=8, on_frames=3, off_frames=5,
                         smoothing_window=4)
    assert p.start().join(30)
    assert p.metrics.snapshot()["total"]["dropped"] == 0  # the toy model keeps up, so the count is exact
    evs = sorted(store.values(), key=lambda f: f.frame_range)
    assert [f.frame_range[0] for f in evs] == [4, 27]
    assert all(f.frame_range[1] <= f.frame_range[0] + 4 for f in evs)  # live: alerted at confirmation
    assert all(f.latency_ms is not None and f.latency_ms >= 0 for f in evs)
    assert evs[0].finding_id != evs[1].finding_id and len({f.finding_id for f in evs}) == 2
