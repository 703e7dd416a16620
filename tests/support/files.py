"""Comparing whole files in tests.

Compare digests, never the bytes: when two multi-megabyte byte strings differ, pytest's assertion
rewriting diffs them with difflib (in full under CI=true), which recursed until the interpreter crashed
(exit 139) instead of reporting the failure.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
