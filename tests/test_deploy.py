"""The systemd unit runs medge from where docs/DEPLOY.md installs it, and systemd accepts the unit."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.support import ROOT

UNIT = ROOT / "edge" / "systemd" / "medge.service"
DEPLOY = ROOT / "docs" / "DEPLOY.md"


def _exec_lines() -> list[str]:
    return [ln.split("=", 1)[1] for ln in UNIT.read_text().splitlines() if re.match(r"ExecStart(Pre)?=", ln)]


def test_unit_runs_the_medge_that_the_deploy_guide_installs():
    guide = DEPLOY.read_text()
    venv = re.search(r"python3 -m venv (\S+)", guide).group(1)
    assert f"{venv}/bin/pip install" in guide
    lines = _exec_lines()
    assert len(lines) == 2 and all(ln.split()[0] == f"{venv}/bin/medge" for ln in lines)
    assert "medge config check /etc/medge/profile.yaml" in lines[0] and "run --config /etc/medge/profile.yaml" in lines[1]
    assert "docs/DEPLOY.md" in UNIT.read_text() and "docs/DEPLOY.md" in (ROOT / "README.md").read_text()


def test_systemd_accepts_the_unit(tmp_path):
    analyze, medge = shutil.which("systemd-analyze"), shutil.which("medge")
    if not analyze or not medge:
        pytest.skip("systemd-analyze or an installed medge is not available here")
    unit = tmp_path / "medge.service"  # the same unit, pointed at this machine's medge (verify checks the binary)
    unit.write_text(UNIT.read_text().replace("/opt/medge/venv/bin/medge", medge))
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "medge.service" not in r.stderr, r.stderr
