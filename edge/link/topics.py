"""The MQTT topic scheme, in one place, because three parties must agree on it byte for byte: the
device (publishes findings, status, telemetry; reads its acknowledgements), the hospital receiver (reads
findings, publishes acknowledgements) and the broker's access control (which lets each identity touch
only its own branch; see `hospital.broker`).

    <prefix>/<site>/<device>/findings/<priority>   device -> hospital, QoS 1, finding JSON
    <prefix>/<site>/<device>/ack                   hospital -> device, QoS 1, committed finding ids
    <prefix>/<site>/<device>/status                device, retained online/offline (+ last will)
    <prefix>/<site>/<device>/telemetry             device, QoS 0 heartbeat

An acknowledgement is ``{"v": 1, "ids": [...], "rejected": [{"id": ..., "reason": ...}], "by": receiver}``:
the receiver publishes it after the database commit that stored (or, for a duplicate, had already
stored) those findings; ``rejected`` lists findings it refused and kept in its rejected table.
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
        return f"{self.base}/findings/{priority}"

    @property
    def findings_filter(self) -> str:
        return f"{self.base}/findings/#"

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


def shared(group: str, topic_filter: str) -> str:
    return f"$share/{group}/{topic_filter}"


@dataclass(frozen=True)
class FindingTopic:
    prefix: str
    site: str
    device: str
    priority: str

    @property
    def device_topics(self) -> DeviceTopics:
        return DeviceTopics(self.prefix, self.site, self.device)


def parse_finding_topic(topic: str) -> FindingTopic | None:
    """The parts of a findings topic, or None when the topic does not follow the scheme."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[3] != "findings" or parts[4] not in PRIORITIES or not all(parts[:3]):
        return None
    return FindingTopic(parts[0], parts[1], parts[2], parts[4])


def parse_ack(payload: bytes) -> tuple[list[str], dict[str, str]]:
    """An acknowledgement message: ids the hospital committed, and ids it refused with the reason."""
    doc = json.loads(payload)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    ids = doc.get("ids", [])
    rejected = doc.get("rejected", [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or not isinstance(rejected, list):
        raise ValueError("ids must be a list of finding ids")
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
