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


@pytest.mark.parametrize("name", ["medge-receiver@.service", "medge-review.service", "medge-forward.service"])
def test_systemd_accepts_the_hospital_units(tmp_path, name):
    """The hospital side's units (docs/DEPLOYMENT.md) run commands that exist, with options medge accepts."""
    analyze, medge = shutil.which("systemd-analyze"), shutil.which("medge")
    if not analyze or not medge:
        pytest.skip("systemd-analyze or an installed medge is not available here")
    text = (ROOT / "deploy" / "systemd" / name).read_text()
    assert "/opt/medge/venv/bin/medge " in text and "docs/" in text
    command = " ".join(ln.split("=", 1)[1].rstrip("\\").strip() for ln in text.replace("\\\n", " ").splitlines()
                       if ln.startswith("ExecStart="))
    sub = command.split()[1:]  # the medge subcommand and its options accept --help (no side effects)
    r = subprocess.run([medge, *[a for a in sub if a.startswith(("receive", "review", "hospital", "forward"))], "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for opt in [a for a in sub if a.startswith("--")]:
        assert opt in r.stdout, f"{name}: {opt} is not an option of {' '.join(sub[:2])}"
    unit = tmp_path / ("medge-receiver@1.service" if "@" in name else name)
    unit.write_text(text.replace("/opt/medge/venv/bin/medge", medge).replace("EnvironmentFile=", "EnvironmentFile=-"))
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and unit.name not in r.stderr, r.stderr
