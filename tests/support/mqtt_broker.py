"""A real mosquitto for tests: TLS with client certificates, per-identity ACL, persistence, restartable.

The configuration is the deployable one (`hospital.broker`: identity = certificate CN = client id,
dynamic-security ACL), rendered with test paths, so the fault matrix runs against what a hospital runs.

Usage::

    from tests.support.mqtt_broker import Broker
    with Broker(tmp_path, devices={"cart-1": "site-a"}) as b:
        b.url                       # mqtts://127.0.0.1:<free port>
        b.ca, b.cert("cart-1"), b.key("cart-1"), b.cert("receiver")
        b.stop(); b.start()         # same port, persistence on (graceful stop saves the session store)
        b.kill()                    # SIGKILL: what a broker crash loses is mosquitto's business
        "Denied PUBLISH" in b.log()

Each device may only publish under ``medge/<site>/<device>/`` and read its own ack topic; receivers
read findings through the ``$share/medge-receivers`` group and publish acknowledgements; monitors read
``#`` but may not join a shared group. Identities come from the certificate CN; there are no passwords.
"""

from __future__ import annotations

import datetime as dt
import getpass
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

MOSQUITTO = "/usr/sbin/mosquitto"


def mosquitto_path() -> str:
    """The mosquitto binary, or skip the calling test with the reason."""
    p = MOSQUITTO if os.access(MOSQUITTO, os.X_OK) else shutil.which("mosquitto")
    if not p:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Until something accepts connections on host:port (a freshly started mosquitto)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout}s")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


class CertAuthority:
    """A throw-away CA issuing the broker's server certificate and one client certificate per identity."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(_name("medge test CA")).issuer_name(_name("medge test CA"))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.ca_file = folder / "ca.crt"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, server: bool = False) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                             x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                critical=False)
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        crt, kf = self.folder / f"{cn}.crt", self.folder / f"{cn}.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, kf)
        return crt, kf


class Broker:
    """mosquitto on a free 127.0.0.1 port with mTLS, ACL and persistence; restartable on the same port."""

    def __init__(self, folder: Path, devices: dict[str, str], receivers: tuple[str, ...] = ("receiver",),
                 port: int | None = None, verbose: bool = True, max_queued: int = 1_000_000,
                 monitors: tuple[str, ...] = ("monitor",)) -> None:
        from hospital.broker import BrokerSettings, Fleet, dynsec_config, mosquitto_conf

        self.binary = mosquitto_path()
        self.folder = Path(folder) / "broker"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.devices = dict(devices)
        self.ca_authority = CertAuthority(self.folder / "pki")
        self.server_cert, self.server_key = self.ca_authority.issue("broker", server=True)
        self._certs: dict[str, tuple[Path, Path]] = {}
        for name in [*self.devices, *receivers, *monitors]:
            self._certs[name] = self.ca_authority.issue(name)
        self.receivers = receivers
        self.fleet = Fleet(devices=self.devices, receivers=tuple(receivers), monitors=tuple(monitors))
        (self.folder / "data").mkdir(exist_ok=True)
        self.dynsec_file = self.folder / "dynamic-security.json"
        self.dynsec_file.write_text(json.dumps(dynsec_config(self.fleet), indent=1))
        self.conf_file = self.folder / "mosquitto.conf"
        self.log_file = self.folder / "mosquitto.log"
        self.settings = BrokerSettings(
            cafile=str(self.ca_authority.ca_file), certfile=str(self.server_cert), keyfile=str(self.server_key),
            port=self.port, bind="127.0.0.1", persistence_location=f"{self.folder / 'data'}/",
            dynsec_file=str(self.dynsec_file), max_queued_messages=max_queued, log_dest=f"file {self.log_file}",
            log_types=("all",) if verbose else ("error", "warning", "notice"),
            run_as_user=getpass.getuser())  # as root mosquitto would switch to 'mosquitto' and lose our files
        self.conf_file.write_text(mosquitto_conf(self.settings))
        self.proc: subprocess.Popen | None = None

    # ------------------------------------------------------------------------------------ identity
    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.ca_authority.ca_file

    def cert(self, name: str) -> Path:
        return self._certs[name][0]

    def key(self, name: str) -> Path:
        return self._certs[name][1]

    def add_identity(self, name: str) -> None:
        """A certificate the ACL knows nothing about (for refusal tests)."""
        self._certs[name] = self.ca_authority.issue(name)

    # ----------------------------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf_file)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, cwd=self.folder)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err.strip()} {self.log()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM): mosquitto writes its persistence file."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()


def device_profile(folder: Path, broker: Broker, device: str, site: str | None = None, cert_name: str | None = None,
                   data_dir: Path | None = None, outbox: dict | None = None, **sync: object) -> Path:
    """A minimal firmware profile whose sync section points at ``broker`` with ``device``'s certificate.

    ``cert_name`` lets a test connect with another identity's certificate (ACL refusal tests).
    """
    import yaml

    folder = Path(folder) / f"profile-{device}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bundle").mkdir(exist_ok=True)
    (folder / "cine.dcm").write_bytes(b"placeholder")
    who = cert_name or device
    s = {"enabled": True, "broker": broker.url, "ca_file": str(broker.ca), "cert_file": str(broker.cert(who)),
         "key_file": str(broker.key(who)), "backoff_min_s": 0.1, "backoff_max_s": 1.0, "ack_timeout_s": 5.0,
         "heartbeat_s": 1.0, "keepalive_s": 5, "inflight": 32}
    s.update(sync)
    prof = {
        "device": {"id": device, "site": site or broker.devices.get(device, "s1")},
        "data_dir": str(data_dir or folder / "data"),
        "models": [{"name": "m", "bundle": "bundle", "require_signature": False}],
        "sources": [{"name": "s", "kind": "replay", "path": "cine.dcm", "model": "m"}],
        "sync": s,
    }
    if outbox:
        prof["outbox"] = outbox
    path = folder / "profile.yaml"
    path.write_text(yaml.safe_dump(prof))
    return path
