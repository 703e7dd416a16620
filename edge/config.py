"""Firmware profiles: YAML -> typed, validated configuration.

A profile is refused as a whole, before anything starts, when it has an unknown key, a value of the
wrong type, a file that does not exist, or an impossible value, or when anything `medge run` would
refuse at start (a device id that cannot be a topic level, unreadable TLS or password files, a data
folder it cannot write) is wrong. Every problem is reported in one pass, one line each, naming the file,
the key path and what to do, because the person reading it is an on-site IT technician with a terminal,
not the author of the profile; fixing them one run at a time would be a day's work on a device.

Relative paths in a profile are relative to the profile's own folder, so a profile and the bundles
it names can be copied to a device together.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edge.errors import ConfigError

SCHEMA_VERSION = 1
VIDEO_MODALITIES = ("US", "ES", "XA", "OT")
OVERLAY_POLICIES = ("none", "urgent-or-review", "all")  # edge.inference.tasks.overlay.OverlayPolicy
LOG_LEVELS = ("debug", "info", "warning", "error")
ACK_MODES = ("end-to-end", "broker")


def _k(default: Any = dataclasses.MISSING, doc: str = "", *, factory: Any = None, exists: str | None = None,
       choices: tuple | None = None, ge: float | None = None, le: float | None = None) -> Any:
    """A profile key: its default, what it means (docs/PROFILE.md is generated from ``doc``) and its rules.

    exists: 'file' | 'dir' | 'parent' (checked unless --structure-only). A required key's ``doc`` also ends
    the "required key is missing; set it to ..." message, so it is written as a noun phrase.
    """
    meta = {"exists": exists, "choices": choices, "ge": ge, "le": le, "doc": doc}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DeviceConfig:
    id: str = _k(doc="a short unique id for this device, e.g. pocus-cart-07 (one MQTT topic level: no / + # or spaces)")
    site: str = _k(doc="the hospital or site code used in MQTT topics, e.g. st-mary (one topic level)")
    description: str = _k("", "free text for the people who look after the device (not sent anywhere)")


@dataclass(frozen=True)
class ModelConfig:
    name: str = _k(doc="the name sources refer to in sources[].model")
    bundle: Path = _k(doc="the path to an exported model bundle folder (made by 'medge export quantize')", exists="dir")
    variant: str | None = _k(None, "which of the bundle's variants to run; null: the bundle's default_variant",
                             choices=(None, "fp32", "int8", "fp16"))
    providers: tuple[str, ...] = _k(("cpu",), "execution providers to try in order; the first that loads and warms "
                                    "up is used (cpu, cuda, tensorrt, trt-native, openvino, openvino-gpu)")
    intra_op_threads: int = _k(2, "threads one inference may use (ONNX Runtime intra-op; OpenVINO inference threads)",
                               ge=1, le=64)
    inter_op_threads: int = _k(1, "ONNX Runtime inter-op threads (parallel branches of a graph)", ge=1, le=64)
    warmup_runs: int = _k(3, "inferences run at start, before the first frame, so the first finding is not slow",
                          ge=0, le=100)
    require_signature: bool = _k(True, "refuse a bundle whose manifest is not signed by one of trusted_keys")
    dla_core: int | None = _k(None, "Jetson: run a trt-native engine built for this DLA core (0 or 1); null: the GPU",
                              ge=0, le=1)


@dataclass(frozen=True)
class SourceConfig:
    name: str = _k(doc="a name for this source, used in logs, metrics and findings")
    kind: str = _k(doc="a source kind: video, dicom-folder, dicom-store or replay")
    model: str = _k(doc="the name of an entry under models that runs on this source's frames")
    path: Path | None = _k(None, "video: a file to read instead of a device; dicom-folder: the folder to watch; "
                           "replay: the recording to replay")
    device: int | None = _k(None, "video: capture device index (/dev/videoN)", ge=0)
    url: str | None = _k(None, "video: an RTSP or GStreamer URL to read instead of a device")
    realtime: bool = _k(True, "video file / replay: play at the recorded frame rate (false: as fast as inference goes)")
    loop: bool = _k(False, "video file / replay: start again at the end instead of finishing")
    max_fps: float | None = _k(None, "frames per second taken from the source at most; the rest are skipped and "
                               "counted (null: all)", ge=0.1, le=1000)
    ae_title: str = _k("MEDGE", "dicom-store: this receiver's AE title")
    bind: str = _k("127.0.0.1", "dicom-store: address to listen on (0.0.0.0: every interface)")
    port: int = _k(11112, "dicom-store: TCP port to listen on", ge=1, le=65535)
    allowed_aes: tuple[str, ...] = _k((), "dicom-store: calling AE titles allowed to send; required, anyone else is "
                                      "rejected")
    settle_s: float = _k(2.0, "dicom-folder: a file is read once it has not changed for this long", ge=0, le=3600)
    poll_interval_s: float = _k(1.0, "dicom-folder: how often the folder is scanned", ge=0.01, le=3600)
    reopen_backoff_max_s: float = _k(30.0, "video: longest wait between attempts to re-open a lost device or stream",
                                     ge=0.1, le=3600)
    modality: str = _k("US", "video: what the stream shows (US ultrasound, ES endoscopy, XA fluoroscopy, OT other); "
                       "DICOM carries its own", choices=VIDEO_MODALITIES)
    default_modality: str | None = _k(None, "dicom-folder, dicom-store, replay of DICOM: the modality of an object "
                                      "that carries none, e.g. CR (null: such an object is not read by any model that "
                                      "declares its modalities; counted, never guessed)")


@dataclass(frozen=True)
class PipelineConfig:
    queue_depth: int = _k(4, "frames buffered between two pipeline stages of a source; when full, a live source's "
                          "oldest frame is dropped (counted), files wait", ge=1, le=10000)
    metrics_interval_s: float = _k(10.0, "how often metrics are logged and written", ge=0.1, le=86400)
    metrics_file: Path | None = _k(None, "write metrics to this JSON file (atomically) every metrics_interval_s",
                                   exists="parent")
    metrics_port: int | None = _k(None, "serve Prometheus metrics on 127.0.0.1:<port>/metrics (null: off)",
                                  ge=1, le=65535)
    smoothing_window: int = _k(5, "video: frames in the sliding window an event is decided on", ge=1, le=1000)
    on_frames: int = _k(3, "video: positive frames within the window that start an event (at most smoothing_window)",
                        ge=1, le=1000)
    off_frames: int = _k(5, "video: consecutive negative frames that end an event", ge=1, le=1000)
    overlays: str = _k("urgent-or-review", "which findings carry a picture of the frame with their evidence drawn "
                       "(contours, boxes, or the classifier's explanation heatmap) and label: urgent-or-review, all "
                       "or none; pictures leave the device only with privacy.send_overlays", choices=OVERLAY_POLICIES)
    overlay_max_side: int = _k(384, "overlay pictures are scaled to at most this many pixels per side (and "
                               "280 kB of PNG)", ge=64, le=2048)
    opencv_threads: int | None = _k(1, "OpenCV worker threads for decoding and resizing (null: OpenCV's default pool)",
                                    ge=0, le=256)
    gil_switch_ms: float | None = _k(0.5, "how long a pipeline thread that finished its inference may wait for the "
                                     "Python interpreter lock before the thread holding it is asked to yield (null: "
                                     "Python's 5 ms)", ge=0.05, le=100)


@dataclass(frozen=True)
class MonitoringConfig:
    """Drift and out-of-distribution monitoring against each bundle's reference statistics (PSI of the
    preprocessed input's intensity histogram; see docs/ARCHITECTURE.md, Clinical safety)."""

    enabled: bool = _k(True, "watch every model's inputs against its bundle's reference (bundles without one are "
                       "not watched)")
    window_frames: int = _k(100, "frames in the rolling window drift is measured on", ge=10, le=100000)
    min_frames: int = _k(30, "frames needed before the first drift verdict", ge=5, le=100000)
    persist_frames: int = _k(10, "frames in a row above drift_psi before one drift event is raised (it clears "
                             "after as many frames below half of it)", ge=1, le=100000)
    drift_psi: float | None = _k(None, "window PSI that counts as drift (null: the bundle's reference.drift_psi for "
                                 "separate objects, reference.drift_psi_stream for video and cines; both at least "
                                 "0.25)", ge=0.01, le=100)
    ood_psi: float | None = _k(None, "single-frame PSI above which a frame is out of distribution (null: the "
                               "bundle's reference.ood_psi)", ge=0.01, le=100)
    ood_review: bool = _k(True, "findings from out-of-distribution frames get needs_review with the reason")


