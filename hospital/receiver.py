"""`medge receive`: the hospital-side end of the findings pipe.

Why it is built this way:
- It subscribes with an MQTT 5 shared subscription (``$share/<group>/<filter>``) so several receivers on
  a broker cluster split the load, and with a persistent session (clean_start false + expiry) so the
  broker queues findings while a receiver is restarted.
- paho's automatic acknowledgement is off (``manual_ack``): a PUBACK is sent only after the findings
  it acknowledges are committed to the database. A crash before that commit makes the broker deliver
  the message again; the finding id (primary key) turns that into a counted duplicate, so every
  finding is stored exactly once.
- Acknowledgements are batched behind one commit per loop turn (group commit) to keep up with a fleet
  draining a multi-day backlog.
- After the commit, and before the PUBACKs, it publishes (QoS 1) the committed finding ids on each
  sending device's ack topic (``edge.link.topics``): only that end-to-end acknowledgement lets the device
  forget a finding, because a broker PUBACK does not prove a receiver got it. Duplicates are
  acknowledged again (the device resent because an earlier acknowledgement was lost). A crash between
  commit and acknowledgement makes the device resend later, which the primary key absorbs.
- A message that is not a valid finding, or whose device id does not match the topic it arrived on
  (a device can only write under its own topic, so a mismatch is a forgery or a bug), is recorded in
  a ``rejected`` table with the reason and acknowledged, so it neither blocks the queue nor vanishes;
  when it carries a finding id, the device is told it was refused (``rejected`` in the ack).
- Device events (`edge.events`) arrive on the devices' ``events/<priority>`` topics through the same
  shared group and are checked, stored (their own table, keyed by event id) and acknowledged in the same
  commit-then-ack batch. A broker that refuses only the events subscription (its ACL predates events)
  is logged as an error but does not stop findings: the devices keep their events until it is fixed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.errors import ConfigError
from edge.events import EVENT_SCHEMA
from edge.findings import SCHEMA, iso_utc
from edge.link.backoff import Backoff
from edge.link.mqtt import SESSION_TAKEN_OVER, describe_error, new_client, parse_broker_url
from edge.link.topics import DEFAULT_GROUP, TOPIC_LEVELS, ack_payload, findings_filter, parse_record_topic, shared
from hospital.store import FindingStore, Received, Rejected, open_store

log = logging.getLogger("medge.receive")

SESSION_EXPIRY_S = 7 * 24 * 3600
SESSION_EXPIRY_DEFAULT_ID_S = 300  # a per-process id is never resumed: do not leave its session queueing for a week
RECEIVE_MAXIMUM = 1000
BATCH = 500
BATCH_WAIT_S = 0.02


@dataclass
class ReceiverStats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    connects: int = 0
    acks_published: int = 0  # acknowledgement messages sent to devices


# kind -> (what it is called, the schema its payload declares, whether it may leave the schema out: test
# tools and monitors publish bare findings, while every event comes from a medge that tags it)
_KINDS = {"finding": ("a finding", SCHEMA, True), "event": ("an event", EVENT_SCHEMA, False)}


def parse_message(topic: str, payload: bytes, props: Any) -> Received | Rejected:
    """Check a message against the topic scheme <prefix>/<site>/<device>/{findings,events}/<priority>."""
    now = iso_utc()
    ft = parse_record_topic(topic)
    if ft is None:
        return Rejected(topic, now, "topic does not follow <prefix>/<site>/<device>/findings|events/<priority>", payload)
    kind, id_key = ft.kind, f"{ft.kind}_id"
    try:
        doc = json.loads(payload)
        fid = doc[id_key]
        if not isinstance(fid, str) or not fid:
            raise ValueError(f"{id_key} is empty")
    except (ValueError, KeyError, TypeError) as e:
        return Rejected(topic, now, f"payload is not {_KINDS[kind][0]} ({type(e).__name__}: {e})", payload)
    if b"u0000" in payload and _has_nul(doc):
        # valid JSON, but PostgreSQL's JSONB cannot hold it: the batch would fail at every receiver it is
        # redelivered to and stop the group; refuse it here, like any other malformed message
        return Rejected(topic, now, "a string holds a NUL character (\\u0000), which the hospital database cannot store",
                        payload, fid)
    _, schema, optional = _KINDS[kind]
    if doc.get("schema", schema if optional else None) != schema:
        return Rejected(topic, now, f"schema {doc.get('schema')!r} is not {schema!r} (on a {TOPIC_LEVELS[kind]} topic)",
                        payload, fid)
    prop_ids = [v for k, v in (getattr(props, "UserProperty", None) or []) if k == id_key]
    if prop_ids and prop_ids[0] != fid:
        return Rejected(topic, now, f"{id_key} property {prop_ids[0]!r} differs from the payload's {fid!r}", payload, fid)
    if doc.get("device_id") != ft.device:
        return Rejected(topic, now, f"device_id {doc.get('device_id')!r} does not match the topic's device {ft.device!r}",
                        payload, fid)
    if doc.get("priority", "routine" if kind == "finding" else None) != ft.priority:
        return Rejected(topic, now, f"priority {doc.get('priority')!r} does not match the topic", payload, fid)
    return Received(fid, ft.site, ft.device, ft.priority, topic, now, payload.decode(), kind)


def _has_nul(v: Any) -> bool:
    if isinstance(v, str):
        return "\x00" in v
    if isinstance(v, dict):
        return any(_has_nul(k) or _has_nul(x) for k, x in v.items())
    if isinstance(v, list):
        return any(_has_nul(x) for x in v)
    return False


def acknowledgements(batch: list[Received | Rejected]) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Per device ack topic: the committed finding and event ids and the refused ones (with the reason)."""
    out: dict[str, tuple[list[str], dict[str, str]]] = {}
    for m in batch:
        ft = parse_record_topic(m.topic)
        if ft is None:
            continue  # not a device's findings or events topic: nobody to tell
        ids, refused = out.setdefault(ft.device_topics.ack, ([], {}))
        if isinstance(m, Received):
            ids.append(m.finding_id)
        elif m.finding_id is not None:
            refused[m.finding_id] = m.reason
    return out


