"""The real-time pipeline: capture -> preprocess -> infer -> postprocess+publish, overlapping in threads.

Why threads and small bounded queues: every heavy step (JPEG decode, cv2 resize, ONNX Runtime, cv2
contours) releases the GIL, so while the model runs on frame *n* the next frame is already being
preprocessed and the previous one post-processed, and a queue depth of a few frames bounds memory and
latency.

Two admission rules, chosen per frame by `Frame.live`:

* live video is **latest-frame-wins**: a queue holds at most one waiting live frame, and a newer one
  replaces it (counted as dropped). A model slower than the camera therefore never builds a backlog and
  the finding is about what is on screen now.
* stored objects (DICOM files, studies) are **never dropped**: the capture stage blocks until there is
  room (backpressure onto the source), and every frame ends with ``source.complete(frame, ok)`` *after*
  its findings are durably in the outbox, which is what lets durable sources delete their input.

Before a frame is preprocessed it is checked against the model's intended use (`edge.inference.
intended_use`): a frame the model was not made for is not inferred at all; it is counted per reason,
logged once per source and reason, and a stored object gets one non-clinical `DeviceEvent` in the outbox,
so the hospital knows the object was not read (rather than read and found normal). After preprocessing,
the tensor goes to the model's `DriftMonitor` (when its bundle has reference statistics): findings from a
frame far outside the reference are marked needs_review with the reason, and persistent drift of the
recent frames becomes one drift event.

On stop the capture stage stops pulling from the source and everything already admitted drains to the end.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np

from edge.durable_files import write_atomic
from edge.errors import MedgeError, cause_line
from edge.events import DeviceEvent
from edge.findings import Finding
from edge.frames import Frame
from edge.imaging.relink import OriginSealer
from edge.inference.backends import Backend
from edge.inference.drift import DriftMonitor, FrameCheck, MonitorSettings
from edge.inference.intended_use import IntendedUse, Refusal
from edge.inference.preprocess import Geometry, Preprocessor
from edge.inference.reference import peak_confidence
from edge.inference.smoothing import Event, Hysteresis
from edge.inference.tasks import Detection, Task
from edge.inference.tasks.overlay import OverlayPolicy
from edge.runtime.finding_builder import FindingBuilder, PseudonymFn
from edge.runtime.metrics import Metrics

if TYPE_CHECKING:
    from edge.config import Config, PipelineConfig
    from edge.inference.loaded_model import LoadedModel
    from edge.sources import Source


class FindingSink(Protocol):
    """Where a frame's findings go: the outbox on the device, a dict in `medge replay`."""

    def store(self, findings: list[Finding | DeviceEvent]) -> list[bool]: ...  # durable on return; per record: new?

_END = object()