@dataclass(frozen=True)
class TTLConfig:
    urgent: float = _k(24 * 30, "hours an undelivered urgent finding is kept before it expires (counted)", ge=0.01)
    routine: float = _k(24 * 14, "hours an undelivered routine finding is kept", ge=0.01)
    low: float = _k(24 * 3, "hours an undelivered low-priority finding is kept", ge=0.01)


@dataclass(frozen=True)
class OutboxConfig:
    path: Path | None = _k(None, "the outbox database file (null: <data_dir>/outbox.sqlite3)")
    quota_mb: float = _k(512.0, "MiB of undelivered findings kept; beyond it the oldest low-priority ones are dropped "
                         "first, urgent and routine ones are kept and counted", ge=0.01, le=1_000_000)
    ttl_hours: TTLConfig = _k(doc="how long undelivered findings are kept, per priority", factory=TTLConfig)


@dataclass(frozen=True)
class SyncConfig:
    enabled: bool = _k(False, "send findings to the hospital over MQTT")
    broker: str = _k("mqtt://127.0.0.1:1883", "mqtts://host:port (TLS) or mqtt://host:port (plain, lab only; "
                     "warned about); user:password@ is refused, use username and password_file")
    client_id: str | None = _k(None, "MQTT client id (null: medge-<device id>); the broker keeps this device's "
                               "session under it")
    ca_file: Path | None = _k(None, "PEM CA certificate the broker's certificate is checked against (mqtts://)",
                              exists="file")
    cert_file: Path | None = _k(None, "PEM client certificate (mutual TLS; with key_file)", exists="file")
    key_file: Path | None = _k(None, "PEM private key of cert_file", exists="file")
    username: str | None = _k(None, "MQTT username (with password_file)")
    password_file: Path | None = _k(None, "a file holding the MQTT password (keeps it out of the profile)",
                                    exists="file")
    keepalive_s: int = _k(30, "MQTT keepalive: a dead connection is noticed within about 1.5x this", ge=5, le=3600)
    session_expiry_s: int = _k(7 * 24 * 3600, "how long the broker keeps this device's session while it is away",
                               ge=0)
    inflight: int = _k(32, "findings sent and not yet acknowledged by the broker, at most", ge=1, le=65535)
    ack_timeout_s: float = _k(30.0, "wait for the broker's PUBACK before the connection is treated as dead",
                              ge=0.5, le=3600)
    ack_mode: str = _k("end-to-end", "end-to-end: a finding leaves the outbox when the hospital's receiver has "
                       "committed it; broker: on the broker's PUBACK (only for a receiver that does not acknowledge; "
                       "loses findings the broker drops)", choices=ACK_MODES)
    hospital_ack_timeout_s: float = _k(120.0, "first resend of a finding the hospital has not acknowledged after "
                                       "this; the wait doubles up to hospital_ack_max_s", ge=1, le=86400)
    hospital_ack_max_s: float = _k(3600.0, "longest wait between resends of an unacknowledged finding",
                                   ge=1, le=7 * 86400)
    drain_on_exit_s: float = _k(30.0, "when every source is finite and done, how long 'medge run' waits for the "
                                "hospital's acknowledgements before it exits (0: do not wait)", ge=0, le=86400)
    backoff_min_s: float = _k(1.0, "first wait before reconnecting to the broker; doubles up to backoff_max_s",
                              ge=0.01, le=3600)
    backoff_max_s: float = _k(120.0, "longest wait between reconnect attempts", ge=0.01, le=86400)
    heartbeat_s: float = _k(60.0, "how often device telemetry (outbox depth, counters) is published", ge=1, le=86400)
    topic_prefix: str = _k("medge", "first MQTT topic level: <prefix>/<site>/<device>/... (one topic level)")


