"""SyncClient: drains the outbox to the hospital over MQTT 5 (TLS, QoS 1), until the hospital says it
has each finding.

Why it is built this way:
- One thread owns everything: the paho client (its loop runs in our thread via ``loop()``, never
  ``loop_start``), the outbox connection, the in-flight window. No locks around paho, no callbacks
  racing with the outbox.
- End-to-end acknowledgement. A broker PUBACK means "the broker took it", never "the hospital stored
  it": a restarted mosquitto restores the receivers' queued session but not their ``$share``
  subscription, and until they re-subscribe it PUBACKs findings that only a monitoring tap receives.
  So a success PUBACK only moves a finding to *at broker*; it leaves the outbox when the receiver,
  after its database commit, publishes the finding's id on this device's ack topic
  (``edge.link.topics``). An at-broker finding whose acknowledgement is overdue is sent again, with a
  doubling wait (``sync.hospital_ack_timeout_s`` up to ``hospital_ack_max_s``); the receiver
  de-duplicates by id and acknowledges duplicates too. The ack subscription lives in the device's
  persistent session, so acknowledgements published while the device is offline wait at the broker;
  they are read with manual acknowledgement and PUBACKed only after the outbox commit.
  ``sync.ack_mode: broker`` restores PUBACK-as-delivered for a receiver that does not acknowledge.
- PUBACK stays the flow control: the in-flight window counts findings without a PUBACK. A refusal (e.g.
  0x87 not authorized: the device publishes outside its ACL) is logged, counted and the finding is held
  and retried later, never dropped. "No matching subscribers" (0x10) is a success code in MQTT 5 but
  means the broker discarded the message (no receiver session exists yet), so it is treated like a
  refusal.
- paho keeps its session in memory and, after a reconnect, re-sends everything it held regardless of
  max_inflight. So each connection gets a fresh paho client; whatever was in flight when a link died
  goes back to pending in the outbox and is sent again on the next connection (the receiver
  de-duplicates by finding id). The broker session itself persists (clean_start false + expiry).
- Our own window is ``min(sync.inflight, the broker's Receive Maximum)``; PUBACKs and acknowledgements
  are committed in batches (one fsync per loop turn, not per finding).
- Device events (`edge.events`) are outbox rows like findings and take exactly this path, on their own
  topic level (``events/<priority>``) so nothing reading findings sees one; the id user property names
  the kind (``finding_id`` or ``event_id``) and the receiver checks it against the payload's id.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config import Config
from edge.errors import ConfigError, MedgeError
from edge.findings import iso_utc
from edge.link.backoff import Backoff
from edge.link.mqtt import SESSION_TAKEN_OVER, describe_error, new_client, parse_broker_url
from edge.link.outbox import Outbox, OutboxItem
from edge.link.topics import DeviceTopics, device_topics, parse_ack
from edge.units import MIB

log = logging.getLogger("medge.sync")

NO_MATCHING_SUBSCRIBERS = 0x10
PURGE_EVERY_S = 3600.0
RESEND_CHECK_S = 1.0
# How long one network loop waits for the broker: short while findings are moving (the window refills as
# PUBACKs and acknowledgements arrive, and they wake the loop at once anyway), longer when there is nothing
# to send, so an idle device does not run its loop 50 times a second; a new finding waits at most that
# long. Measured with 200 devices on one host (benchmarks/bench_fleet.py): idle loops cost a core.
LOOP_BUSY_S = 0.02
LOOP_IDLE_S = 0.1
# after (re)subscribing to the ack topic, acknowledgements the broker queued while we were away arrive
# first; resending before they had a chance would only make duplicates
ACK_GRACE_S = 5.0
# two processes with one identity take the session from each other on every reconnect; pause so the
# log shows the fight instead of a tight loop
TAKEOVER_PAUSE_S = 5.0


@dataclass
class SyncStats:
    connected: bool = False
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    published: int = 0
    at_broker: int = 0  # success PUBACKs (the broker took them)
    delivered: int = 0  # acknowledged by the hospital (end-to-end), or PUBACKs in ack_mode broker
    hospital_rejected: int = 0  # acknowledged by the receiver as refused (stored in its rejected table)
    resent: int = 0  # at broker, no acknowledgement in time: sent again
    ack_messages: int = 0  # acknowledgement messages read from the ack topic
    rejected: int = 0  # PUBACK with a failure reason code (ACL, quota, ...)
    no_subscribers: int = 0
    ack_timeouts: int = 0
    in_flight: int = 0
    held: int = 0
    last_error: str | None = None
    last_rejection: str | None = None
    ack_subscription: str | None = None  # "granted", or why the broker refused the ack topic

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Sent:
    item: OutboxItem
    sent_at: float


def topics(cfg: Config) -> DeviceTopics:
    """This device's topics (`edge.link.topics`); refuses ids that cannot be one topic level."""
    return device_topics(cfg.sync.topic_prefix, cfg.device.site, cfg.device.id, str(cfg.source_file or "profile"))


