"""Whole-file writes and moves that survive a power cut: temp name, fsync, rename, fsync the folder.

A reader (the daemon picking up an incoming DICOM, a monitoring agent reading the metrics file, the
device loading a bundle) must see either the old file or the complete new one, never a torn one, and a
rename is only durable once its directory is fsynced. Device, export and model tooling all write
through here, so there is one implementation of that rule.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename/create in ``path`` durable (POSIX: the directory entry lives in the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path | str, data: bytes, mode: int = 0o644, make_parents: bool = False) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one; ``mode`` is applied
    before the rename, so the file is never visible with the wrong permissions."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def move_durably(src: Path, dest: Path) -> None:
    """Rename when on the same file system, else copy+fsync+rename then remove the source."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dest)
    except OSError as e:
        if e.errno != errno.EXDEV:  # different file system: copy instead
            raise
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(dest.parent)
        src.unlink()
    fsync_dir(dest.parent)
    fsync_dir(src.parent)