@dataclass(frozen=True)
class InputLimitsConfig:
    """What one DICOM object may declare before anything is decoded (frames x rows x columns x samples x
    bytes per sample). The defaults fit an 8 GB device: the largest CR/DX detector (43 x 43 cm at 100 um,
    16 bit) is 37 MB a frame, a long colour ultrasound cine about 1.5 GB in all (decoded one frame at a
    time)."""

    max_frame_mb: float = _k(64.0, "MiB one decoded frame may take; larger objects are quarantined unread",
                             ge=0.01, le=65536)
    max_object_mb: float = _k(2048.0, "MiB all frames of one object may take together", ge=0.01, le=1_048_576)


@dataclass(frozen=True)
class PrivacyConfig:
    pseudonym_key_file: Path | None = _k(None, "secret key for pseudonymous patient and study ids (null: "
                                         "<data_dir>/pseudonym.key, created on first start); keep it per site")
    send_overlays: bool = _k(True, "include overlay pictures in findings sent to the hospital: ultrasound is "
                             "masked outside its imaging region and withheld without one (burned-in names), as for "
                             "every pixel that leaves; false: findings carry no picture at all")
    relink_public_key: Path | None = _k(None, "the hospital's re-link public key (PEM, X25519, from `medge hospital "
                                        "relink-keygen`): each finding on a stored object then carries its original "
                                        "Study/Series/SOP Instance UIDs sealed to it, so the hospital, and only it, can "
                                        "attach a DICOM SR to the original study (null: pseudonyms only)",
                                        exists="file")