class SyncClient:
    """Runs the MQTT loop in its own thread and drains the outbox until ``stop``."""

    def __init__(self, cfg: Config, telemetry: Callable[[], dict] | None = None) -> None:
        self.cfg = cfg
        self.sc = cfg.sync
        self.url = parse_broker_url(self.sc.broker)
        self.topics = topics(cfg)
        self.client_id = self.sc.client_id or f"medge-{cfg.device.id}"
        self.end_to_end = self.sc.ack_mode == "end-to-end"
        self.telemetry = telemetry
        self._password: str | None = None
        if self.sc.password_file is not None:
            try:
                self._password = Path(self.sc.password_file).read_text().strip()
            except OSError as e:
                raise ConfigError(f"{self.sc.password_file}: cannot read password file ({e.strerror})") from None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stats = SyncStats()
        # state owned by the sync thread
        self._inflight: dict[int, _Sent] = {}
        self._held: list[tuple[float, OutboxItem]] = []
        self._outbox_idle = False  # the last lease found fewer findings than it could take
        self._pubacked: list[str] = []
        self._hospital_acks: list[tuple[int, int, list[str], dict[str, str]]] = []  # mid, qos, ids, refused
        self._connected = False
        self._refused: str | None = None
        self._taken_over = False
        self._recv_max = 65535
        self._ack_sub_mid: int | None = None
        self._ack_sub_at: float | None = None  # monotonic time the ack subscription was granted
        self._hold_backoff = Backoff(max(self.sc.backoff_min_s, 0.05), self.sc.backoff_max_s)
        self._ob: Outbox | None = None  # the sync thread's outbox connection (sqlite3: one per thread)
        self._client: mqtt.Client | None = None  # this connection's paho client

    # --------------------------------------------------------------------------------- public API
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("SyncClient already started")
        if not self.end_to_end:
            log.warning("sync: ack_mode is 'broker': a finding leaves the outbox on the broker's PUBACK, not when the "
                        "hospital has stored it; a broker that drops an accepted message loses it")
        self._thread = threading.Thread(target=self._run, name="medge-sync", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Publish the offline status, disconnect, close the outbox. True if the thread ended in time."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stats(self) -> SyncStats:
        with self._lock:
            return replace(self._stats)

    def _stat(self, **kw: Any) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self._stats, k, v)

    def _count(self, name: str, by: int = 1) -> None:
        with self._lock:
            setattr(self._stats, name, getattr(self._stats, name) + by)

    # --------------------------------------------------------------------------------- the thread
    def _run(self) -> None:
        ob = None
        retry = Backoff(1.0, 60.0)
        while ob is None:
            try:
                ob = self._ob = Outbox.from_config(self.cfg)
            except MedgeError as e:  # keep trying: the findings stay safe on disk meanwhile
                log.error("sync: %s", e)
                self._stat(last_error=str(e))
                if self._stop.wait(retry.next()):
                    return
        try:
            n = self._ob.retry_all()
            if n:
                log.info("sync: %d finding(s) left in flight by the previous run are pending again", n)
            self._ob.purge_expired()
            next_purge = time.monotonic() + PURGE_EVERY_S
            backoff = Backoff(self.sc.backoff_min_s, self.sc.backoff_max_s)
            while not self._stop.is_set():
                ok = self._session(backoff)
                self._requeue_all()
                if time.monotonic() > next_purge:
                    self._ob.purge_expired()
                    next_purge = time.monotonic() + PURGE_EVERY_S
                if self._stop.is_set():
                    break
                delay = backoff.next()
                if self._taken_over:
                    delay = max(delay, TAKEOVER_PAUSE_S)
                if ok:
                    log.info("sync: reconnecting in %.1fs", delay)
                self._stop.wait(delay)
        except Exception as e:  # the daemon keeps running; the outbox keeps everything
            log.exception("sync thread failed: %s", e)
            self._stat(last_error=f"sync thread failed: {e}")
        finally:
            ob.close()
            self._stat(connected=False, in_flight=0, held=0)

    def _new_client(self) -> mqtt.Client:
        # manual_ack: an acknowledgement message is PUBACKed only once the outbox has committed it, so a
        # crash in between makes the broker deliver it again instead of losing it
        c = new_client(self.client_id, self.url, self.sc.ca_file, self.sc.cert_file, self.sc.key_file, manual_ack=True)
        if self.sc.username:
            c.username_pw_set(self.sc.username, self._password)
        c.connect_timeout = min(10.0, max(2.0, self.sc.ack_timeout_s))
        c.will_set(self.topics.status, json.dumps({"state": "offline", "reason": "connection lost",
                                                   "client_id": self.client_id}), qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        return c

    def _session(self, backoff: Backoff) -> bool:
        """One connection, from connect to loss or stop. Returns True if the broker accepted us."""
        self._connected, self._refused, self._recv_max, self._taken_over = False, None, 65535, False
        self._ack_sub_mid = self._ack_sub_at = None
        try:
            client = self._client = self._new_client()
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = int(self.sc.session_expiry_s)
            client.connect(self.url.host, self.url.port, keepalive=self.sc.keepalive_s, clean_start=False,
                           properties=props)
        except OSError as e:  # includes ssl.SSLError and timeouts
            msg = f"cannot connect to {self.url}: {describe_error(e)}"
            self._note_connect_failure(msg)
            return False
        wait_s = client.connect_timeout * 2
        deadline = time.monotonic() + wait_s
        accepted = False
        next_hb = next_resend = 0.0
        try:
            while not self._stop.is_set():
                idle = self._outbox_idle and not self._inflight and not self._held
                rc = client.loop(timeout=LOOP_IDLE_S if idle else LOOP_BUSY_S)
                if self._pubacked or self._hospital_acks:
                    self._commit_acks()
                if self._refused:
                    self._note_connect_failure(f"broker {self.url} refused the connection: {self._refused}")
                    break
                if rc != mqtt.MQTT_ERR_SUCCESS or (accepted and not self._connected):
                    if not accepted:
                        self._note_connect_failure(f"{self.url} closed the connection before accepting it "
                                                   f"(client certificate not trusted or TLS refused; {mqtt.error_string(rc)})")
                    break
                if not self._connected:
                    if time.monotonic() > deadline:
                        self._note_connect_failure(f"no CONNACK from {self.url} within {wait_s:.0f}s")
                        break
                    continue
                if not accepted:
                    accepted = True
                    backoff.reset()
                    self._count("connects")
                    self._stat(connected=True, last_error=None)
                    log.info("sync: connected to %s as %s (window %d, %s acknowledgement)", self.url, self.client_id,
                             self._window(), "end-to-end" if self.end_to_end else "broker-only")
                    client.publish(self.topics.status, json.dumps({"state": "online", "at": iso_utc(timespec="seconds"),
                                                                   "client_id": self.client_id}), qos=1, retain=True)
                    if self.end_to_end:
                        _, self._ack_sub_mid = client.subscribe(self.topics.ack, qos=1)
                now = time.monotonic()
                self._release_held(now)
                self._fill_window()
                self._check_ack_timeouts(now)
                if now >= next_resend:
                    self._resend_overdue(now)
                    next_resend = now + RESEND_CHECK_S
                if now >= next_hb:
                    self._heartbeat()
                    next_hb = now + self.sc.heartbeat_s
                self._stat(in_flight=len(self._inflight), held=len(self._held))
            if self._stop.is_set() and self._connected:
                self._goodbye()
        finally:
            if self._pubacked or self._hospital_acks:
                self._commit_acks()
            if accepted:
                self._count("disconnects")
            self._stat(connected=False)
            try:
                client.disconnect()
                client.loop(timeout=0.01)
            except Exception:  # the socket may already be gone; nothing to save
                pass
        return accepted

    def _note_connect_failure(self, msg: str) -> None:
        self._count("connect_failures")
        self._stat(last_error=msg)
        log.warning("sync: %s", msg)

    def _goodbye(self) -> None:
        """Graceful stop: retained offline status (the will only fires on an unclean loss)."""
        info = self._client.publish(self.topics.status, json.dumps({"state": "offline", "reason": "stopped",
                                                              "at": iso_utc(timespec="seconds"), "client_id": self.client_id}),
                              qos=1, retain=True)
        end = time.monotonic() + 2.0
        while time.monotonic() < end and not info.is_published() and self._connected:
            self._client.loop(timeout=0.02)
        if self._pubacked or self._hospital_acks:
            self._commit_acks()

    # ------------------------------------------------------------------------------- paho callbacks
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
            return
        rm = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
        self._recv_max = int(rm) if rm else 65535
        self._connected = True

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected:
            if getattr(reason_code, "value", None) == SESSION_TAKEN_OVER:
                self._taken_over = True
                log.warning("sync: the broker handed this device's session to another connection with the same "
                            "identity/client id (session taken over); is a second medge running with this "
                            "certificate? %d finding(s) in flight go back to pending", len(self._inflight))
            else:
                level = logging.INFO if self._stop.is_set() else logging.WARNING
                log.log(level, "sync: disconnected from %s (%s); %d finding(s) in flight go back to pending",
                        self.url, reason_code, len(self._inflight))
        self._connected = False

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if mid != self._ack_sub_mid:
            return
        bad = [str(rc) for rc in reason_codes if rc.is_failure]
        if bad:
            msg = (f"broker refused this device's subscription to {self.topics.ack} ({', '.join(bad)}): the hospital's "
                   "acknowledgements cannot arrive, so findings stay in the outbox and are sent again; allow the "
                   "device to read its ack topic in the broker ACL (see docs/ARCHITECTURE.md, broker identity)")
            log.error("sync: %s", msg)
            self._stat(ack_subscription=msg, last_error=msg)
            return
        self._ack_sub_at = time.monotonic()
        self._stat(ack_subscription="granted")

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        if msg.topic != self.topics.ack:
            client.ack(msg.mid, msg.qos)  # not ours to keep (no other subscription is made)
            return
        self._count("ack_messages")
        try:
            ids, refused = parse_ack(msg.payload)
        except (ValueError, TypeError) as e:
            log.warning("sync: ignoring a malformed acknowledgement on %s (%s)", msg.topic, e)
            client.ack(msg.mid, msg.qos)
            return
        self._hospital_acks.append((msg.mid, msg.qos, ids, refused))

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        sent = self._inflight.pop(mid, None)
        if sent is None:
            return  # status/telemetry, or a finding already re-queued by the ack timeout
        code = getattr(reason_code, "value", 0)
        if reason_code.is_failure or code == NO_MATCHING_SUBSCRIBERS:
            why = str(reason_code)
            if code == NO_MATCHING_SUBSCRIBERS:
                self._count("no_subscribers")
                msg = f"broker has no receiver subscribed for {sent.item.kind} {sent.item.finding_id}; holding it"
            else:
                self._count("rejected")
                msg = f"broker refused {sent.item.kind} {sent.item.finding_id} on {self._topic(sent.item)}: {why}"
                self._stat(last_rejection=msg)
            log.warning("sync: %s", msg)
            self._held.append((time.monotonic() + self._hold_backoff.next(), sent.item))
            return
        self._hold_backoff.reset()
        self._pubacked.append(sent.item.finding_id)

    # ------------------------------------------------------------------------------------- sending
    def _window(self) -> int:
        return max(1, min(self.sc.inflight, self._recv_max))

    def _topic(self, item: OutboxItem) -> str:
        return self.topics.record(item.kind, item.priority)

    def _publish(self, item: OutboxItem) -> bool:
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = (f"{item.kind}_id", item.finding_id)
        props.ContentType = "application/json"
        remaining = int(item.expires_at - time.time())
        if remaining > 0:
            props.MessageExpiryInterval = remaining
        info = self._client.publish(self._topic(item), item.payload, qos=1, retain=False, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self._ob.requeue(item.finding_id)
            return False
        self._inflight[info.mid] = _Sent(item, time.monotonic())
        self._count("published")
        return True

    def _fill_window(self) -> None:
        free = self._window() - len(self._inflight) - len(self._held)
        if free <= 0 or free < min(8, self._window() // 4):
            return  # lease in batches: one outbox transaction per batch, not per finding
        items = self._ob.lease(free)
        self._outbox_idle = len(items) < free  # nothing more was pending when we looked
        for item in items:
            if item.payload is None:
                continue
            if not self._publish(item):
                break

    def _release_held(self, now: float) -> None:
        if not self._held or self._held[0][0] > now:
            return
        due = [it for t, it in self._held if t <= now]
        self._held = [(t, it) for t, it in self._held if t > now]
        for item in due:
            self._publish(item)

    def _check_ack_timeouts(self, now: float) -> None:
        late = [mid for mid, s in self._inflight.items() if now - s.sent_at > self.sc.ack_timeout_s]
        for mid in late:
            s = self._inflight.pop(mid)
            self._ob.requeue(s.item.finding_id)
        if late:
            self._count("ack_timeouts", len(late))
            log.warning("sync: %d finding(s) not acknowledged within %.1fs; re-queued", len(late), self.sc.ack_timeout_s)

    def _resend_overdue(self, now: float) -> None:
        """At-broker findings without the hospital's acknowledgement in time go back to pending. Only
        while the ack subscription stands (else nothing could have arrived) and after a grace period in
        which acknowledgements queued at the broker while we were away are delivered."""
        if not self.end_to_end or self._ack_sub_at is None:
            return
        if now - self._ack_sub_at < min(ACK_GRACE_S, self.sc.hospital_ack_timeout_s):
            return
        n = self._ob.resend_overdue()
        if n:
            self._count("resent", n)
            log.info("sync: %d finding(s) at the broker were not acknowledged by the hospital in time; sending "
                     "them again (the receiver de-duplicates). If this repeats, check that a receiver is running and "
                     "that the broker lets this device read %s", n, self.topics.ack)

    def _commit_acks(self) -> None:
        """PUBACKs and hospital acknowledgements of one loop turn, one outbox transaction each."""
        pubacked, self._pubacked = self._pubacked, []
        if pubacked:
            if self.end_to_end:
                n = self._ob.mark_at_broker_many(pubacked, self.sc.hospital_ack_timeout_s, self.sc.hospital_ack_max_s)
                self._count("at_broker", n)
            else:
                self._count("delivered", self._ob.mark_delivered_many(pubacked))
        acks, self._hospital_acks = self._hospital_acks, []
        if acks:
            ids = [i for _, _, batch, _ in acks for i in batch]
            refused = {i: r for _, _, _, rej in acks for i, r in rej.items()}
            n = self._ob.mark_delivered_many(ids, rejected=refused)
            self._count("delivered", n)
            if refused:
                self._count("hospital_rejected", len(refused))
                for fid, reason in list(refused.items())[:5]:
                    log.error("sync: the hospital refused finding %s (%s); it is kept in the receiver's rejected "
                              "table, not in the outbox", fid, reason)
            for mid, qos, _, _ in acks:  # only now is it safe for the broker to forget them
                self._client.ack(mid, qos)

    def _requeue_all(self) -> None:
        """Nothing from a dead connection stays leased: it is sent again on the next one."""
        self._inflight.clear()
        self._held.clear()
        self._ob.retry_all()

    def _heartbeat(self) -> None:
        st = self._ob.status()
        try:
            disk = shutil.disk_usage(self._ob.path.parent)
            disk_free_mb = round(disk.free / MIB, 1)
        except OSError:
            disk_free_mb = None
        doc: dict[str, Any] = {
            "at": iso_utc(timespec="seconds"), "device": self.cfg.device.id, "site": self.cfg.device.site,
            "queue_depth": st.depth, "pending": st.pending, "at_broker": st.at_broker,
            "oldest_pending_age_s": None if st.oldest_pending_age_s is None else round(st.oldest_pending_age_s, 1),
            "outbox_bytes": st.pending_bytes, "quota_bytes": st.quota_bytes, "over_quota": st.over_quota,
            "dropped_low": st.dropped_low, "expired": st.expired, "disk_free_mb": disk_free_mb,
            "sync": {k: v for k, v in self.stats().to_dict().items() if k != "connected"},
        }
        if self.telemetry is not None:
            try:
                doc.update(self.telemetry())  # fps, latency, model from the daemon
            except Exception as e:  # telemetry must never stop findings from flowing
                doc["telemetry_error"] = f"{type(e).__name__}: {e}"
        self._client.publish(self.topics.telemetry, json.dumps(doc, default=str), qos=0, retain=False)


# ---------------------------------------------------------------------------------- flushing the outbox
def wait_acknowledged(cfg: Config, timeout_s: float, stop: threading.Event | None = None):
    """Poll the outbox until the hospital has acknowledged everything or ``timeout_s`` passes; the status."""
    end = time.monotonic() + timeout_s
    with Outbox.from_config(cfg, create=False) as ob:
        st = ob.status()
        while st.depth and time.monotonic() < end and not (stop is not None and stop.is_set()):
            time.sleep(0.2)
            st = ob.status()
    return st


def pending_line(st, waited_s: float | None = None) -> str:
    """How many findings the hospital does not have yet, in words an operator acts on."""
    waited = f" after {waited_s:.0f} s" if waited_s is not None else ""
    what = f"record(s) ({st.events} of them device events)" if st.events else "finding(s)"
    return (f"{st.depth} {what} not acknowledged by the hospital yet{waited} ({sum(st.pending.values())} pending, "
            f"{st.in_flight} in flight, {st.at_broker} at the broker); they stay in the outbox and are sent when the "
            "link is back ('medge outbox status' shows them)")


def flush(cfg: Config, timeout_s: float) -> tuple[int, str]:
    """`medge sync --once`: connect, send what the outbox holds, wait for the hospital's acknowledgements.
    Returns (findings left, one line for the operator)."""
    with Outbox.from_config(cfg, create=False) as ob:
        before = ob.depth()
    if before == 0:
        return 0, "the outbox is empty: the hospital has every finding"
    sync = SyncClient(cfg)
    sync.start()
    try:
        st = wait_acknowledged(cfg, timeout_s)
    finally:
        sync.stop(10)
    if st.depth == 0:
        return 0, f"all {before} finding(s) acknowledged by the hospital"
    last = sync.stats().last_error
    return st.depth, pending_line(st, timeout_s) + (f"; last link error: {last}" if last else "")
