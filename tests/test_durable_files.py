"""Atomic writes and durable moves: the one implementation device, export and model tooling share."""

import os
import stat
import tempfile
from pathlib import Path

import pytest

from edge.durable_files import move_durably, write_atomic


def test_write_atomic_replaces_whole_file_with_mode_and_leaves_no_temp(tmp_path):
    p = tmp_path / "metrics.json"
    write_atomic(p, b"old")
    write_atomic(p, b"new contents", mode=0o640)
    assert p.read_bytes() == b"new contents"
    assert stat.S_IMODE(p.stat().st_mode) == 0o640
    assert [x.name for x in tmp_path.iterdir()] == ["metrics.json"]

def test_failed_write_keeps_old_file_and_removes_temp(tmp_path):
    p = tmp_path / "bundle.yaml"
    write_atomic(p, b"old")
    with pytest.raises(TypeError):
        write_atomic(p, object())  # type: ignore[arg-type]  # fails inside the write, after the temp exists
    assert p.read_bytes() == b"old" and [x.name for x in tmp_path.iterdir()] == ["bundle.yaml"]


def test_move_durably_within_and_across_file_systems(tmp_path):
    src = tmp_path / "in" / "a.dcm"
    src.parent.mkdir()
    src.write_bytes(b"DICM" * 100)
    dest = tmp_path / "processed" / "a.dcm"
    move_durably(src, dest)
    assert not src.exists() and dest.read_bytes() == b"DICM" * 100
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system here to move across")
    with tempfile.TemporaryDirectory(dir=shm) as other:
        far = Path(other) / "quarantine" / "a.dcm"
        move_durably(dest, far)  # EXDEV: copy, fsync, rename, then remove the source
        assert not dest.exists() and far.read_bytes() == b"DICM" * 100
        assert [x.name for x in far.parent.iterdir()] == ["a.dcm"]
