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

from .errors import MedgeError

OK, WARN, FAIL = "OK", "WARN", "FAIL"


@dataclass
class Check:
    status: str
    what: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4} {self.what}: {self.detail}"


def check_providers(wanted: set[str]) -> list[Check]:
    try:
        import onnxruntime as ort
    except ImportError:
        return [Check(FAIL, "onnxruntime", "not installed; reinstall medge (pip install medge)")]
    avail = ort.get_available_providers()
    out = [Check(OK, "onnxruntime", f"{ort.__version__}, providers: {', '.join(avail)}")]
    for p, name in (("tensorrt", "TensorrtExecutionProvider"), ("cuda", "CUDAExecutionProvider")):
        if p in wanted and name not in avail:
            out.append(Check(WARN, f"provider {p}", "the profile asks for it but this onnxruntime build lacks it; "
                             "models will fall back to the next provider (install onnxruntime-gpu for GPU speed)"))
    return out


def check_gpu(wanted: set[str]) -> list[Check]:
    gpu = Path("/dev/nvidia0").exists() or Path("/dev/nvhost-ctrl").exists() or Path("/etc/nv_tegra_release").exists()
    needs = bool(wanted & {"tensorrt", "cuda", "trt-native"})
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
        out.append(Check(WARN if "trt-native" in wanted else OK, "TensorRT",
                         "not installed" + ("; trt-native models will fall back" if "trt-native" in wanted else "")))
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
    free_mb = shutil.disk_usage(p).free / 2**20
    if free_mb < 100:
        return [Check(FAIL, "disk", f"only {free_mb:.0f} MB free for {path}; findings cannot be stored safely. "
                      "Free space or move data_dir")]
    if free_mb < quota_mb:
        return [Check(WARN, "disk", f"{free_mb:.0f} MB free for {path}, less than the outbox quota of {quota_mb:.0f} MB; "
                      "the disk would fill before the quota applies")]
    return [Check(OK, "disk", f"{free_mb:.0f} MB free for {path} (outbox quota {quota_mb:.0f} MB)")]


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


def check_profile(config_path: Path) -> list[Check]:
    from .config import load_config
    from .modelset import load_model_bundle

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
            sig = f"signature OK (key {b.signed_by})" if b.signed_by else "unsigned (allowed by the profile)"
            out.append(Check(OK, f"model {m.name}", f"{b.manifest.name} {b.manifest.version}, hashes OK, {sig}"))
        except MedgeError as e:
            out.append(Check(FAIL, f"model {m.name}", str(e)))
    out += check_writable(cfg.data_dir) + check_disk(cfg.data_dir, cfg.outbox.quota_mb)
    for s in cfg.sources:
        if s.kind == "video" and s.device is not None and not Path(f"/dev/video{s.device}").exists():
            out.append(Check(WARN, f"source {s.name}", f"/dev/video{s.device} not present; is the frame grabber "
                             "plugged in? medge will keep retrying"))
        if s.kind == "dicom-folder" and s.path is not None and not s.path.is_dir():
            out.append(Check(WARN, f"source {s.name}", f"folder {s.path} does not exist yet; it will be created"))
    if cfg.sync.enabled:
        out += check_broker(cfg.sync.broker, cfg.sync.ca_file)
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