class FrameQueue:
    """Bounded hand-off between two stages with the two admission rules described in the module doc."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = max(1, maxsize)
        self._q: deque = deque()
        self._cv = threading.Condition()
        self._aborted = False

    def put(self, item: Any, live: bool) -> Any | None:
        """Add an item; returns the live item it displaced (dropped), if any. Blocks for non-live items.
        After `abort` nothing is added and nothing blocks: the stage that would take it is gone, so the
        frame is abandoned uncompleted (a durable source keeps its input for the next start)."""
        with self._cv:
            if self._aborted:
                return None
            if live:
                for i, old in enumerate(self._q):
                    if old is not _END and old.frame.live:
                        del self._q[i]
                        self._q.append(item)
                        self._cv.notify_all()
                        return old
            while len(self._q) >= self.maxsize and not self._aborted:
                self._cv.wait()
            if self._aborted:
                return None
            self._q.append(item)
            self._cv.notify_all()
            return None

    def close(self) -> None:
        with self._cv:
            self._q.append(_END)
            self._cv.notify_all()

    def abort(self) -> None:
        """The consuming stage died: wake and refuse producers; what is queued can still be taken."""
        with self._cv:
            self._aborted = True
            self._q.append(_END)
            self._cv.notify_all()

    def get(self) -> Any:
        with self._cv:
            while not self._q:
                self._cv.wait()
            item = self._q.popleft()
            self._cv.notify_all()
            return item

    def get_nowait(self) -> Any | None:
        """The next item if one is waiting, else None (items are never None)."""
        with self._cv:
            if not self._q:
                return None
            item = self._q.popleft()
            self._cv.notify_all()
            return item

    def __len__(self) -> int:
        return len(self._q)


@dataclass
class Work:
    frame: Frame
    tensor: np.ndarray | None = None
    geom: Geometry | None = None
    outputs: dict[str, np.ndarray] | None = None
    error: str | None = None
    refused: list[Refusal] | None = None  # outside the model's intended use: not inferred
    check: FrameCheck | None = None  # the drift monitor's view of this frame
    t_pre_ms: float = 0.0
    t_infer_ms: float = 0.0


@dataclass
class PipelineSettings:
    queue_depth: int = 4
    on_frames: int = 3
    off_frames: int = 5
    smoothing_window: int = 5
    drain_timeout_s: float = 60.0
    # OpenCV's own worker pool (cv2.setNumThreads, process-wide; None leaves OpenCV's default). The stages
    # already overlap, and OpenCV splitting a small resize across both cores of a 2-core device preempts
    # ONNX Runtime's workers, which wait for their slowest thread: 1 measured ~0.95 of bare session.run fps
    # vs ~0.85 with OpenCV's default (benchmarks/bench_pipeline.py).
    opencv_threads: int | None = 1
    # Python's switch interval (sys.setswitchinterval, process-wide; None leaves Python's 5 ms). When the runtime
    # returns a result, the infer thread needs the interpreter lock back; with the default it can wait up to 5 ms
    # for the preprocess or post thread to yield it, longer than a 128x128 INT8 inference takes. With another
    # process loading the cores, 0.5 ms measured 0.96x-1.01x of bare fps where 5 ms gave 0.83x-0.92x (OpenVINO
    # INT8, 1 thread); on a quiet machine the two were equal (0.93x vs 0.92x, 16 paired rounds). Since OpenVINO
    # keeps the next frame in flight (`_infer`) the runtime no longer waits for the lock: 0.945 vs 0.961 of
    # its ceiling (12 paired rounds). See benchmarks/bench_pipeline.py.
    gil_switch_ms: float | None = 0.5
    overlays: OverlayPolicy = field(default_factory=OverlayPolicy)  # drawn only if the model's task attaches pictures

    @classmethod
    def from_config(cls, p: PipelineConfig) -> PipelineSettings:
        return cls(queue_depth=p.queue_depth, on_frames=p.on_frames, off_frames=p.off_frames,
                   smoothing_window=p.smoothing_window, opencv_threads=p.opencv_threads, gil_switch_ms=p.gil_switch_ms,
                   overlays=OverlayPolicy(p.overlays, p.overlay_max_side))


def monitor_settings(cfg: Config) -> MonitorSettings | None:
    """The profile's monitoring section (None: monitoring switched off)."""
    m = cfg.monitoring
    if not m.enabled:
        return None
    return MonitorSettings(window_frames=m.window_frames, min_frames=m.min_frames, persist_frames=m.persist_frames,
                           drift_psi=m.drift_psi, ood_psi=m.ood_psi, ood_review=m.ood_review)


