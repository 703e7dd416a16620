"""Broker URLs and paho-mqtt client construction shared by the device sync client and the receiver.

Both ends must agree on MQTT 5, TLS settings and what is safe to log: a URL is logged as host:port only
and credentials never come from a URL (they would end up in shell history, process lists and logs).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

from edge.errors import ConfigError, MedgeError


@dataclass(frozen=True)
class BrokerURL:
    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerURL:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"broker URL {url.split('@')[-1]!r}: {e}") from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"broker URL {url.split('@')[-1]!r}: use mqtt://host:port or mqtts://host:port")
    if parts.username or parts.password:
        raise ConfigError("broker URL must not contain credentials; use a client certificate or a password file")
    if not parts.hostname:
        raise ConfigError(f"broker URL {url!r}: no host name")
    tls = parts.scheme == "mqtts"
    return BrokerURL(parts.hostname, port or (8883 if tls else 1883), tls)


SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason: another connection took this client id's session


class LinkError(MedgeError):
    """The broker cannot be reached or refused the TLS handshake."""


def new_client(client_id: str, url: BrokerURL, ca_file: Path | None, cert_file: Path | None,
               key_file: Path | None, manual_ack: bool = False) -> mqtt.Client:
    """An MQTT 5 client with TLS set up; the caller owns it and runs its loop in one thread."""
    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                    protocol=mqtt.MQTTv5, manual_ack=manual_ack)
    # Our own in-flight window decides what is outstanding; paho must neither queue nor throttle.
    c.max_inflight_messages_set(65535)
    c.max_queued_messages_set(0)
    if url.tls:
        for label, p in (("CA", ca_file), ("client certificate", cert_file), ("client key", key_file)):
            if p is not None and not Path(p).is_file():
                raise ConfigError(f"{p}: {label} file does not exist")
        try:
            c.tls_set(ca_certs=str(ca_file) if ca_file else None, certfile=str(cert_file) if cert_file else None,
                      keyfile=str(key_file) if key_file else None, cert_reqs=ssl.CERT_REQUIRED,
                      tls_version=ssl.PROTOCOL_TLS_CLIENT)
        except (ssl.SSLError, OSError) as e:
            raise ConfigError(f"{cert_file or ca_file}: cannot load TLS files ({e})") from None
    elif cert_file is not None:
        raise ConfigError(f"{url}: a client certificate needs an mqtts:// broker URL")
    return c


def describe_error(e: BaseException) -> str:
    """One line for a failed connect, without anything secret (no key material, no passwords)."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed ({e.verify_message})"
    if isinstance(e, ssl.SSLError):
        return f"TLS handshake failed ({e.reason or e})"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (broker down?)"
    if isinstance(e, TimeoutError | OSError) and getattr(e, "strerror", None):
        return e.strerror
    return f"{type(e).__name__}: {e}"
