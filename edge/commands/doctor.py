"""`medge doctor`: tell an on-site technician what is wrong, in plain words.

Each check prints one line starting with OK, WARN or FAIL and, when it is not OK, what to do. Checks are
independent (a missing GPU does not hide a broken bundle) and side-effect free apart from opening a TCP
connection to the broker. Exit code 0: no FAIL; 1: at least one FAIL.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from edge.errors import MedgeError
from edge.units import MIB, mib

OK, WARN, FAIL = "OK", "WARN", "FAIL"


@dataclass
class Check:
    status: str
    what: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4} {self.what}: {self.detail}"


def check_providers(wanted: set[str]) -> list[Check]:
    from edge.inference.backends import PROVIDERS

    try:
        import onnxruntime as ort
    except ImportError:
        return [Check(FAIL, "onnxruntime", "not installed; reinstall medge (pip install medge)")]
    avail = ort.get_available_providers()
    out = [Check(OK, "onnxruntime", f"{ort.__version__}, providers: {', '.join(avail)}")]
    for name in sorted(wanted):
        p = PROVIDERS.get(name)
        if p is not None and p.ort_name and p.gpu and p.ort_name not in avail:
            out.append(Check(WARN, f"provider {name}", "the profile asks for it but this onnxruntime build lacks it; "
                             "models will fall back to the next provider (install onnxruntime-gpu for GPU speed)"))
    if any(PROVIDERS[n].loader == "openvino" for n in wanted if n in PROVIDERS):
        try:
            import openvino as ov

            devices = ", ".join(ov.Core().available_devices)
            out.append(Check(OK, "OpenVINO", f"{ov.__version__.split('-')[0]}, devices: {devices}"))
        except ImportError:
            out.append(Check(WARN, "OpenVINO", "the profile asks for openvino but it is not installed; models will fall "
                             "back to the next provider (pip install 'medge[openvino]')"))
    return out


def check_gpu(wanted: set[str]) -> list[Check]:
    from edge.inference.backends import PROVIDERS

    gpu = Path("/dev/nvidia0").exists() or Path("/dev/nvhost-ctrl").exists() or Path("/etc/nv_tegra_release").exists()
    needs = any(PROVIDERS[p].gpu for p in wanted if p in PROVIDERS)
    native = sorted(p for p in wanted if p in PROVIDERS and PROVIDERS[p].loader == "tensorrt")
    if gpu:
        out = [Check(OK, "GPU", "NVIDIA GPU device present")]
    else:
        out = [Check(WARN if needs else OK, "GPU", "no NVIDIA GPU found" +
                     ("; the profile prefers GPU providers, so models will run on the CPU (slower)" if needs
                      else "; CPU inference only (as the profile expects)"))]
    try:
        import tensorrt

        out.append(Check(OK, "TensorRT", f"version {tensorrt.__version__}"))
    except ImportError:
        out.append(Check(WARN if native else OK, "TensorRT",
                         "not installed" + (f"; {', '.join(native)} models will fall back" if native else "")))
    return out


def check_clock() -> list[Check]:
    now = time.time()
    import edge

    built = Path(edge.__file__).stat().st_mtime
    year = time.gmtime(now).tm_year
    if year < 2024 or now < built - 86400:
        return [Check(FAIL, "clock", f"system time is {time.strftime('%Y-%m-%d %H:%M', time.gmtime(now))} UTC, earlier "
                      "than this medge installation; findings would carry wrong times and TLS certificates would "
                      "fail. Set the clock or enable NTP (timedatectl set-ntp true)")]
    synced = None
    try:
        import subprocess

        r = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"], capture_output=True,
                           text=True, timeout=3)
        synced = r.stdout.strip() if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    if synced == "no":
        return [Check(WARN, "clock", "time looks plausible but is not NTP-synchronized; enable NTP so finding "
                      "times and certificate checks stay right")]
    return [Check(OK, "clock", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now)) +
                  (", NTP synchronized" if synced == "yes" else ""))]


def check_disk(path: Path, quota_mb: float) -> list[Check]:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    free = shutil.disk_usage(p).free
    quota = mib(quota_mb * MIB)
    if free < 100 * MIB:
        return [Check(FAIL, "disk", f"only {mib(free)} free for {path}; findings cannot be stored safely. "
                      "Free space or move data_dir")]
    if free < quota_mb * MIB:
        return [Check(WARN, "disk", f"{mib(free)} free for {path}, less than the outbox quota of {quota}; "
                      "the disk would fill before the quota applies")]
    return [Check(OK, "disk", f"{mib(free)} free for {path} (outbox quota {quota})")]


def check_writable(path: Path) -> list[Check]:
    p = Path(path)
    probe = p if p.exists() else p.parent
    if probe.exists() and os.access(probe, os.W_OK):
        return [Check(OK, "data_dir", f"{path} is writable")]
    return [Check(FAIL, "data_dir", f"{path} is not writable by this user; fix ownership (chown medge {path})")]


def check_broker(url: str, ca_file: Path | None, timeout: float = 3.0) -> list[Check]:
    u = urlparse(url)
    host, port = u.hostname or "127.0.0.1", u.port or (8883 if u.scheme == "mqtts" else 1883)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        return [Check(WARN, "broker", f"cannot reach {host}:{port} ({e.strerror or e}); findings stay in the outbox "
                      "until the network or broker is back - check Wi-Fi/VPN and the broker address")]
    try:
        if u.scheme == "mqtts":
            ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            try:
                with ctx.wrap_socket(sock, server_hostname=host):
                    pass
            except ssl.SSLError as e:
                return [Check(FAIL, "broker", f"{host}:{port} reachable but TLS fails ({e.reason}); check ca_file and "
                              "the clock")]
    finally:
        sock.close()
    return [Check(OK, "broker", f"{host}:{port} reachable")]


class _Probe:
    """One short MQTT connection with the device's own certificate, driven step by step (no threads)."""

    def __init__(self, cfg, client_id: str, clean: bool) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        from edge.link.mqtt import new_client, parse_broker_url

        self.mqtt = mqtt
        sc = cfg.sync
        url = parse_broker_url(sc.broker)
        # manual_ack and never acking: anything the broker hands this probe (the device's queued
        # acknowledgements, if it maps the probe onto the device's session) is delivered again later
        self.c = new_client(client_id, url, sc.ca_file, sc.cert_file, sc.key_file, manual_ack=True)
        self.connected = self.dropped = False
        self.suback: list[str] | None = None
        self.c.on_connect = lambda c, u, f, rc, p: setattr(self, "connected", not rc.is_failure)
        self.c.on_disconnect = lambda c, u, f, rc, p: setattr(self, "dropped", True)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: setattr(self, "suback", [str(r) for r in rcs])
        props = Properties(PacketTypes.CONNECT)
        # not clean, and the device's own expiry: if the broker maps this probe onto the device's session,
        # the session (subscriptions, queued acknowledgements) must survive the probe
        props.SessionExpiryInterval = 0 if clean else int(sc.session_expiry_s)
        self.c.connect(url.host, url.port, keepalive=10, clean_start=clean, properties=props)

    def run(self, seconds: float, until=None) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (until and until()):
            if self.c.loop(timeout=0.05) != self.mqtt.MQTT_ERR_SUCCESS:
                self.dropped = True
                return

    def close(self) -> None:
        try:
            self.c.disconnect()
            self.c.loop(timeout=0.05)
        except Exception:  # already gone
            pass


