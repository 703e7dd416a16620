"""The MQTT topic scheme, in one place, because three parties must agree on it byte for byte: the
device (publishes findings, events, status, telemetry; reads its acknowledgements), the hospital receiver
(reads findings and events, publishes acknowledgements) and the broker's access control (which lets each
identity touch only its own branch; see `hospital.broker`).

    <prefix>/<site>/<device>/findings/<priority>   device -> hospital, QoS 1, finding JSON (medge.finding/1)
    <prefix>/<site>/<device>/events/<priority>     device -> hospital, QoS 1, device event JSON (medge.event/1)
    <prefix>/<site>/<device>/ack                   hospital -> device, QoS 1, committed finding and event ids
    <prefix>/<site>/<device>/status                device, retained online/offline (+ last will)
    <prefix>/<site>/<device>/telemetry             device, QoS 0 heartbeat

Events (`edge.events`) have their own topic level, not a flag in a finding, so a hospital system reading
findings never sees one and the broker can grant them separately; they share the ack topic because an
acknowledgement only names ids, and ids are unique across both.

An acknowledgement is ``{"v": 1, "ids": [...], "rejected": [{"id": ..., "reason": ...}], "by": receiver}``:
the receiver publishes it after the database commit that stored (or, for a duplicate, had already
stored) those findings and events; ``rejected`` lists the ones it refused and kept in its rejected table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edge.errors import ConfigError
from edge.findings import PRIORITIES

DEFAULT_PREFIX = "medge"
DEFAULT_GROUP = "medge-receivers"
FORBIDDEN = "+#/\0"
ACK_PAYLOAD_VERSION = 1
# what an outbox row is (edge.link.outbox) -> the topic level it travels under
TOPIC_LEVELS = {"finding": "findings", "event": "events"}


def check_level(label: str, value: str, where: str = "profile") -> None:
    """A site, device id or prefix becomes one topic level: refuse what would change the topic's shape."""
    if not value or any(ch in value for ch in FORBIDDEN) or value.startswith("$"):
        raise ConfigError(f"{where}: {label}: {value!r} cannot be part of an MQTT topic (no /, +, #, leading $)")


@dataclass(frozen=True)
class DeviceTopics:
    """Every topic one device uses."""

    prefix: str
    site: str
    device: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.site}/{self.device}"

    def findings(self, priority: str) -> str:
        return self.record("finding", priority)

    def events(self, priority: str) -> str:
        return self.record("event", priority)

    def record(self, kind: str, priority: str) -> str:
        """Where an outbox row of ``kind`` ("finding" or "event") is published."""
        return f"{self.base}/{TOPIC_LEVELS[kind]}/{priority}"

    @property
    def findings_filter(self) -> str:
        return f"{self.base}/findings/#"

    @property
    def events_filter(self) -> str:
        return f"{self.base}/events/#"

    @property
    def ack(self) -> str:
        return f"{self.base}/ack"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def telemetry(self) -> str:
        return f"{self.base}/telemetry"


def device_topics(prefix: str, site: str, device: str, where: str = "profile") -> DeviceTopics:
    for label, v in (("sync.topic_prefix", prefix), ("device.site", site), ("device.id", device)):
        check_level(label, v, where)
    return DeviceTopics(prefix, site, device)


def findings_filter(prefix: str = DEFAULT_PREFIX) -> str:
    """What receivers subscribe to (inside ``$share/<group>/``)."""
    return f"{prefix}/+/+/findings/#"


def events_filter(prefix: str = DEFAULT_PREFIX) -> str:
    """What receivers subscribe to for device events (inside ``$share/<group>/``, next to the findings)."""
    return f"{prefix}/+/+/events/#"


def shared(group: str, topic_filter: str) -> str:
    return f"$share/{group}/{topic_filter}"


@dataclass(frozen=True)
class RecordTopic:
    """A findings or events topic taken apart; ``kind`` is the outbox kind ("finding" or "event")."""

    prefix: str
    site: str
    device: str
    priority: str
    kind: str = "finding"

    @property
    def device_topics(self) -> DeviceTopics:
        return DeviceTopics(self.prefix, self.site, self.device)


_LEVEL_KINDS = {level: kind for kind, level in TOPIC_LEVELS.items()}


def parse_record_topic(topic: str) -> RecordTopic | None:
    """The parts of a findings or events topic, or None when the topic does not follow the scheme."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[3] not in _LEVEL_KINDS or parts[4] not in PRIORITIES or not all(parts[:3]):
        return None
    return RecordTopic(parts[0], parts[1], parts[2], parts[4], _LEVEL_KINDS[parts[3]])


def parse_ack(payload: bytes) -> tuple[list[str], dict[str, str]]:
    """An acknowledgement message: ids the hospital committed, and ids it refused with the reason."""
    doc = json.loads(payload)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    ids = doc.get("ids", [])
    rejected = doc.get("rejected", [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or not isinstance(rejected, list):
        raise ValueError("ids must be a list of finding/event ids")
    refused = {}
    for r in rejected:
        if not isinstance(r, dict) or not isinstance(r.get("id"), str):
            raise ValueError("rejected entries must carry an id")
        refused[r["id"]] = str(r.get("reason", ""))
    return ids, refused


def ack_payload(ids: list[str], rejected: dict[str, str] | None = None, receiver: str | None = None) -> bytes:
    """What the receiver publishes on a device's ack topic after its commit (compact JSON)."""
    doc: dict[str, Any] = {"v": ACK_PAYLOAD_VERSION, "ids": ids}
    if rejected:
        doc["rejected"] = [{"id": i, "reason": r} for i, r in rejected.items()]
    if receiver:
        doc["by"] = receiver
    return json.dumps(doc, separators=(",", ":")).encode()
