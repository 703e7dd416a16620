"""The daemon as an operator meets it: `medge run` in a subprocess, sd_notify, SIGTERM drain, restart
without duplicates, `medge doctor`, `medge replay`, `medge demo`."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.doctor import check_broker, run_doctor
from edge.sdnotify import Notifier
from tests.pipeline_fixtures import write_bundle, write_public_key

ROOT = Path(__file__).resolve().parents[1]


def _notify_socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(0.2)
    return s, path


def _drain(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out += sock.recv(4096).decode().splitlines()
        except (TimeoutError, BlockingIOError):
            return out


def test_notifier_speaks_the_systemd_datagram_protocol(tmp_path):
    sock, path = _notify_socket(tmp_path)
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
    assert n.enabled and n.watchdog_s == 4.0
    assert n.ready("running 1 source(s)") and n.watchdog() and n.stopping()
    assert _drain(sock) == ["READY=1", "STATUS=running 1 source(s)", "WATCHDOG=1", "STOPPING=1"]
    off = Notifier({})
    assert not off.enabled and off.watchdog_s is None and off.ready() is False
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_s is None


def _profile(tmp_path: Path, key_path: Path | None, bundle: Path, sources: list[dict], sync: dict | None = None,
             **pipeline) -> Path:
    prof = {
        "schema_version": 1,
        "device": {"id": "test-cart", "site": "lab"},
        "data_dir": str(tmp_path / "data"),
        "trusted_keys": [str(key_path)] if key_path else [],
        "log_level": "info",
        "models": [{"name": "seg", "bundle": str(bundle), "providers": ["tensorrt", "cpu"], "intra_op_threads": 1,
                    "warmup_runs": 1, "require_signature": key_path is not None}],
        "sources": sources,
        "pipeline": {"queue_depth": 2, "metrics_interval_s": 0.5, "on_frames": 2, "off_frames": 3,
                     "smoothing_window": 3, **pipeline},
        "sync": sync or {"enabled": False},
    }
    p = tmp_path / "profile.yaml"
    p.write_text(yaml.safe_dump(prof))
    return p


def test_doctor_explains_problems_in_plain_words(tmp_path):
    key = Ed25519PrivateKey.generate()
    pub = write_public_key(tmp_path / "pub.pem", key)
    bundle = write_bundle(tmp_path / "bundle", key=key)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    srv.close()  # nothing listens there now
    prof = _profile(tmp_path, pub, bundle, [{"name": "inbox", "kind": "dicom-folder", "path": str(tmp_path / "in"),
                                             "model": "seg"}],
                    sync={"enabled": True, "broker": f"mqtt://127.0.0.1:{port}"})
    lines: list[str] = []
    assert run_doctor(prof, echo=lines.append) == 0
    text = "\n".join(lines)
    assert "OK   model seg: toy-seg 0.0.1, hashes OK, signature OK" in text
    assert f"WARN broker: cannot reach 127.0.0.1:{port}" in text and "findings stay in the outbox" in text
    assert "WARN provider tensorrt: the profile asks for it but this onnxruntime build lacks it" in text or \
        "TensorrtExecutionProvider" in text
    # a tampered bundle is a FAIL with the file named, and the exit code says so
    with open(bundle / "model.fp32.onnx", "ab") as f:
        f.write(b"\0")
    lines.clear()
    assert run_doctor(prof, echo=lines.append) == 1
    assert any(ln.startswith("FAIL model seg:") and "model.fp32.onnx: SHA-256 mismatch" in ln for ln in lines)
    assert lines[-1].startswith("doctor: 1 problem(s)")


def test_doctor_broker_reachable(tmp_path):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    try:
        (c,) = check_broker(f"mqtt://127.0.0.1:{srv.getsockname()[1]}", None)
        assert c.status == "OK"
    finally:
        srv.close()


def test_doctor_cli_without_profile():
    r = subprocess.run([sys.executable, "-m", "edge.cli", "doctor"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "onnxruntime" in r.stdout and "clock" in r.stdout and "doctor:" in r.stdout
