"""Firmware profiles: YAML -> typed, validated configuration.

A profile is refused as a whole, before anything starts, when it has an unknown key, a value of the
wrong type, a file that does not exist, or an impossible value. The error is one line naming the file,
the key path and what to do, because the person reading it is an on-site IT technician with a terminal,
not the author of the profile.

Relative paths in a profile are relative to the profile's own folder, so a profile and the bundles
it names can be copied to a device together.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edge.errors import ConfigError

SCHEMA_VERSION = 1
VIDEO_MODALITIES = ("US", "ES", "XA", "OT")
LOG_LEVELS = ("debug", "info", "warning", "error")
ACK_MODES = ("end-to-end", "broker")


def _meta(*, exists: str | None = None, choices: tuple | None = None, ge: float | None = None,
          le: float | None = None, help: str = "") -> dict[str, Any]:
    """Validation rules attached to a dataclass field. exists: 'file' | 'dir' | 'parent'."""
    return {"exists": exists, "choices": choices, "ge": ge, "le": le, "help": help}


@dataclass(frozen=True)
class DeviceConfig:
    id: str = field(metadata=_meta(help="a short unique id, e.g. pocus-cart-07"))
    site: str = field(metadata=_meta(help="the hospital or site code used in MQTT topics"))
    description: str = ""


@dataclass(frozen=True)
class ModelConfig:
    name: str
    bundle: Path = field(metadata=_meta(exists="dir", help="path to an exported model bundle folder"))
    variant: str | None = field(default=None, metadata=_meta(choices=(None, "fp32", "int8", "fp16")))
    providers: tuple[str, ...] = ("cpu",)
    intra_op_threads: int = field(default=2, metadata=_meta(ge=1, le=64))
    inter_op_threads: int = field(default=1, metadata=_meta(ge=1, le=64))
    warmup_runs: int = field(default=3, metadata=_meta(ge=0, le=100))
    require_signature: bool = True
    dla_core: int | None = field(default=None, metadata=_meta(ge=0, le=1))


@dataclass(frozen=True)
class SourceConfig:
    name: str
    kind: str = field(metadata=_meta(help="a source kind (edge.sources.SOURCE_KINDS)"))
    model: str = field(metadata=_meta(help="name of an entry under models"))
    path: Path | None = None  # replay file, dicom-folder folder, or video file
    device: int | None = field(default=None, metadata=_meta(ge=0))  # video capture device index
    url: str | None = None  # RTSP/GStreamer URL for video
    realtime: bool = True  # replay at the recorded frame rate (False: as fast as possible)
    loop: bool = False
    max_fps: float | None = field(default=None, metadata=_meta(ge=0.1, le=1000))
    ae_title: str = "MEDGE"
    bind: str = "127.0.0.1"
    port: int = field(default=11112, metadata=_meta(ge=1, le=65535))
    allowed_aes: tuple[str, ...] = ()
    settle_s: float = field(default=2.0, metadata=_meta(ge=0, le=3600))
    poll_interval_s: float = field(default=1.0, metadata=_meta(ge=0.01, le=3600))
    reopen_backoff_max_s: float = field(default=30.0, metadata=_meta(ge=0.1, le=3600))
    # what a video stream shows (DICOM carries its own): US ultrasound, ES endoscopy, XA fluoroscopy, OT other
    modality: str = field(default="US", metadata=_meta(choices=VIDEO_MODALITIES))


@dataclass(frozen=True)
class PipelineConfig:
    queue_depth: int = field(default=4, metadata=_meta(ge=1, le=10000))
    metrics_interval_s: float = field(default=10.0, metadata=_meta(ge=0.1, le=86400))
    metrics_file: Path | None = field(default=None, metadata=_meta(exists="parent"))
    metrics_port: int | None = field(default=None, metadata=_meta(ge=1, le=65535))
    smoothing_window: int = field(default=5, metadata=_meta(ge=1, le=1000))
    on_frames: int = field(default=3, metadata=_meta(ge=1, le=1000))
    off_frames: int = field(default=5, metadata=_meta(ge=1, le=1000))
    overlays: bool = False
    opencv_threads: int | None = field(default=1, metadata=_meta(ge=0, le=256))  # null: OpenCV's default pool


@dataclass(frozen=True)
class TTLConfig:
    urgent: float = field(default=24 * 30, metadata=_meta(ge=0.01))
    routine: float = field(default=24 * 14, metadata=_meta(ge=0.01))
    low: float = field(default=24 * 3, metadata=_meta(ge=0.01))


@dataclass(frozen=True)
class OutboxConfig:
    path: Path | None = None  # default: <data_dir>/outbox.sqlite3
    quota_mb: float = field(default=512.0, metadata=_meta(ge=0.01, le=1_000_000))
    ttl_hours: TTLConfig = field(default_factory=TTLConfig)


@dataclass(frozen=True)
class SyncConfig:
    enabled: bool = False
    broker: str = "mqtt://127.0.0.1:1883"  # mqtt://host:port or mqtts://host:port
    client_id: str | None = None  # default: medge-<device id>
    ca_file: Path | None = field(default=None, metadata=_meta(exists="file"))
    cert_file: Path | None = field(default=None, metadata=_meta(exists="file"))
    key_file: Path | None = field(default=None, metadata=_meta(exists="file"))
    username: str | None = None
    password_file: Path | None = field(default=None, metadata=_meta(exists="file"))
    keepalive_s: int = field(default=30, metadata=_meta(ge=5, le=3600))
    session_expiry_s: int = field(default=7 * 24 * 3600, metadata=_meta(ge=0))
    inflight: int = field(default=32, metadata=_meta(ge=1, le=65535))
    ack_timeout_s: float = field(default=30.0, metadata=_meta(ge=0.5, le=3600))  # the broker's PUBACK
    # end-to-end: a finding leaves the outbox when the hospital's receiver says its store committed it;
    # broker: on the broker's PUBACK (only for a receiver that does not acknowledge; loses findings when
    # the broker drops a message it accepted)
    ack_mode: str = field(default="end-to-end", metadata=_meta(choices=ACK_MODES))
    hospital_ack_timeout_s: float = field(default=120.0, metadata=_meta(ge=1, le=86400))  # first resend after
    hospital_ack_max_s: float = field(default=3600.0, metadata=_meta(ge=1, le=7 * 86400))  # longest wait between resends
    backoff_min_s: float = field(default=1.0, metadata=_meta(ge=0.01, le=3600))
    backoff_max_s: float = field(default=120.0, metadata=_meta(ge=0.01, le=86400))
    heartbeat_s: float = field(default=60.0, metadata=_meta(ge=1, le=86400))
    topic_prefix: str = "medge"


@dataclass(frozen=True)
class InputLimitsConfig:
    """What one DICOM object may declare before anything is decoded (frames x rows x columns x samples x
    bytes per sample). The defaults fit an 8 GB device: the largest CR/DX detector (43 x 43 cm at 100 um,
    16 bit) is 37 MB a frame, a long colour ultrasound cine about 1.5 GB in all (decoded one frame at a
    time)."""

    max_frame_mb: float = field(default=64.0, metadata=_meta(ge=0.01, le=65536))
    max_object_mb: float = field(default=2048.0, metadata=_meta(ge=0.01, le=1_048_576))


@dataclass(frozen=True)
class PrivacyConfig:
    pseudonym_key_file: Path | None = None  # default: <data_dir>/pseudonym.key, created on first start
    send_overlays: bool = False


@dataclass(frozen=True)
class Config:
    device: DeviceConfig
    models: tuple[ModelConfig, ...]
    sources: tuple[SourceConfig, ...]
    schema_version: int = SCHEMA_VERSION
    data_dir: Path = field(default=Path("/var/lib/medge"))
    trusted_keys: tuple[Path, ...] = ()
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    input_limits: InputLimitsConfig = field(default_factory=InputLimitsConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    log_level: str = field(default="info", metadata=_meta(choices=LOG_LEVELS))
    source_file: Path | None = field(default=None, compare=False)

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


# --------------------------------------------------------------------------------------------- loading


def load_config(path: Path | str, data_dir: Path | None = None, check_files: bool = True) -> Config:
    """Load and validate a profile. ``data_dir`` overrides the profile's (demo and tests use it).

    ``check_files=False`` validates structure and values only, for checking a device's profile on a
    workstation where the device's certificates and bundles do not exist.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: profile not found") from None
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
    base = path.resolve().parent
    cfg = _build(Config, data, "", _Ctx(path, base, check_files))
    if data_dir is not None:
        cfg = dataclasses.replace(cfg, data_dir=Path(data_dir))
    cfg = dataclasses.replace(cfg, source_file=path)
    _cross_checks(cfg, path, check_files)
    return cfg


