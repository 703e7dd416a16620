"""Writes a bundle so that it either exists completely or not at all.

Everything is assembled in a hidden temporary folder next to the destination (same filesystem), each file
fsynced, hashed into the manifest, the folder fsynced, then renamed into place in one step. An export that
fails half-way (a crash, a failed gate, Ctrl-C) leaves no folder a device could mistake for a bundle.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from edge.durable_files import fsync_dir
from edge.errors import InputError
from edge.inference.bundle import MANIFEST, SIGNATURE, sha256_file


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextmanager
def staging(dest: Path, force: bool = False):
    """Yield a temp folder that becomes `dest` if the block completes; removed on any exception."""
    dest = Path(dest)
    if dest.exists() and not force:
        raise InputError(f"{dest}: output folder already exists; choose a new --out or pass --force")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700
    try:
        yield tmp
        publish(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish(tmp: Path, dest: Path) -> None:
    for p in tmp.rglob("*"):
        if p.is_file():
            fsync_file(p)
    fsync_dir(tmp)
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def finalize_manifest(root: Path, manifest: dict[str, Any]) -> bytes:
    """Hash every file in `root` (except manifest, signature, engine cache) into the manifest and write it."""
    files = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in (MANIFEST, SIGNATURE) and not rel.startswith("engines/"):
            files[rel] = sha256_file(p)
    manifest = dict(manifest)
    manifest["files"] = files
    data = yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True).encode()
    (root / MANIFEST).write_bytes(data)
    return data