def check_broker_identity(cfg, timeout: float = 5.0) -> list[Check]:
    """Does the broker tie client ids and subscriptions to the certificate identity? Tested with this
    device's own certificate: two probe connections with made-up client ids. If the broker honoured the
    made-up ids, both stay connected (any certificate could take over the receiver's session); if it
    maps them onto the certificate identity, the second takes the first's session. Then the probe asks
    to join the receivers' shared group, which the broker must refuse."""
    import uuid

    from edge.link.topics import DEFAULT_GROUP, findings_filter, shared

    sc = cfg.sync
    if sc.cert_file is None:
        return [Check(WARN, "broker identity", "no client certificate in the profile: the broker cannot tie this "
                      "device's client id and topics to an identity; use mqtts:// with cert_file/key_file")]
    ids = [f"medge-doctor-{uuid.uuid4().hex[:10]}" for _ in range(2)]
    probes: list[_Probe] = []
    try:
        try:
            a = _Probe(cfg, ids[0], clean=False)
            probes.append(a)
            a.run(timeout, until=lambda: a.connected)
            if not a.connected:
                return [Check(WARN, "broker identity", "not checked: the broker did not accept this device's "
                              "certificate (see the broker line)")]
            b = _Probe(cfg, ids[1], clean=False)
            probes.append(b)
            b.run(timeout, until=lambda: b.connected)
            end = time.monotonic() + 1.0
            while time.monotonic() < end and not a.dropped:
                a.run(0.05)
                b.run(0.05)
            out = []
            if a.dropped and b.connected:
                out.append(Check(OK, "broker identity", "the broker uses the certificate identity as client id (a "
                                 "made-up id took this device's own session; the daemon reconnects by itself)"))
            else:
                out.append(Check(WARN, "broker identity", f"the broker accepted client id {ids[0]} from this device's "
                                 "certificate: any certificate holder can take over another client's session, the "
                                 "receiver's included; set use_identity_as_username and use_username_as_clientid "
                                 "(medge hospital broker-config renders a broker configuration that does)"))
            group = shared(DEFAULT_GROUP, findings_filter(sc.topic_prefix))
            b.c.subscribe(group, qos=1)
            b.run(timeout, until=lambda: b.suback is not None)
            if b.suback and all(r == "Not authorized" or "not authorized" in r.lower() for r in b.suback):
                out.append(Check(OK, "broker ACL", "devices may not join the receivers' shared group"))
            elif b.suback is None:
                out.append(Check(WARN, "broker ACL", "no answer to the shared-group subscription probe"))
            else:
                b.c.unsubscribe(group)
                b.run(1.0)
                out.append(Check(WARN, "broker ACL", f"the broker let this device subscribe to {group}: a device could "
                                 "take findings meant for the receivers; use an ACL that checks subscriptions (mosquitto: "
                                 "the dynamic-security plugin, see medge hospital broker-config)"))
            return out
        except OSError as e:
            from edge.link.mqtt import describe_error

            return [Check(WARN, "broker identity", f"not checked: {describe_error(e)}")]
    finally:
        for p in probes:
            p.close()
        if probes and not (probes[0].dropped and len(probes) > 1 and probes[1].connected):
            # the broker kept the made-up ids: remove the probe sessions it created
            for cid in ids[: len(probes)]:
                try:
                    c = _Probe(cfg, cid, clean=True)
                    c.run(2.0, until=lambda c=c: c.connected)
                    c.close()
                except OSError:
                    pass