@dataclass(frozen=True)
class _Ctx:
    file: Path
    base: Path
    check_files: bool = True

    def fail(self, key: str, problem: str, fix: str = "") -> typing.NoReturn:
        msg = f"{self.file}: {key or '<top>'}: {problem}"
        if fix:
            msg += f"; {fix}"
        raise ConfigError(msg)


def _build(cls: type, data: Any, prefix: str, ctx: _Ctx) -> Any:
    if not isinstance(data, dict):
        ctx.fail(prefix, f"expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in ("source_file",)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        import difflib

        k = unknown[0]
        close = difflib.get_close_matches(str(k), list(fields), n=1)
        fix = f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(fields)}"
        ctx.fail(_join(prefix, str(k)), "unknown key", fix)
    kwargs = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                ctx.fail(key, "required key is missing", f.metadata.get("help", "") and f"set it to {f.metadata['help']}")
            continue
        kwargs[name] = _convert(hints[name], data[name], key, ctx, f.metadata)
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
        item_tp = args[0]
        return tuple(_convert(item_tp, v, f"{key}[{i}]", ctx, meta) for i, v in enumerate(value))
    if tp is Path:
        if not isinstance(value, str) or not value:
            ctx.fail(key, f"expected a path string, got {_tname(value)}")
        p = Path(value).expanduser()
        if not p.is_absolute():
            p = ctx.base / p
        ex = meta.get("exists") if ctx.check_files else None
        if ex == "file" and not p.is_file():
            ctx.fail(key, f"file {value} does not exist (looked in {p.parent.name}/)", "fix the path or create the file")
        if ex == "dir" and not p.is_dir():
            ctx.fail(key, f"folder {value} does not exist", "fix the path or copy the bundle there")
        if ex == "parent" and not p.parent.is_dir():
            ctx.fail(key, f"folder for {value} does not exist", "create it or change the path")
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