@dataclass(frozen=True)
class Config:
    device: DeviceConfig = _k(doc="a device section with id and site")
    models: tuple[ModelConfig, ...] = _k(doc="a list of models (one entry per bundle)")
    sources: tuple[SourceConfig, ...] = _k(doc="a list of sources (where frames come from)")
    schema_version: int = _k(SCHEMA_VERSION, "profile format version")
    data_dir: Path = _k(Path("/var/lib/medge"), "where the outbox, inbox, quarantine and pseudonym key live")
    trusted_keys: tuple[Path, ...] = _k((), "Ed25519 public keys (PEM) bundles must be signed with")
    pipeline: PipelineConfig = _k(doc="frame queues, temporal smoothing, metrics, overlays", factory=PipelineConfig)
    outbox: OutboxConfig = _k(doc="the durable store of findings waiting to be delivered", factory=OutboxConfig)
    sync: SyncConfig = _k(doc="delivery of findings to the hospital over MQTT", factory=SyncConfig)
    input_limits: InputLimitsConfig = _k(doc="what one DICOM object may declare before it is decoded",
                                         factory=InputLimitsConfig)
    privacy: PrivacyConfig = _k(doc="pseudonymisation and what pictures leave the device", factory=PrivacyConfig)
    monitoring: MonitoringConfig = _k(doc="drift and out-of-distribution monitoring of each model's inputs",
                                      factory=MonitoringConfig)
    log_level: str = _k("info", "debug, info, warning or error", choices=LOG_LEVELS)
    source_file: Path | None = field(default=None, compare=False)  # set by load_config, not a profile key

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    @property
    def outbox_path(self) -> Path:
        return self.outbox.path or (self.data_dir / "outbox.sqlite3")

    @property
    def pseudonym_key_path(self) -> Path:
        return self.privacy.pseudonym_key_file or (self.data_dir / "pseudonym.key")

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def monitor_dir(self) -> Path:
        """Where each pipeline's drift state is written for `medge monitor`."""
        return self.data_dir / "monitor"


# --------------------------------------------------------------------------------------------- loading


