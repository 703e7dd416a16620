"""The code base stays `ruff check` clean; CI runs this with the rest of the suite."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it is in the dev extra)")
    r = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_edge_never_imports_export():
    """The device must run without the export toolchain: no module under edge/ may import export."""
    offenders = []
    for p in (ROOT / "edge").rglob("*.py"):
        for line in p.read_text().splitlines():
            s = line.strip()
            if s.startswith(("import export", "from export")) and "edge/cli.py" not in p.as_posix():
                offenders.append(f"{p.relative_to(ROOT)}: {s}")
    assert not offenders, offenders


def test_device_import_without_onnx():
    """`import edge.*` device modules must not need the export-only `onnx` package."""
    code = (
        "import sys; sys.modules['onnx'] = None\n"
        "import edge.cli, edge.config, edge.bundle, edge.preprocess, edge.findings\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
