"""What `medge --help` and `medge --version` show a newcomer."""

from __future__ import annotations

import re
import subprocess
import sys

from edge import __version__

COMMANDS = [["run"], ["replay"], ["inspect"], ["config", "check"], ["findings", "show"], ["hospital", "broker-config"],
            ["hospital", "findings", "show"], ["export", "quantize"], ["export", "verify"], ["export", "sign"]]


def _medge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, timeout=60)


def test_version_names_medge_and_its_runtime():
    r = _medge("--version")
    assert r.returncode == 0 and r.stdout.startswith(f"medge {__version__} (onnxruntime ") and __version__ != "0+unknown"


def test_help_placeholders_are_readable():
    for cmd in COMMANDS:
        r = _medge(*cmd, "--help")
        assert r.returncode == 0, (cmd, r.stderr)
        usage = r.stdout.splitlines()[0]
        assert "{" not in usage and "}" not in usage, usage  # typer's {file}: arguments are FILE
        assert not re.search(r"<(list|dict|tuple)\[", r.stdout), (cmd, r.stdout)
    r = _medge("replay", "--help")
    assert r.stdout.startswith("Usage: medge replay [OPTIONS] FILE") and "--trusted-key PEM" in r.stdout
    assert _medge("export", "quantize", "--help").stdout.startswith("Usage: medge export quantize [OPTIONS] MODEL.onnx")


def test_events_list_shows_device_events_and_findings_list_never_does(tmp_path):
    import json

    import yaml

    from edge.events import DeviceEvent
    from edge.findings import Finding, ModelRef
    from edge.link.outbox import Outbox

    (tmp_path / "cine.dcm").write_bytes(b"x")
    prof = tmp_path / "p.yaml"
    prof.write_text(yaml.safe_dump({
        "device": {"id": "d1", "site": "s1"}, "data_dir": str(tmp_path / "data"),
        "models": [{"name": "m", "bundle": "bundle", "require_signature": False}],
        "sources": [{"name": "s", "kind": "replay", "path": "cine.dcm", "model": "m"}],
    }))
    model = ModelRef("m", "1", "0" * 64)
    with Outbox(tmp_path / "data" / "outbox.sqlite3") as ob:
        ob.store([Finding("d1", "US", model, "lesion", 0.9, False, finding_id="f-1"),
                  DeviceEvent("d1", "out_of_scope", "modality", "CR is not US", model=model, source="s", event_id="e-1")])
        ob.mark_delivered("e-1")
    r = _medge("events", "list", "-c", str(prof))
    assert r.returncode == 0, r.stderr
    line, count = r.stdout.splitlines()
    for part in ("low", "out_of_scope", "modality: CR is not US", "acknowledged", "(s, m 1 fp32)", "e-1"):
        assert part in line, line
    assert count == "1 event(s)"
    (doc,) = json.loads(_medge("events", "list", "-c", str(prof), "--json").stdout)
    assert (doc["event_id"], doc["kind"], doc["reason"], doc["detail"], doc["state"]) == (
        "e-1", "out_of_scope", "modality", "CR is not US", "acknowledged")
    assert doc["created_at"].endswith("Z")
    assert [f["finding_id"] for f in json.loads(_medge("findings", "list", "-c", str(prof), "--json").stdout)] == ["f-1"]
    status = _medge("outbox", "status", "-c", str(prof))
    assert "events     0 of these are device events" in status.stdout  # the acknowledged event is not counted
    r = _medge("events", "list", "-c", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "missing.yaml" in r.stderr