def _cross_checks(cfg: Config, path: Path, check_files: bool = True) -> None:
    ctx = _Ctx(path, path.parent, check_files)
    if cfg.schema_version != SCHEMA_VERSION:
        ctx.fail("schema_version", f"{cfg.schema_version} is not supported", f"this medge reads version {SCHEMA_VERSION}")
    if not cfg.models:
        ctx.fail("models", "at least one model is required")
    if not cfg.sources:
        ctx.fail("sources", "at least one source is required")
    from edge.inference.backends import PROVIDERS  # registries import this module: import them late
    from edge.sources import SOURCE_KINDS

    names = [m.name for m in cfg.models]
    for i, m in enumerate(cfg.models):
        if names.count(m.name) > 1:
            ctx.fail(f"models[{i}].name", f"duplicate model name {m.name!r}")
        for j, p in enumerate(m.providers):
            if p not in PROVIDERS:
                ctx.fail(f"models[{i}].providers[{j}]", f"{p!r} is not a known provider", "use " + ", ".join(PROVIDERS))
        if m.require_signature and not cfg.trusted_keys:
            ctx.fail(f"models[{i}].require_signature", "is true but trusted_keys is empty",
                     "list the Ed25519 public key(s) bundles are signed with, or set require_signature: false")
    for j, k in enumerate(cfg.trusted_keys):
        if check_files and not k.is_file():
            ctx.fail(f"trusted_keys[{j}]", f"public key file {k.name} does not exist", "fix the path")
    snames = [s.name for s in cfg.sources]
    ports = {}
    for i, s in enumerate(cfg.sources):
        key = f"sources[{i}]"
        if snames.count(s.name) > 1:
            ctx.fail(f"{key}.name", f"duplicate source name {s.name!r}")
        kind = SOURCE_KINDS.get(s.kind)
        if kind is None:
            ctx.fail(f"{key}.kind", f"{s.kind!r} is not allowed", "use one of " + ", ".join(SOURCE_KINDS))
        if s.model not in names:
            ctx.fail(f"{key}.model", f"no model named {s.model!r}", "use one of " + ", ".join(names))
        for sub, problem, fix in kind.check(s, check_files):
            ctx.fail(f"{key}.{sub}" if sub else key, problem, fix)
        if kind.listens:
            if s.port in ports:
                ctx.fail(f"{key}.port", f"port {s.port} is already used by source {ports[s.port]!r}")
            ports[s.port] = s.name
    sy = cfg.sync
    if sy.enabled:
        if not (sy.broker.startswith("mqtt://") or sy.broker.startswith("mqtts://")):
            ctx.fail("sync.broker", f"{sy.broker!r} is not an MQTT URL", "use mqtt://host:port or mqtts://host:port")
        if (sy.cert_file is None) != (sy.key_file is None):
            ctx.fail("sync.cert_file", "client certificate and key must be given together", "set both cert_file and key_file")
        if sy.broker.startswith("mqtts://") and sy.ca_file is None:
            ctx.fail("sync.ca_file", "mqtts:// needs the broker's CA certificate", "set ca_file")
        if sy.backoff_min_s > sy.backoff_max_s:
            ctx.fail("sync.backoff_min_s", "is larger than backoff_max_s")
        if sy.hospital_ack_timeout_s > sy.hospital_ack_max_s:
            ctx.fail("sync.hospital_ack_timeout_s", "is larger than hospital_ack_max_s")
    lim = cfg.input_limits
    if lim.max_frame_mb > lim.max_object_mb:
        ctx.fail("input_limits.max_frame_mb", "is larger than max_object_mb")
    p = cfg.pipeline
    if p.metrics_port is not None and p.metrics_port in ports:
        ctx.fail("pipeline.metrics_port", f"port {p.metrics_port} is already used by source {ports[p.metrics_port]!r}")