def load_config(path: Path | str, data_dir: Path | None = None, check_files: bool = True) -> Config:
    """Load and validate a profile; `ConfigError` with one line per problem. ``data_dir`` overrides the
    profile's (demo and tests use it).

    ``check_files=False`` validates structure and values only, for checking a device's profile on a
    workstation where the device's certificates, bundles and folders do not exist.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: profile not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; give the profile's YAML file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read profile ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a profile must be a YAML mapping at the top level")
    ctx = _Ctx(path, path.resolve().parent, check_files)
    try:
        cfg = _build(Config, data, "", ctx)
    except _Bad:
        cfg = None
    if cfg is not None:
        if data_dir is not None:
            cfg = dataclasses.replace(cfg, data_dir=Path(data_dir))
        cfg = dataclasses.replace(cfg, source_file=path)
        _cross_checks(cfg, ctx)
        _start_checks(cfg, ctx)
    if ctx.problems:
        if not check_files or not ctx.missing_files:
            raise ConfigError(ctx.problems)
        raise ConfigError([*ctx.problems, f"{path}: files the profile names are missing here; checking a device's "
                           "profile on a workstation? use 'medge config check --structure-only'"])
    assert cfg is not None
    return cfg


class _Bad(Exception):
    """A value was refused (and recorded); the enclosing section cannot be built."""


@dataclass
class _Ctx:
    file: Path
    base: Path
    check_files: bool = True
    problems: list[str] = field(default_factory=list)
    missing_files: int = 0

    def report(self, key: str, problem: str, fix: str = "") -> None:
        msg = f"{self.file}: {key or '<top>'}: {problem}"
        if fix:
            msg += f"; {fix}"
        self.problems.append(msg)

    def fail(self, key: str, problem: str, fix: str = "") -> typing.NoReturn:
        self.report(key, problem, fix)
        raise _Bad(key)


def _build(cls: type, data: Any, prefix: str, ctx: _Ctx) -> Any:
    if not isinstance(data, dict):
        ctx.fail(prefix, f"expected a mapping, got {_tname(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in ("source_file",)}
    bad = False
    for k in data:
        if k not in fields:
            import difflib

            close = difflib.get_close_matches(str(k), list(fields), n=1)
            fix = f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(fields)}"
            ctx.report(_join(prefix, str(k)), "unknown key", fix)
            bad = True
    kwargs = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                ctx.report(key, "required key is missing", f.metadata.get("doc", "") and f"set it to {f.metadata['doc']}")
                bad = True
            continue
        try:
            kwargs[name] = _convert(hints[name], data[name], key, ctx, f.metadata)
        except _Bad:
            bad = True
    if bad:
        raise _Bad(prefix)
    return cls(**kwargs)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _convert(tp: Any, value: Any, key: str, ctx: _Ctx, meta: typing.Mapping[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        tp = non_none[0]
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if value is None:
        ctx.fail(key, "must not be empty")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, ctx)
    if origin is tuple:
        if not isinstance(value, list):
            ctx.fail(key, f"expected a list, got {_tname(value)}")
        item_tp, items, bad = args[0], [], False
        for i, v in enumerate(value):
            try:
                items.append(_convert(item_tp, v, f"{key}[{i}]", ctx, meta))
            except _Bad:
                bad = True
        if bad:
            raise _Bad(key)
        return tuple(items)
    if tp is Path:
        if not isinstance(value, str) or not value:
            ctx.fail(key, f"expected a path string, got {_tname(value)}")
        p = Path(value).expanduser()
        if not p.is_absolute():
            p = ctx.base / p
        ex = meta.get("exists") if ctx.check_files else None
        missing = ((ex == "file" and not p.is_file()) or (ex == "dir" and not p.is_dir())
                   or (ex == "parent" and not p.parent.is_dir()))
        if missing and ex == "dir" and p.is_file():  # there, but the wrong thing: a workstation has it too
            from edge.inference.bundle import not_a_bundle

            ctx.report(key, not_a_bundle(p, value).split(": ", 1)[1])
        elif missing:  # reported, but the profile is still built so every other check runs too
            ctx.missing_files += 1
            if ex == "file":
                ctx.report(key, f"file {value} does not exist (looked in {p.parent.name}/)", "fix the path or create the file")
            elif ex == "dir":
                ctx.report(key, f"folder {value} does not exist", "fix the path or copy the bundle there")
            else:
                ctx.report(key, f"folder for {value} does not exist", "create it or change the path")
        return p
    if tp is bool:
        if not isinstance(value, bool):
            ctx.fail(key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            ctx.fail(key, f"expected a whole number, got {value!r}")
        _check_range(value, key, ctx, meta)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            ctx.fail(key, f"expected a number, got {value!r}")
        _check_range(float(value), key, ctx, meta)
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            ctx.fail(key, f"expected text, got {_tname(value)}")
        value = str(value)
        choices = meta.get("choices")
        if choices and value not in choices:
            ctx.fail(key, f"{value!r} is not allowed", "use one of " + ", ".join(c for c in choices if c))
        return value
    raise TypeError(f"config field {key}: unsupported type {tp}")  # programming error, not user input


def _check_range(v: float, key: str, ctx: _Ctx, meta: typing.Mapping[str, Any]) -> None:
    ge, le = meta.get("ge"), meta.get("le")
    if ge is not None and v < ge:
        ctx.fail(key, f"{v} is too small", f"use a value >= {ge}")
    if le is not None and v > le:
        ctx.fail(key, f"{v} is too large", f"use a value <= {le}")


def _tname(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "text", bool: "true/false"}.get(type(v), type(v).__name__)


def _cross_checks(cfg: Config, ctx: _Ctx) -> None:
    """Relations between keys (reported, never raised: the caller collects every problem)."""
    check_files, r = ctx.check_files, ctx.report
    if cfg.schema_version != SCHEMA_VERSION:
        r("schema_version", f"{cfg.schema_version} is not supported", f"this medge reads version {SCHEMA_VERSION}")
    if not cfg.models:
        r("models", "at least one model is required")
    if not cfg.sources:
        r("sources", "at least one source is required")
    from edge.inference.backends import PROVIDERS  # registries import this module: import them late
    from edge.sources import SOURCE_KINDS

    names = [m.name for m in cfg.models]
    for i, m in enumerate(cfg.models):
        if names.count(m.name) > 1:
            r(f"models[{i}].name", f"duplicate model name {m.name!r}")
        for j, p in enumerate(m.providers):
            if p not in PROVIDERS:
                r(f"models[{i}].providers[{j}]", f"{p!r} is not a known provider", "use " + ", ".join(PROVIDERS))
        if m.require_signature and not cfg.trusted_keys:
            r(f"models[{i}].require_signature", "is true but trusted_keys is empty",
              "list the Ed25519 public key(s) bundles are signed with, or set require_signature: false")
    for j, k in enumerate(cfg.trusted_keys):
        if check_files and not k.is_file():
            ctx.missing_files += 1
            r(f"trusted_keys[{j}]", f"public key file {k.name} does not exist", "fix the path")
    snames = [s.name for s in cfg.sources]
    ports: dict[int, str] = {}
    for i, s in enumerate(cfg.sources):
        key = f"sources[{i}]"
        if snames.count(s.name) > 1:
            r(f"{key}.name", f"duplicate source name {s.name!r}")
        if s.model not in names:
            r(f"{key}.model", f"no model named {s.model!r}", "use one of " + ", ".join(names))
        kind = SOURCE_KINDS.get(s.kind)
        if kind is None:
            r(f"{key}.kind", f"{s.kind!r} is not allowed", "use one of " + ", ".join(SOURCE_KINDS))
            continue
        for sub, problem, fix in kind.check(s, check_files):
            r(f"{key}.{sub}" if sub else key, problem, fix)
        if kind.listens:
            if s.port in ports:
                r(f"{key}.port", f"port {s.port} is already used by source {ports[s.port]!r}")
            ports[s.port] = s.name
    sy = cfg.sync
    if sy.enabled:
        if not (sy.broker.startswith("mqtt://") or sy.broker.startswith("mqtts://")):
            r("sync.broker", f"{sy.broker!r} is not an MQTT URL", "use mqtt://host:port or mqtts://host:port")
        if (sy.cert_file is None) != (sy.key_file is None):
            r("sync.cert_file", "client certificate and key must be given together", "set both cert_file and key_file")
        if sy.broker.startswith("mqtts://") and sy.ca_file is None:
            r("sync.ca_file", "mqtts:// needs the broker's CA certificate", "set ca_file")
        if sy.backoff_min_s > sy.backoff_max_s:
            r("sync.backoff_min_s", "is larger than backoff_max_s")
        if sy.hospital_ack_timeout_s > sy.hospital_ack_max_s:
            r("sync.hospital_ack_timeout_s", "is larger than hospital_ack_max_s")
    for i, s in enumerate(cfg.sources):
        if s.default_modality is not None and not re.fullmatch(r"[A-Z][A-Z0-9]{1,15}", s.default_modality):
            r(f"sources[{i}].default_modality", f"{s.default_modality!r} is not a DICOM modality code",
              "use an upper-case code such as CR, DX, US, MR")
    mon = cfg.monitoring
    if mon.min_frames > mon.window_frames:
        r("monitoring.min_frames", "is larger than window_frames", "the window never holds that many frames")
    lim = cfg.input_limits
    if lim.max_frame_mb > lim.max_object_mb:
        r("input_limits.max_frame_mb", "is larger than max_object_mb")
    p = cfg.pipeline
    if p.metrics_port is not None and p.metrics_port in ports:
        r("pipeline.metrics_port", f"port {p.metrics_port} is already used by source {ports[p.metrics_port]!r}")
    if p.on_frames > p.smoothing_window:
        r("pipeline.on_frames", f"{p.on_frames} is larger than smoothing_window {p.smoothing_window}: an event needs "
          f"{p.on_frames} positive frames within the last {p.smoothing_window}", "set smoothing_window >= on_frames "
          "(the window is otherwise silently widened to on_frames)")


def _start_checks(cfg: Config, ctx: _Ctx) -> None:
    """What `medge run` would refuse at start, checked here so `config check` refuses it first."""
    from edge.errors import ConfigError as _CE
    from edge.link.topics import check_level

    for key, value in (("device.id", cfg.device.id), ("device.site", cfg.device.site),
                       ("sync.topic_prefix", cfg.sync.topic_prefix)):
        try:
            check_level(key, value, str(ctx.file))
        except _CE as e:
            ctx.problems.append(str(e))
    sy = cfg.sync
    if sy.enabled:
        from edge.link.mqtt import parse_broker_url

        try:
            if sy.broker.startswith(("mqtt://", "mqtts://")):  # else already reported
                parse_broker_url(sy.broker)
        except _CE as e:
            ctx.report("sync.broker", str(e))
        if ctx.check_files:
            if sy.password_file is not None and not _readable(sy.password_file):
                ctx.report("sync.password_file", f"{sy.password_file} cannot be read by this user", "fix its permissions")
            why = _tls_problem(sy.ca_file, sy.cert_file, sy.key_file)
            if why:
                ctx.report("sync.cert_file" if "certificate/key" in why else "sync.ca_file", why)
    if ctx.check_files and cfg.privacy.relink_public_key is not None and cfg.privacy.relink_public_key.is_file():
        from edge.imaging.relink import OriginSealer

        try:
            OriginSealer.load(cfg.privacy.relink_public_key)
        except _CE as e:
            ctx.report("privacy.relink_public_key", str(e))
    if ctx.check_files:
        why = _unwritable(cfg.data_dir)
        if why:
            ctx.report("data_dir", why, "create it for the medge user, or point data_dir elsewhere")


def warnings_for(cfg: Config) -> list[str]:
    """What is allowed but risky; `config check` prints these and the daemon logs them at start."""
    out = []
    if cfg.sync.enabled and cfg.sync.broker.startswith("mqtt://"):
        out.append(f"{cfg.source_file or 'profile'}: sync.broker: {cfg.sync.broker} is plain MQTT: findings cross the "
                   "network unencrypted and the broker cannot tell this device from any other; use mqtts:// with a "
                   "client certificate outside a lab")
    if cfg.sync.enabled and cfg.sync.ack_mode == "broker":
        out.append(f"{cfg.source_file or 'profile'}: sync.ack_mode: broker: a finding leaves the outbox on the broker's "
                   "PUBACK, not when the hospital has stored it")
    return out


def _readable(p: Path) -> bool:
    try:
        with open(p, "rb"):
            return True
    except OSError:
        return False


def _tls_problem(ca: Path | None, cert: Path | None, key: Path | None) -> str | None:
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if ca is not None and ca.is_file():
            ctx.load_verify_locations(str(ca))
    except (ssl.SSLError, OSError) as e:
        return f"{ca}: not a usable CA certificate ({getattr(e, 'reason', None) or e})"
    try:
        if cert is not None and key is not None and cert.is_file() and key.is_file():
            ctx.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as e:
        return f"{cert} / {key}: not a matching client certificate/key pair ({getattr(e, 'reason', None) or e})"
    return None


def _unwritable(d: Path) -> str | None:
    import os

    probe = d
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{d}: {probe} is not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{d}: {'folder is' if probe == d else f'cannot be created ({probe} is'} not writable by this user" + \
            ("" if probe == d else ")")
    return None
