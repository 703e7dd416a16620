"""Broker configuration for a medge fleet: mosquitto 2.0 with one identity per certificate.

The fault harness that reviewed medge showed what a broker must enforce, because no device-side code
can make up for it:

- **The client id is the certificate identity** (``use_identity_as_username`` +
  ``use_username_as_clientid``). Otherwise any valid device certificate can connect with the
  receiver's client id, take over its persistent session and wipe the findings queued in it.
- **Per-identity access control that covers subscriptions.** mosquitto 2.0's ``acl_file`` never checks
  SUBSCRIBE (its source says so), so a device could join the receivers' ``$share`` group and the broker
  would then hand it every other finding, PUBACK the device and drop the message at the read check.
  The dynamic-security plugin, shipped in the same Debian package, checks subscriptions; this module
  renders its JSON from a fleet inventory: each device may publish only under its own
  ``<prefix>/<site>/<device>/`` (findings, events, status, telemetry) and read only its own ack topic;
  receivers read findings and device events only through the shared group and publish
  acknowledgements; monitors read everything but may not join a shared group; every identity not listed
  is refused everything.

``medge hospital broker-config FLEET.yaml --out DIR`` writes ``mosquitto.conf`` and ``dynamic-security.json``
(deploy/mosquitto/ holds an example inventory and its output). The test suite's broker is rendered by
the same functions, so the fault matrix runs against exactly this configuration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edge.durable_files import write_atomic
from edge.errors import ConfigError
from edge.link.topics import DEFAULT_GROUP, DEFAULT_PREFIX, DeviceTopics, check_level, events_filter, findings_filter, shared

DYNSEC_PLUGINS = (  # where Debian/Ubuntu (both architectures) and a source build put the plugin
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)


def find_dynsec_plugin() -> str:
    """The installed dynamic-security plugin, or the x86-64 Debian path when none is installed here (the
    configuration may be rendered on another machine than the broker's; set broker.dynsec_plugin then)."""
    return next((p for p in DYNSEC_PLUGINS if Path(p).is_file()), DYNSEC_PLUGINS[0])


@dataclass(frozen=True)
class Fleet:
    """Who may talk to the broker, and as what. Names are certificate common names."""

    devices: dict[str, str]  # device id -> site
    receivers: tuple[str, ...]
    monitors: tuple[str, ...] = ()
    prefix: str = DEFAULT_PREFIX
    group: str = DEFAULT_GROUP

    def __post_init__(self) -> None:
        check_level("prefix", self.prefix, "fleet")
        check_level("group", self.group, "fleet")
        for dev, site in self.devices.items():
            check_level(f"device {dev!r}", dev, "fleet")
            check_level(f"site of {dev!r}", site, "fleet")
        names = [*self.devices, *self.receivers, *self.monitors]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"fleet: {', '.join(dup)} listed twice; every certificate identity has one role")
        if not self.receivers:
            raise ConfigError("fleet: receivers: at least one receiver identity is needed")


@dataclass(frozen=True)
class BrokerSettings:
    """Where the broker listens and keeps its files (paths are the broker host's)."""

    cafile: str
    certfile: str
    keyfile: str
    port: int = 8883
    bind: str = "0.0.0.0"
    persistence_location: str = "/var/lib/mosquitto/"
    dynsec_file: str = "/etc/mosquitto/dynamic-security.json"
    dynsec_plugin: str = field(default_factory=find_dynsec_plugin)
    # receivers with fixed client ids that are down for hours queue the fleet's findings in their sessions
    max_queued_messages: int = 1_000_000
    max_inflight_messages: int = 100
    autosave_interval_s: int = 30
    log_dest: str = "syslog"
    log_types: tuple[str, ...] = ("error", "warning", "notice", "information")
    run_as_user: str | None = None
    extra: tuple[str, ...] = field(default=())


def _acl(kind: str, topic: str, allow: bool = True, priority: int = 0) -> dict[str, Any]:
    return {"acltype": kind, "topic": topic, "priority": priority, "allow": allow}