@dataclass(frozen=True)
class ReceiverConfig:
    """What `medge receive` is told: the broker, the database, and who it is on the broker."""

    broker: str
    db: str  # SQLite file path, or a postgresql:// URL
    group: str = DEFAULT_GROUP
    topic: str = field(default_factory=findings_filter)
    # None: ``topic`` with its findings level replaced by events (same prefix, sites and devices)
    events_topic: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    # default: medge-receiver-<host>-<pid>-<random>, unique per receiver, so two receivers on one host (or
    # in one process) never take each other's session. Such a session is never resumed, so it asks to expire
    # SESSION_EXPIRY_DEFAULT_ID_S after the process ends (this also holds where the broker makes the
    # certificate's name the client id). While every receiver is away longer than that, the share group has
    # no subscriber and the findings stay on the devices (held after a "no matching subscribers" PUBACK, or
    # resent when no acknowledgement comes): slower, never lost. Give --client-id to have the broker queue
    # for a receiver that comes back (SESSION_EXPIRY_S).
    client_id: str | None = None
    backoff_min_s: float = 0.5
    # short on purpose: while a receiver is away after a broker restart, its shared subscription may be
    # missing and devices wait longer for their acknowledgements
    backoff_max_s: float = 5.0


class Receiver:
    """One receiver process's connection loop; ``run(stop)`` returns when ``stop`` is set."""

    def __init__(self, cfg: ReceiverConfig) -> None:
        if any(ch in cfg.group for ch in "/+#") or not cfg.group:
            raise ConfigError(f"--group {cfg.group!r}: a shared-subscription group name cannot contain / + #")
        self.cfg = cfg
        self.url = parse_broker_url(cfg.broker)
        self.filter = shared(cfg.group, cfg.topic)
        self.events_filter = shared(cfg.group, cfg.events_topic or _events_twin(cfg.topic))
        self.ca_file, self.cert_file, self.key_file = cfg.ca_file, cfg.cert_file, cfg.key_file
        self.client_id = cfg.client_id or f"medge-receiver-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.session_expiry_s = SESSION_EXPIRY_S if cfg.client_id else SESSION_EXPIRY_DEFAULT_ID_S
        self.db = cfg.db
        self.store: FindingStore | None = None  # opened in run(): connections belong to the thread using them
        self.stats = ReceiverStats()
        self.backoff = Backoff(cfg.backoff_min_s, cfg.backoff_max_s)
        self._pending: list[tuple[int, int, Received | Rejected]] = []
        self._connected = False
        self._refused: str | None = None
        self.ready = threading.Event()  # set once subscribed (tests wait on it)

    def run(self, stop: threading.Event) -> None:
        self.store = open_store(self.db)
        try:
            while not stop.is_set():
                if self._session(stop):
                    self.backoff.reset()
                if not stop.is_set():
                    stop.wait(self.backoff.next())
        finally:
            self.store.close()
            st = self.stats
            log.info("receiver stopped: received %d, stored %d, duplicates %d, rejected %d, acknowledgements %d",
                     st.received, st.stored, st.duplicates, st.rejected, st.acks_published)

    def _session(self, stop: threading.Event) -> bool:
        self._connected, self._refused, self._pending = False, None, []
        c = new_client(self.client_id, self.url, self.ca_file, self.cert_file, self.key_file, manual_ack=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        try:
            c.connect(self.url.host, self.url.port, keepalive=30, clean_start=False, properties=props)
        except OSError as e:
            log.warning("receiver: cannot connect to %s: %s", self.url, describe_error(e))
            return False
        accepted = False
        first_pending = 0.0
        deadline = time.monotonic() + 10
        try:
            while not stop.is_set():
                had = len(self._pending)
                rc = c.loop(timeout=0.01 if self._pending else 0.1)
                if self._pending and not had:
                    first_pending = time.monotonic()
                if self._pending and (len(self._pending) >= BATCH or len(self._pending) == had
                                      or time.monotonic() - first_pending > BATCH_WAIT_S):
                    try:
                        self._commit_and_ack(c)
                    except (sqlite3.DatabaseError, OSError) as e:  # not acknowledged: redelivered after reconnect
                        log.error("receiver: cannot store findings (%s); reconnecting", e)
                        break
                if self._refused:
                    log.error("receiver: broker %s refused the connection: %s", self.url, self._refused)
                    break
                if rc != mqtt.MQTT_ERR_SUCCESS or (accepted and not self._connected):
                    break
                if self._connected and not accepted:
                    accepted = True
                    self.stats.connects += 1
                elif not self._connected and time.monotonic() > deadline:
                    log.warning("receiver: no CONNACK from %s", self.url)
                    break
        finally:
            self._pending = []  # not acknowledged: the broker delivers them again
            self.ready.clear()
            try:
                c.disconnect()
                c.loop(timeout=0.01)
            except Exception:
                pass
        return accepted

    def _commit_and_ack(self, c: mqtt.Client) -> None:
        batch, self._pending = self._pending, []
        rows = [m for _, _, m in batch if isinstance(m, Received)]
        rejected = [m for _, _, m in batch if isinstance(m, Rejected)]
        assert self.store is not None
        new = self.store.add(rows, rejected)  # raises -> nothing acknowledged, broker re-delivers
        self.stats.stored += new
        self.stats.duplicates += len(rows) - new
        self.stats.rejected += len(rejected)
        for r in rejected:
            log.warning("receiver: rejected a message on %s: %s", r.topic, r.reason)
        # committed: tell each device (end-to-end), then let the broker forget the messages
        for topic, (ids, refused) in acknowledgements([m for _, _, m in batch]).items():
            c.publish(topic, ack_payload(ids, refused, self.client_id), qos=1, retain=False)
            self.stats.acks_published += 1
        for mid, qos, _ in batch:
            c.ack(mid, qos)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
            return
        self._connected = True
        log.info("receiver: connected to %s as %s (session present: %s), subscribing %s and %s", self.url,
                 self.client_id, flags.session_present, self.filter, self.events_filter)
        client.subscribe([(self.filter, SubscribeOptions(qos=1)), (self.events_filter, SubscribeOptions(qos=1))])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        findings_rc, *events_rc = reason_codes  # in the order subscribed: findings, events
        if findings_rc.is_failure:
            log.error("receiver: subscription %s refused: %s", self.filter, findings_rc)
            self._refused = f"subscription refused ({findings_rc})"
            return
        for rc in events_rc:
            if rc.is_failure:
                log.error("receiver: subscription %s refused (%s): device events stay on the devices until the broker "
                          "ACL lets receivers read them (re-render it: medge hospital broker-config)", self.events_filter, rc)
        self.ready.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected:
            if getattr(reason_code, "value", None) == SESSION_TAKEN_OVER:
                log.warning("receiver: another client connected as %s and took this receiver's session over; give "
                            "each receiver its own certificate/client id", self.client_id)
            else:
                log.warning("receiver: disconnected from %s (%s)", self.url, reason_code)
        self._connected = False

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        self.stats.received += 1
        self._pending.append((msg.mid, msg.qos, parse_message(msg.topic, msg.payload, msg.properties)))


def _events_twin(findings_topic: str) -> str:
    """The events filter matching a findings filter, so ``--topic`` narrows both alike."""
    parts = findings_topic.split("/")
    if len(parts) < 4 or parts[3] != TOPIC_LEVELS["finding"]:
        raise ConfigError(f"--topic {findings_topic!r}: expected <prefix>/<site>/<device>/findings/..., from which the "
                          "device events filter is derived")
    parts[3] = TOPIC_LEVELS["event"]
    return "/".join(parts)


def run_receiver(cfg: ReceiverConfig, max_seconds: float | None = None) -> int:
    """Run until SIGTERM/SIGINT or ``max_seconds``; 0 on a normal stop."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    rx = Receiver(cfg)
    if not rx.url.tls:
        log.warning("receiver: %s is plain MQTT: findings arrive unencrypted and the broker cannot tell this receiver "
                    "from anyone else; use mqtts:// with a client certificate outside a lab", rx.url)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    if max_seconds is not None:
        timer = threading.Timer(max_seconds, stop.set)
        timer.daemon = True
        timer.start()
    rx.run(stop)
    s = rx.stats
    print(f"received {s.received}, stored {s.stored}, duplicates {s.duplicates}, rejected {s.rejected}, "
          f"acknowledgements {s.acks_published}", flush=True)
    return 0
