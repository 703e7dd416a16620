"""`medge replay FILE --bundle DIR`: the device pipeline, offline, on one file.

Used to check a new bundle against a recorded cine before it goes to a cart, and to reproduce a field
report: same sources, preprocessing, backend, decoders and smoothing as `medge run`, but findings are
printed (and kept in memory, deduplicated like the outbox would) instead of being queued for the hospital.
Study identifiers are pseudonymized with a throw-away key, so the output can be shared. In real time
the queues hold one frame per stage: stages still overlap, but a recorded cine (whose frames are never
dropped) cannot queue up behind a slow model and inflate capture-to-finding latency.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from edge.commands.pictures import AnnotatedVideo, OverlayFiles
from edge.commands.report_lines import finding_line, summary_line
from edge.config import SourceConfig
from edge.errors import InputError
from edge.events import DeviceEvent
from edge.findings import Finding
from edge.inference.drift import MonitorSettings
from edge.inference.loaded_model import load_model_dir
from edge.inference.tasks.overlay import OverlayPolicy
from edge.runtime.metrics import Metrics
from edge.runtime.pipeline import Pipeline, PipelineSettings, build_pipeline


def replay_file(file: Path, bundle: Path, variant: str | None = None, realtime: bool = True, as_json: bool = False,
                trusted_keys: list[Path] | None = None, echo: Callable[[str], None] = print,
                settings: PipelineSettings | None = None, overlays_dir: Path | None = None,
                video: Path | None = None) -> int:
    """``overlays_dir``: one PNG per finding there (every finding gets a picture); ``video``: an annotated
    copy of the input, every read frame with its detections."""
    file = Path(file)
    if not file.is_file():
        raise InputError(f"{file}: file not found")
    log = logging.getLogger("medge.replay")
    if not logging.getLogger().handlers:
        logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")
    pictures = overlays_dir is not None or video is not None
    lm = load_model_dir(Path(bundle), variant, list(trusted_keys or []), log, overlays=pictures)
    files = OverlayFiles(overlays_dir) if overlays_dir is not None else None
    annotated = AnnotatedVideo(video) if video is not None else None
    from edge import sources as srcmod
    from edge.imaging.deid import Pseudonymizer
    from edge.runtime.daemon import source_context

    with tempfile.TemporaryDirectory(prefix="medge-replay-") as tmp:
        key = Path(tmp) / "pseudonym.key"
        pseudonymizer = Pseudonymizer.load_or_create(key)
        stop = threading.Event()
        scfg = SourceConfig(name=file.name, kind="replay", model=lm.config.name, path=file, realtime=realtime)
        cfg = _replay_config(file, bundle, Path(tmp), scfg, lm.config)
        source = srcmod.build_source(scfg, source_context(cfg, log))
        sink = MemorySink()

        def show(f: Finding, new: bool) -> None:
            if files is not None:
                files.add(f, new)
            echo(json.dumps({"finding": f.to_dict()}, sort_keys=True) if as_json else finding_line(f, new))

        peaks = PeakScores()

        metrics = Metrics(logger=log)
        settings = settings or PipelineSettings(queue_depth=1 if realtime else 4)
        if pictures:
            settings = replace(settings, overlays=OverlayPolicy("all", max(settings.overlays.max_side, 768)))
        pl = build_pipeline(source, lm, "replay", pseudonymizer.study_ids, sink, metrics, settings, stop_event=stop,
                            logger=log, on_finding=show, on_scores=peaks.add, monitoring=MonitorSettings(),
                            on_detections=annotated.add if annotated is not None else None)
        if not as_json:
            echo(f"replaying {file.name} through {lm.describe()} ({'real time' if realtime else 'as fast as possible'})")
            if lm.bundle.manifest.legacy_warning:
                echo(f"WARNING: {lm.bundle.manifest.legacy_warning}")
        t0 = time.perf_counter()
        pl.start()
        try:
            pl.join()
        except KeyboardInterrupt:
            stop.set()
            pl.join(30)
        wall = time.perf_counter() - t0
        source.close()
        picture_lines = ([files.line()] if files is not None else []) + ([annotated.close()] if annotated else [])
        lm.close()
        snap = metrics.snapshot()
        task = lm.task
        events = [e.to_dict() for e in sink.events.values()]
        if as_json:
            echo(json.dumps({"summary": {**snap["total"], "wall_s": round(wall, 3),
                                         "fps": round(snap["total"]["frames_done"] / wall, 2) if wall > 0 else 0.0,
                                         "model": lm.ref.__dict__, "provider": lm.backend.provider,
                                         "peak_scores": peaks.to_dict(), "threshold": task.threshold,
                                         "review_band": list(task.band), "out_of_scope": dict(pl.refusals),
                                         "events": events}}, sort_keys=True))
        else:
            echo(summary_line(snap, wall))
            if pl.refusals:
                echo(out_of_scope_line(pl))
            for e in sink.events.values():
                if e.kind != "out_of_scope":
                    echo(f"event: {e.describe()}")
            if peaks.frames or not pl.refusals:
                echo(peaks.line(task.threshold, task.band))
            for line in picture_lines:
                echo(line)
        stats = getattr(source, "stats", None)
        if stats is not None and stats.errors:
            echo(f"medge: error: {stats.last_error}")
            return 1
        if pl.failure is not None or (pl.refusals and not peaks.frames):  # nothing was read: say so to scripts too
            return 1
        return 0 if snap["total"]["errors"] == 0 else 1


def out_of_scope_line(pl: Pipeline) -> str:
    """One line: how many frames the model did not read, and why."""
    m = pl.builder.model
    reasons = "; ".join(pl.refusal_details[r] for r in pl.refusals)
    n = max(pl.refusals.values())
    return (f"not read: {n} frame(s) outside the intended use of {m.name} {m.version} ({reasons}); no finding is made "
            "for them")


class PeakScores:
    """The highest confidence each label reached, and where: what a clip that found nothing came close to."""

    def __init__(self) -> None:
        self.best: dict[str, tuple[float, int]] = {}
        self.frames = 0
        self._lock = threading.Lock()

    def add(self, frame, scores: dict[str, float]) -> None:
        with self._lock:
            self.frames += 1
            for label, conf in scores.items():
                if label not in self.best or conf > self.best[label][0]:
                    self.best[label] = (conf, frame.index)

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {k: {"confidence": round(c, 4), "frame": i} for k, (c, i) in sorted(self.best.items())}

    def line(self, threshold: float, band: tuple[float, float]) -> str:
        if not self.frames:
            return "highest confidence: no frame was scored"
        if not self.best:  # a detector reports only boxes from the lower of threshold and review band up
            return f"highest confidence: nothing reached {min(threshold, band[0]):.2f} in {self.frames} frame(s)"
        parts = [f"{k} {c:.2f} at frame {i}" for k, (c, i) in sorted(self.best.items())]
        return (f"highest confidence: {', '.join(parts)} (positive at >= {threshold:.2f}, needs review "
                f"{band[0]:.2f}-{band[1]:.2f})")


class MemorySink:
    """`medge replay` keeps findings (and device events) in memory: nothing is sent, nothing outlives the
    command. Deduplicated by id, as the outbox does."""

    def __init__(self) -> None:
        self.found: dict[str, Finding] = {}
        self.events: dict[str, DeviceEvent] = {}

    def store(self, records: list[Finding | DeviceEvent]) -> list[bool]:
        flags = []
        for r in records:
            held, key = (self.events, r.event_id) if isinstance(r, DeviceEvent) else (self.found, r.finding_id)
            flags.append(key not in held)
            held[key] = r
        return flags


def _replay_config(file: Path, bundle: Path, data_dir: Path, scfg: SourceConfig, mcfg):
    """A minimal in-memory profile for source contexts that want one (never written to disk)."""
    from edge.config import Config, DeviceConfig

    return Config(device=DeviceConfig(id="replay", site="offline"), models=(mcfg,), sources=(scfg,),
                  data_dir=data_dir, trusted_keys=())