def dynsec_config(fleet: Fleet) -> dict[str, Any]:
    """The dynamic-security plugin's configuration: default deny, one role per identity."""
    p = fleet.prefix
    receive = [acl for f in (findings_filter(p), events_filter(p))
               for acl in (_acl("subscribePattern", shared(fleet.group, f)),
                           _acl("unsubscribePattern", shared(fleet.group, f)), _acl("publishClientReceive", f))]
    roles = [
        {"rolename": "medge-receiver", "textdescription": "stores findings and device events, publishes acknowledgements",
         "acls": [*receive, _acl("publishClientSend", f"{p}/+/+/ack")]},
        {"rolename": "medge-monitor", "textdescription": "reads everything, may not take findings from receivers",
         "acls": [_acl("subscribePattern", "$share/#", allow=False, priority=10),
                  _acl("subscribePattern", "#"), _acl("publishClientReceive", f"{p}/#")]},
    ]
    clients = [{"username": r, "roles": [{"rolename": "medge-receiver"}]} for r in fleet.receivers]
    clients += [{"username": m, "roles": [{"rolename": "medge-monitor"}]} for m in fleet.monitors]
    for dev, site in sorted(fleet.devices.items()):
        t = DeviceTopics(p, site, dev)
        role = f"medge-device-{dev}"
        roles.append({"rolename": role, "acls": [
            _acl("publishClientSend", t.findings_filter), _acl("publishClientSend", t.events_filter),
            _acl("publishClientSend", t.status),
            _acl("publishClientSend", t.telemetry), _acl("subscribeLiteral", t.ack),
            _acl("unsubscribeLiteral", t.ack), _acl("publishClientReceive", t.ack)]})
        clients.append({"username": dev, "textdescription": f"device at {site}", "roles": [{"rolename": role}]})
    return {"defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False, "subscribe": False,
                                 "unsubscribe": False},
            "clients": clients, "roles": roles, "groups": []}


def mosquitto_conf(s: BrokerSettings) -> str:
    lines = [
        "# medge broker: mTLS, identity = certificate CN = client id, dynamic-security ACL (hospital.broker)",
        "per_listener_settings false",
        "allow_anonymous false",
        *([f"user {s.run_as_user}"] if s.run_as_user else []),
        f"listener {s.port} {s.bind}",
        f"cafile {s.cafile}",
        f"certfile {s.certfile}",
        f"keyfile {s.keyfile}",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "allow_zero_length_clientid false",
        f"plugin {s.dynsec_plugin}",
        f"plugin_opt_config_file {s.dynsec_file}",
        "persistence true",
        f"persistence_location {s.persistence_location}",
        f"autosave_interval {s.autosave_interval_s}",
        f"max_queued_messages {s.max_queued_messages}",
        f"max_inflight_messages {s.max_inflight_messages}",
        f"log_dest {s.log_dest}",
        *(f"log_type {t}" for t in s.log_types),
        "connection_messages true",
        *s.extra,
        "",
    ]
    return "\n".join(lines)


def load_fleet(path: Path | str) -> tuple[Fleet, BrokerSettings]:
    """A fleet inventory YAML (see deploy/mosquitto/fleet.example.yaml)."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read fleet inventory ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("sites"), dict) or not isinstance(doc.get("broker"), dict):
        raise ConfigError(f"{path}: a fleet inventory needs 'sites' (site: [device ids]) and 'broker' mappings")
    devices: dict[str, str] = {}
    for site, devs in doc["sites"].items():
        for d in devs or []:
            if str(d) in devices:
                raise ConfigError(f"{path}: device {d!r} is listed at {devices[str(d)]!r} and {site!r}")
            devices[str(d)] = str(site)
    try:
        fleet = Fleet(devices=devices, receivers=tuple(map(str, doc.get("receivers") or ())),
                      monitors=tuple(map(str, doc.get("monitors") or ())),
                      prefix=str(doc.get("prefix", DEFAULT_PREFIX)), group=str(doc.get("group", DEFAULT_GROUP)))
        b = dict(doc["broker"])
        if "log_types" in b:
            b["log_types"] = tuple(b["log_types"])
        settings = BrokerSettings(**b)
    except TypeError as e:
        raise ConfigError(f"{path}: broker: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return fleet, settings


def write_broker_config(fleet: Fleet, settings: BrokerSettings, out: Path) -> list[Path]:
    """mosquitto.conf and dynamic-security.json in ``out``, each written atomically."""
    out = Path(out)
    if not out.is_dir():
        raise ConfigError(f"{out}: output folder does not exist")
    conf, dynsec = out / "mosquitto.conf", out / "dynamic-security.json"
    write_atomic(conf, mosquitto_conf(settings).encode())
    write_atomic(dynsec, (json.dumps(dynsec_config(fleet), indent=1) + "\n").encode(), mode=0o640)
    return [conf, dynsec]
