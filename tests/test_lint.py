"""The code base stays `ruff check` clean; CI runs this with the rest of the suite."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT


def test_ruff_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it is in the dev extra)")
    r = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import statement in a file."""
    import ast

    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body} | {id(c) for n in tree.body if isinstance(n, ast.If) for c in n.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, id(node) in top))
    return out


def test_package_direction():
    """edge runs on the device without export or hospital: no edge module imports them at module level,
    and only the CLI loads them at all (lazily, inside the command that needs them). export never imports
    hospital. hospital may import edge."""
    offenders = []
    for p in (ROOT / "edge").rglob("*.py"):
        for mod, at_top in _imports(p):
            root = mod.split(".")[0]
            if root in ("export", "hospital") and (at_top or p != ROOT / "edge" / "cli.py"):
                offenders.append(f"{p.relative_to(ROOT)}: imports {mod}{' at module level' if at_top else ''}")
    for p in (ROOT / "export").rglob("*.py"):
        offenders += [f"{p.relative_to(ROOT)}: imports {m}" for m, _ in _imports(p) if m.split(".")[0] == "hospital"]
    assert not offenders, offenders
    assert any(m.startswith("hospital") for m, _ in _imports(ROOT / "edge" / "cli.py"))  # the check sees lazy ones


BLOCK_EXPORT_DEPS = "import sys\nfor m in ('onnx', 'torch', 'export', 'onnxruntime.quantization'):\n    sys.modules[m] = None\n"


def test_every_device_module_imports_without_export_dependencies():
    """The device install has no onnx, torch or export package: every module under edge/ must import without them."""
    code = BLOCK_EXPORT_DEPS + (
        "import importlib, pkgutil, edge\n"
        "names = [m.name for m in pkgutil.walk_packages(edge.__path__, 'edge.')]\n"
        "for n in names: importlib.import_module(n)\n"
        "print(len(names))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    files = [p for p in (ROOT / "edge").rglob("*.py") if p.name != "__init__.py" or p.parent != ROOT / "edge"]
    assert int(r.stdout.strip()) == len(files)  # the walk imported every device module, not a subset


def test_device_replays_a_signed_bundle_without_export_dependencies():
    """Not only imports: the device path (verify bundle, decode DICOM, infer, decode findings) runs without them."""
    code = BLOCK_EXPORT_DEPS + (
        "sys.argv = ['medge', 'replay', 'models/samples/cxr_opacity.dcm', '--bundle', 'models/bundles/cxr-opacity',"
        " '--json']\n"
        "from edge.cli import main\nmain()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    docs = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [d["finding"]["label"] for d in docs if "finding" in d] == ["focal_opacity"], r.stdout[-2000:]