def check_profile(config_path: Path) -> list[Check]:
    from edge.config import load_config
    from edge.inference.modelset import load_model_bundle

    try:
        cfg = load_config(config_path)
        out = [Check(OK, "profile", f"{config_path}: device {cfg.device.id}, {len(cfg.models)} model(s), "
                     f"{len(cfg.sources)} source(s)")]
    except MedgeError as e:
        out = [Check(FAIL, "profile", str(e))]
        try:  # keep checking everything else the profile describes
            cfg = load_config(config_path, check_files=False)
        except MedgeError:
            return out
    wanted = {p for m in cfg.models for p in m.providers}
    out += check_providers(wanted) + check_gpu(wanted)
    for m in cfg.models:
        try:
            b = load_model_bundle(cfg, m)
            sig = (f"signature OK (key {b.signed_by})" if b.signed_by else
                   f"{b.signature_state.split(' (')[0]} (allowed: require_signature is false)")
            out.append(Check(OK, f"model {m.name}", f"{b.manifest.name} {b.manifest.version}, hashes OK, {sig}"))
        except MedgeError as e:
            out.append(Check(FAIL, f"model {m.name}", str(e)))
    out += check_writable(cfg.data_dir) + check_disk(cfg.data_dir, cfg.outbox.quota_mb)
    from edge.sources import SOURCE_KINDS

    for s in cfg.sources:
        out += [Check(WARN, f"source {s.name}", w) for w in SOURCE_KINDS[s.kind].preflight(s)]
    if cfg.sync.enabled:
        out += check_broker(cfg.sync.broker, cfg.sync.ca_file)
        if out[-1].status == OK:
            out += check_broker_identity(cfg)
    else:
        out.append(Check(OK, "broker", "sync disabled in the profile; findings stay in the local outbox"))
    return out


def run_doctor(config_path: Path | None, echo: Callable[[str], None] = print) -> int:
    checks = check_clock()
    if config_path is None:
        checks += check_providers(set()) + check_gpu(set())
        checks.append(Check(OK, "profile", "none given; run 'medge doctor --config PROFILE' to also check bundles, "
                            "disk and broker"))
    else:
        checks += check_profile(Path(config_path))
    for c in checks:
        echo(c.line())
    fails = sum(c.status == FAIL for c in checks)
    warns = sum(c.status == WARN for c in checks)
    echo(f"doctor: {fails} problem(s), {warns} warning(s)" if fails or warns else "doctor: everything looks fine")
    return 1 if fails else 0