@dataclass
class Pipeline:
    """One source feeding one model. Construct, `start()`, then `join()` (or `stop()` to drain early)."""

    source: Source
    preprocessor: Preprocessor
    backend: Backend
    task: Task
    builder: FindingBuilder
    sink: FindingSink  # one durable transaction per frame's findings
    metrics: Metrics
    settings: PipelineSettings = field(default_factory=PipelineSettings)
    on_finding: Callable[[Finding, bool], None] | None = None
    # per frame, every reportable label's confidence (medge replay); called after the frame's latency is taken
    on_scores: Callable[[Frame, dict[str, float]], None] | None = None
    on_detections: Callable[[Frame, list[Detection]], None] | None = None  # every read frame (`medge replay --video`)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("medge.pipeline"))
    stop_event: threading.Event = field(default_factory=threading.Event)
    intended_use: IntendedUse | None = None  # None: a bundle that declares none (reads everything)
    monitor: DriftMonitor | None = None
    monitor_settings: MonitorSettings = field(default_factory=MonitorSettings)
    monitor_file: Path | None = None  # where `medge monitor` reads this pipeline's drift state
    MONITOR_WRITE_EVERY = 25  # frames between monitor_file writes (and one at the end)

    def __post_init__(self) -> None:
        self.name = self.source.name
        d = self.settings.queue_depth
        self._q_pre, self._q_inf, self._q_post = FrameQueue(d), FrameQueue(d), FrameQueue(d)
        self._threads: list[threading.Thread] = []
        self._smoothers: dict[Any, tuple[Hysteresis, Frame]] = {}  # with the stream's latest frame
        self.failure: BaseException | None = None
        self.events = 0
        self.refusals: dict[str, int] = {}  # intended-use reason -> frames not read
        self.refusal_details: dict[str, str] = {}  # reason -> the first such frame's explanation
        self._last_refused: Any = None  # the stored object the last out-of-scope event was recorded for
        self._scored = 0  # frames whose confidence went to the monitor (post stage's own count)

    # ------------------------------------------------------------------------------------ lifecycle
    def start(self) -> Pipeline:
        if self.settings.opencv_threads is not None:
            cv2.setNumThreads(self.settings.opencv_threads)
        if self.settings.gil_switch_ms is not None:
            sys.setswitchinterval(self.settings.gil_switch_ms / 1000)
        stages = ((self._capture, "capture", None, self._q_pre), (self._preprocess, "preprocess", self._q_pre, self._q_inf),
                  (self._infer, "infer", self._q_inf, self._q_post), (self._post, "post", self._q_post, None))
        for fn, nm, q_in, q_out in stages:
            t = threading.Thread(target=self._guard, args=(fn, q_in, q_out), name=f"{self.name}-{nm}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        """Stop admitting frames; whatever is already inside drains through `join`."""
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    @property
    def finished(self) -> bool:
        return bool(self._threads) and not any(t.is_alive() for t in self._threads)

    def _guard(self, fn: Callable[[], None], q_in: FrameQueue | None, q_out: FrameQueue | None) -> None:
        """A stage crash must neither hang the others nor pass for a normal end: record it (the daemon
        then exits non-zero so the service manager restarts it), stop admission, let the stages after
        it drain what they already hold, and stop the stages before it from blocking on it."""
        try:
            fn()
        except BaseException as e:
            self.failure = e
            self.logger.exception("source %s: pipeline stage %s crashed", self.name, threading.current_thread().name)
            self.stop_event.set()
            if q_in is not None:
                q_in.abort()
            if q_out is not None:
                q_out.close()

    # --------------------------------------------------------------------------------------- stages
    def _admit(self, q: FrameQueue, w: Work) -> None:
        old = q.put(w, w.frame.live)
        if old is not None:
            self.metrics.dropped(self.name)

    def _capture(self) -> None:
        try:
            for frame in self.source.frames(self.stop_event):
                self.metrics.frame_in(self.name)
                self._admit(self._q_pre, Work(frame))
                if self.stop_event.is_set():
                    break
        finally:
            self._q_pre.close()

    def _preprocess(self) -> None:
        while (w := self._q_pre.get()) is not _END:
            t0 = time.perf_counter()
            refusals = self.intended_use.check(w.frame) if self.intended_use is not None else []
            if refusals:
                w.refused = refusals
            else:
                try:
                    w.tensor, w.geom = self.preprocessor.apply(w.frame)
                    if self.monitor is not None:
                        w.check = self.monitor.observe(w.tensor, w.frame.streaming)
                except Exception as e:  # cv2.error, ValueError...: a bad frame must not stop the stream
                    w.error = f"preprocessing failed ({str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__})"
            w.t_pre_ms = (time.perf_counter() - t0) * 1000
            self._admit(self._q_inf, w)
        self._q_inf.close()

    def _infer(self) -> None:
        """Frames go to the post stage in the order they came. With a backend that can begin an inference
        without waiting for it (`start`: OpenVINO), a frame already queued behind the one in flight is
        submitted before that one is collected, so the runtime starts it the moment the first ends rather
        than when this thread next gets the interpreter lock; at most one frame is held that way, and only
        while another is waiting (a live frame is never held back for one that has not arrived)."""
        start = getattr(self.backend, "start", None)
        held: tuple[Work, Callable[[], dict[str, np.ndarray]], float] | None = None
        while True:
            w = self._q_inf.get() if held is None else self._q_inf.get_nowait()
            if w is None:  # nothing else waiting: finish the frame in flight rather than wait holding it
                self._collect(*held)
                held = None
                continue
            if w is _END:
                break
            if w.error is not None or w.refused is not None:
                if held is not None:
                    self._collect(*held)
                    held = None
                self._q_post.put(w, live=False)
                continue
            t0 = time.perf_counter()
            if start is None:
                self._collect(w, lambda t=w.tensor: self.backend.run(t), t0)
                continue
            waiter = self._start(start, w.tensor, block=held is None)
            if waiter is None:  # every request busy (another source shares the backend): ours first
                self._collect(*held)
                held = None
                waiter = self._start(start, w.tensor, block=True)
            if held is not None:
                self._collect(*held)
            held = (w, waiter, t0)
        if held is not None:
            self._collect(*held)
        self._q_post.close()

    @staticmethod
    def _start(start: Callable[..., Any], tensor: np.ndarray, block: bool) -> Callable[[], dict[str, np.ndarray]] | None:
        try:
            return start(tensor, block=block)
        except Exception as e:  # reported when the frame is collected, in order
            err = e

            def failed() -> dict[str, np.ndarray]:
                raise err

            return failed

    def _collect(self, w: Work, outputs: Callable[[], dict[str, np.ndarray]], t0: float) -> None:
        """``t_infer_ms`` is from submission to outputs, so a frame submitted behind another includes the
        wait for it."""
        try:
            w.outputs = outputs()
        except Exception as e:  # ORT raises its own types for bad shapes/values
            w.error = f"inference failed ({cause_line(e)})"
        w.t_infer_ms = (time.perf_counter() - t0) * 1000
        w.tensor = None
        self._q_post.put(w, live=False)  # inference is paid for: never drop a result

    def _post(self) -> None:
        while (w := self._q_post.get()) is not _END:
            self._finish(w)
        self._write_monitor()
        open_objects = [k for k in self._smoothers if k[0] == "object"]
        if self.stop_event.is_set():
            # stopped part-way through an object: a durable source reads it again at the next start, and a
            # truncated episode stored now would shadow the whole one (same finding id)
            if open_objects:
                self.logger.info("source %s: %d unfinished object(s) not reported; they are read again at the next "
                                 "start", self.name, len(open_objects))
            return
        for key in open_objects:  # the source ended without an object's last frame (skipped or unreadable)
            self._end_object(key)

    def _finish(self, w: Work) -> None:
        f = w.frame
        ok = True
        t0 = time.perf_counter()
        try:
            if w.refused:
                self._out_of_scope(w)
            elif w.error is None:
                self._publish_frame(w)
            change = self.monitor.take_change() if self.monitor is not None else None
            if change is not None:
                try:
                    self._drift_changed(change, f)
                except BaseException:
                    self.monitor.put_back(change)  # reported with a later frame, never lost
                    raise
            key = self._smoother_key(f)
            if key is not None and key[0] == "object" and f.frame_count is not None and f.index >= f.frame_count - 1:
                self._end_object(key)  # the object's last frame, published or not: its episodes end here
        except MedgeError as e:
            w.error = w.error or str(e)
        except Exception as e:  # decoder bug or outbox failure: report, keep the file for a retry
            w.error = w.error or f"post-processing failed ({type(e).__name__}: {e})"
        if w.error is not None:
            ok = False
            self.metrics.error(self.name)
            where = f"{f.origin}" if f.origin else f"source {self.name}"
            self.logger.error("%s frame %d: %s", where, f.index, w.error)
        try:
            self.source.complete(f, ok)
        except Exception as e:
            self.logger.error("source %s: complete() failed for frame %d (%s)", self.name, f.index, e)
        latency = (time.monotonic() - f.captured_at) * 1000
        self.metrics.frame_done(self.name, latency, {"preprocess": w.t_pre_ms, "infer": w.t_infer_ms,
                                                     "post": (time.perf_counter() - t0) * 1000})
        if ok and w.outputs is not None and (self.on_scores is not None or self.monitor is not None):
            scores = self.task.peak_scores(w.outputs, w.geom, f)
            if self.monitor is not None:
                self.monitor.observe_confidence(peak_confidence(scores))
                self._scored += 1
                if self._scored % self.MONITOR_WRITE_EVERY == 0:
                    self._write_monitor()
            if self.on_scores is not None:
                self.on_scores(f, scores)

    def _smoother_key(self, f: Frame) -> Any | None:
        if f.live:
            return ("live", f.source)
        if (f.frame_count or 1) > 1:
            return ("object", f.study.sop_instance_uid if f.study and f.study.sop_instance_uid else str(f.origin))
        return None

    def _publish_frame(self, w: Work) -> None:
        f = w.frame
        dets = [self._with_review_reasons(d, w.check) for d in self.task.decode(w.outputs, w.geom, f)]
        if self.on_detections is not None:
            self.on_detections(f, dets)
        key = self._smoother_key(f)
        if key is None:
            self._emit([self.builder.build(d, f, (time.monotonic() - f.captured_at) * 1000) for d in dets])
            return
        if key[0] == "object":
            # a source reads one object after another: a new object means the others have ended (read to the
            # end or cut short by a decode error), and a frame index going back means this one started again
            for other in [k for k in self._smoothers if k[0] == "object" and k != key]:
                self._end_object(other)
            if key in self._smoothers and f.index <= self._smoothers[key][1].index:
                self._end_object(key)
        if key not in self._smoothers:
            s = self.settings
            self._smoothers[key] = (Hysteresis(s.on_frames, s.off_frames, s.smoothing_window,
                                               emit="onset" if f.live else "episode"), f)
        sm = self._smoothers[key][0]
        self._smoothers[key] = (sm, f)
        self._emit_events(sm.update(f.index, dets), f)

    def _with_review_reasons(self, d: Detection, check: FrameCheck | None) -> Detection:
        """Say why a finding needs review: uncertain (inside the review band) and/or an input unlike the
        model's reference."""
        reasons = list(d.review_reasons)
        if d.needs_review and not reasons:
            lo, hi = self.task.m.review_band
            reasons.append(f"uncertain: confidence {d.confidence:.2f} inside the review band {lo:g}-{hi:g}")
        if check is not None and check.ood and self.monitor is not None and self.monitor_settings.ood_review:
            reasons.append(check.reason(self.monitor.ood_psi))
        return replace(d, needs_review=bool(reasons), review_reasons=tuple(reasons)) if reasons else d

    def _out_of_scope(self, w: Work) -> None:
        """Not the model's input: count it, say so once per reason, and record it for a stored object."""
        f, refused = w.frame, w.refused or []
        model = self.builder.model
        self.metrics.out_of_scope(self.name, [r.reason for r in refused])
        for r in refused:
            self.refusals[r.reason] = self.refusals.get(r.reason, 0) + 1
            if r.reason not in self.refusal_details:
                self.refusal_details[r.reason] = r.detail
                self.logger.warning("source %s: %s is outside the intended use of model %s %s (%s); not read, no "
                                    "finding (logged once per source and reason, counted in metrics)", self.name,
                                    f.origin.name if f.origin else f"frame {f.index}", model.name, model.version, r.detail)
        key = self._smoother_key(f) or ("object", f.study.sop_instance_uid if f.study else str(f.origin))
        if f.live or key == self._last_refused:
            return
        detail = "; ".join(r.detail for r in refused)
        ev = self.builder.event("out_of_scope", refused[0].reason, f"not read by {model.name} {model.version}: {detail}",
                                f, measurements={"frames": float(f.frame_count or 1)})
        self.sink.store([ev])
        self._last_refused = key  # only once it is stored: a failed store retries the object, and its event

    def _drift_changed(self, check: FrameCheck, f: Frame) -> None:
        mon = self.monitor
        assert mon is not None
        model = self.builder.model
        if check.change == "cleared":
            self.logger.info("source %s: model %s inputs back within the reference (window PSI %.2f)", self.name,
                             model.name, check.window_psi or 0.0)
            return
        detail = (f"input intensity drift on source {self.name}: window PSI {check.window_psi:.2f} above {check.limit:.2f} "
                  f"for {mon.s.persist_frames} frames in a row (reference: {mon.ref.inputs} calibration inputs); check "
                  "probe, preset, gain and vendor processing; findings continue, out-of-distribution ones need review")
        self.logger.warning("%s", detail)
        ev = self.builder.event("drift", "intensity_psi", detail, f, priority="routine", stored_object=False,
                                measurements={"window_psi": round(check.window_psi or 0.0, 4), "drift_psi": check.limit,
                                              "frames": float(check.frames), "ood_frames": float(check.ood_frames)})
        self.sink.store([ev])
        self._write_monitor()

    def _write_monitor(self) -> None:
        if self.monitor is None or self.monitor_file is None:
            return
        m = self.builder.model
        try:
            doc = {"source": self.name, "model": {"name": m.name, "version": m.version, "sha256": m.sha256},
                   "updated_at": time.time(), **self.monitor.snapshot()}
            write_atomic(self.monitor_file, json.dumps(doc, indent=1, sort_keys=True).encode(), make_parents=True)
        except OSError as e:  # monitoring must never stop inference
            self.logger.warning("source %s: cannot write %s (%s)", self.name, self.monitor_file, e.strerror)

    def _end_object(self, key: Any) -> None:
        """Report the episodes still running in a recorded object (with its latest frame's context)."""
        entry = self._smoothers.pop(key, None)
        if entry is not None:
            self._emit_events(entry[0].flush(), entry[1])

    def _emit_events(self, events: list[Event], f: Frame) -> None:
        self.events += len(events)
        out = []
        for ev in events:
            det, at = ev.summary()
            out.append(self.builder.build(det, f, (time.monotonic() - f.captured_at) * 1000, frame_range=ev.frame_range,
                                          event_start=ev.first_frame, frame_index=at))
        self._emit(out)

    def _emit(self, findings: list[Finding]) -> None:
        """All findings of one frame go to the outbox in one durable transaction (one fsync)."""
        if not findings:
            return
        flags = self.sink.store(findings)
        for finding, new in zip(findings, flags, strict=True):
            self.metrics.finding(self.name, bool(new))
            if new:  # the operator's record of what the device found, without opening the outbox
                self.logger.info("finding %s  id %s", finding.describe(), finding.finding_id)
            if self.on_finding is not None:
                self.on_finding(finding, bool(new))


def build_pipeline(source: Source, model: LoadedModel, device_id: str, pseudonymize: PseudonymFn | None,
                   sink: FindingSink, metrics: Metrics, settings: PipelineSettings | None = None, *,
                   stop_event: threading.Event | None = None, logger: logging.Logger | None = None,
                   on_finding: Callable[[Finding, bool], None] | None = None,
                   on_scores: Callable[[Frame, dict[str, float]], None] | None = None,
                   on_detections: Callable[[Frame, list[Detection]], None] | None = None,
                   monitoring: MonitorSettings | None = None, monitor_dir: Path | None = None,
                   sealer: OriginSealer | None = None) -> Pipeline:
    """The one way the daemon, `medge replay` and the demo put a source in front of a loaded model.
    ``monitoring`` None: no drift monitor (as for a bundle without reference statistics). ``sealer``: the
    hospital's re-link key (profile ``privacy.relink_public_key``); None: findings carry no sealed origin."""
    ref = model.bundle.manifest.reference
    monitor = DriftMonitor(ref, monitoring) if ref is not None and monitoring is not None else None
    if monitor is not None:
        metrics.attach_drift(source.name, monitor.snapshot)
    settings = settings or PipelineSettings()
    overlays = settings.overlays if model.task.overlays else None
    return Pipeline(source=source, preprocessor=model.preprocessor, backend=model.backend, task=model.task,
                    builder=FindingBuilder(device_id, model.ref, pseudonymize, sealer, model.bundle.manifest.codes, overlays),
                    sink=sink, metrics=metrics,
                    settings=settings, on_finding=on_finding, on_scores=on_scores, on_detections=on_detections,
                    logger=logger or logging.getLogger("medge.pipeline"), stop_event=stop_event or threading.Event(),
                    intended_use=model.bundle.manifest.intended_use, monitor=monitor,
                    monitor_settings=monitoring or MonitorSettings(),
                    monitor_file=monitor_dir / f"{source.name}.json" if monitor is not None and monitor_dir else None)
