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
