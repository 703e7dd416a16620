"""Sizes as people read them. Every size medge takes or prints is in MiB (2**20 bytes), the unit of the
profile's ``*_mb`` keys, so the 512 of ``outbox.quota_mb`` is the 512 that `medge outbox status` and
`medge doctor` print; mixing 10**6 and 2**20 made the same quota look 5% different in two places."""

from __future__ import annotations

MIB = 1 << 20


def mib(n_bytes: float) -> str:
    v = n_bytes / MIB
    return f"{v:,.0f} MiB" if v >= 10 else f"{v:.2f} MiB"
