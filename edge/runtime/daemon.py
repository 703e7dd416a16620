"""`medge run`: the long-running on-device process.

Start order matters for an operator: everything that can be refused (profile, bundle hashes and
signatures, backends, outbox, pseudonym key) is checked *before* any source is opened and before systemd
is told READY=1, so a bad update fails loudly at start instead of half-running. Stop order matters for
the patient data: on SIGTERM/SIGINT the sources stop admitting frames, every frame already admitted
drains through inference into the outbox, and only then is it completed back to its source (which lets
durable sources remove the input file); a file not completed stays in incoming and is re-processed on the
next start, deduplicated by its deterministic finding ids.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from edge.config import Config
from edge.errors import ConfigError, MedgeError
from edge.findings import Finding
from edge.inference.loaded_model import LoadedModel, load_model
from edge.runtime.metrics import Metrics
from edge.runtime.pipeline import Pipeline, PipelineSettings, build_pipeline, monitor_settings
from edge.runtime.sdnotify import Notifier

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str) -> logging.Logger:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level.upper(), format=LOG_FORMAT)
    else:
        root.setLevel(level.upper())
    # pydicom logs malformed elements with their raw value, which can be a patient's name or id; medge
    # reports the element and the cause itself (edge.imaging.dicom), so pydicom's own warnings stay out of the log
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    return logging.getLogger("medge.daemon")


class OutboxSink:
    """The daemon's `FindingSink`: one outbox connection per pipeline thread (sqlite3 connections are per
    thread), each frame's findings in one transaction."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def handle(self) -> Any:
        ob = getattr(self._local, "outbox", None)
        if ob is None:
            from edge.link.outbox import Outbox

            ob = self._local.outbox = Outbox.from_config(self.cfg)
            with self._lock:
                self._all.append(ob)
        return ob

    def store(self, findings: list[Finding]) -> list[bool]:
        return self.handle().store(findings)

    def close(self) -> None:
        with self._lock:
            for ob in self._all:
                with contextlib.suppress(Exception):  # sqlite3 may refuse a close from another thread
                    ob.close()
            self._all.clear()


def build_sources(cfg: Config, log: logging.Logger) -> list[Any]:
    from edge import sources as srcmod

    return [srcmod.build_source(s, source_context(cfg, log.getChild(s.name))) for s in cfg.sources]


def source_context(cfg: Config, log: logging.Logger) -> Any:
    """What every source gets from the profile: where to keep files, how large an object may be."""
    from edge.imaging.limits import DecodeLimits
    from edge.sources import SourceContext

    lim = cfg.input_limits
    return SourceContext(data_dir=cfg.data_dir, quarantine_dir=cfg.quarantine_dir, logger=log, device_id=cfg.device.id,
                         limits=DecodeLimits.from_mb(lim.max_frame_mb, lim.max_object_mb))


def relink_sealer(cfg: Config) -> Any:
    """The hospital's re-link key from the profile, or None (findings then carry pseudonyms only)."""
    if cfg.privacy.relink_public_key is None:
        return None
    from edge.imaging.relink import OriginSealer

    return OriginSealer.load(cfg.privacy.relink_public_key)


def run_daemon(cfg: Config, max_seconds: float | None = None,
               on_finding: Callable[[Finding, bool], None] | None = None) -> int:
    """Run until a signal, ``max_seconds``, or every finite source is done; return the exit code.

    ``on_finding`` is called after each finding is durably in the outbox (the demo prints them).
    """
    log = setup_logging(cfg.log_level)
    notifier = Notifier()
    stop = threading.Event()
    signals_seen: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        signals_seen.append(signum)
        if not stop.is_set():
            log.info("%s received: stopping sources and draining in-flight frames", signal.Signals(signum).name)
        stop.set()

    old_handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            old_handlers[sig] = signal.signal(sig, on_signal)

    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    models: dict[str, LoadedModel] = {}
    sources: list[Any] = []
    sink = OutboxSink(cfg)
    metrics = Metrics(cfg.pipeline.metrics_interval_s, cfg.pipeline.metrics_file, cfg.pipeline.metrics_port,
                      log.getChild("metrics"), extra={"device_id": cfg.device.id, "site": cfg.device.site})
    sync = None
    pipelines: list[Pipeline] = []
    code = 0
    try:
        log.info("medge starting: device %s at %s, profile %s", cfg.device.id, cfg.device.site, cfg.source_file)
        from edge.config import warnings_for

        for w in warnings_for(cfg):
            log.warning("%s", w)
        for m in cfg.models:
            models[m.name] = load_model(cfg, m, log.getChild("backend"))
            log.info("model %s", models[m.name].describe())
            if models[m.name].bundle.manifest.legacy_warning:
                log.warning("model %s: %s", m.name, models[m.name].bundle.manifest.legacy_warning)
        from edge.inference.modelset import wiring_problems

        problems = wiring_problems(cfg, {n: lm.bundle for n, lm in models.items()})
        if problems:
            raise ConfigError(problems)
        from edge.imaging.deid import Pseudonymizer

        pseudonymizer = Pseudonymizer.load_or_create(cfg.pseudonym_key_path)
        sealer = relink_sealer(cfg)
        sink.handle()  # open (and if needed create) the outbox now: a bad path fails the start
        if cfg.sync.enabled:
            from edge.link.sync import SyncClient

            sync = SyncClient(cfg, telemetry=metrics.snapshot)
            sync.start()
        metrics.start()
        sources = build_sources(cfg, log.getChild("source"))
        for src in sources:
            metrics.attach_source(src.name, src.stats.to_dict)
        settings = PipelineSettings.from_config(cfg.pipeline)
        for scfg, src in zip(cfg.sources, sources, strict=True):
            pl = build_pipeline(src, models[scfg.model], cfg.device.id, pseudonymizer.study_ids, sink, metrics, settings,
                                stop_event=stop, logger=log.getChild("pipeline"), on_finding=on_finding,
                                monitoring=monitor_settings(cfg), monitor_dir=cfg.monitor_dir, sealer=sealer)
            pipelines.append(pl.start())
        notifier.ready(f"running {len(pipelines)} source(s)")
        log.info("ready: %d source(s), %d model(s); outbox %s", len(pipelines), len(models), cfg.outbox_path)
        code = _supervise(pipelines, stop, notifier, max_seconds, log, metrics)
        finished = all(pl.finished for pl in pipelines) and not signals_seen
        if sync is not None and finished and code == 0 and cfg.sync.drain_on_exit_s > 0:
            # finite sources are done: give the link a bounded chance to deliver before the process ends
            from edge.link.sync import wait_acknowledged

            for pl in pipelines:
                pl.join(pl.settings.drain_timeout_s)
            log.info("sources finished; waiting up to %.0f s for the hospital to acknowledge the outbox",
                     cfg.sync.drain_on_exit_s)
            wait_acknowledged(cfg, cfg.sync.drain_on_exit_s, stop)
    except MedgeError:
        raise
    finally:
        stop.set()
        notifier.stopping("draining")
        for pl in pipelines:
            if not pl.join(timeout=pl.settings.drain_timeout_s):
                log.error("source %s: pipeline did not drain within %.0f s", pl.name, pl.settings.drain_timeout_s)
                code = code or 1
        failed = [pl for pl in pipelines if pl.failure is not None]
        if failed:  # also a crash during the drain: exit non-zero so systemd (Restart=on-failure) restarts us
            log.error("source %s: pipeline stage failed (%s: %s); exiting with status 1 so the service manager "
                      "restarts medge; unfinished objects stay in incoming", failed[0].name,
                      type(failed[0].failure).__name__, failed[0].failure)
            code = 1
        for src in sources:
            try:
                src.close()
            except Exception as e:
                log.warning("source %s: close failed (%s)", getattr(src, "name", "?"), e)
        if sync is not None:
            sync.stop()
            _report_pending(cfg, log)
        metrics.stop()
        if pipelines:
            log.info("stopped: %s", metrics.summary_line())
        sink.close()
        for lm in models.values():
            lm.close()
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
    return code


def _report_pending(cfg: Config, log: logging.Logger) -> None:
    """A stop says what the hospital does not have yet, so nobody powers a device off believing it synced."""
    from edge.link.outbox import Outbox
    from edge.link.sync import pending_line

    try:
        with Outbox.from_config(cfg, create=False) as ob:
            st = ob.status()
    except MedgeError as e:
        log.warning("cannot read the outbox at stop (%s)", e)
        return
    if st.depth:
        log.warning("%s", pending_line(st))
    else:
        log.info("the hospital has acknowledged every finding in the outbox")


def _supervise(pipelines: list[Pipeline], stop: threading.Event, notifier: Notifier, max_seconds: float | None,
               log: logging.Logger, metrics: Metrics | None = None) -> int:
    """Wait for a signal, the time limit, or every (finite) source to finish; feed the watchdog meanwhile.

    The watchdog is fed only while no pipeline has crashed and frames that are in flight keep finishing,
    so a wedged daemon (a hung backend, a dead stage) is killed and restarted by systemd.
    """
    t0 = time.monotonic()
    tick = min(0.2, notifier.watchdog_s / 4) if notifier.watchdog_s else 0.2
    last_ping = 0.0
    last_done, last_progress, stalled_logged = -1, t0, False
    while not stop.is_set():
        now = time.monotonic()
        if any(p.failure is not None for p in pipelines):
            return 1  # reported with the exit status by run_daemon
        if all(p.finished for p in pipelines):
            log.info("all sources finished")
            return 0
        if max_seconds is not None and now - t0 >= max_seconds:
            log.info("time limit of %.1f s reached", max_seconds)
            return 0
        if notifier.watchdog_s and now - last_ping >= notifier.watchdog_s / 2:
            healthy = True
            if metrics is not None:
                t = metrics.snapshot()["total"]
                in_flight = t["frames_in"] - t["frames_done"] - t["dropped"]
                if t["frames_done"] != last_done or in_flight <= 0:
                    last_done, last_progress, stalled_logged = t["frames_done"], now, False
                elif now - last_progress > notifier.watchdog_s:
                    healthy = False
                    if not stalled_logged:
                        log.error("pipeline stalled: %d frame(s) in flight, none finished for %.0f s; not feeding the "
                                  "watchdog", in_flight, now - last_progress)
                        stalled_logged = True
            if healthy:
                notifier.watchdog()
                last_ping = now
        stop.wait(tick)
    return 0
