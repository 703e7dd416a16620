"""Human-readable one-line renderings of findings and run summaries (replay, demo)."""

from __future__ import annotations

from typing import Any

from edge.findings import Finding


def finding_line(f: Finding, new: bool = True) -> str:
    return f.describe() + ("" if new else "  [duplicate: already in the outbox]")


def summary_line(snap: dict[str, Any], wall_s: float) -> str:
    t = snap["total"]
    lat = t["latency_ms"]

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    fps = t["frames_done"] / wall_s if wall_s > 0 else 0.0
    return (f"{t['frames_done']} frame(s) in {wall_s:.2f} s ({fps:.1f} fps), capture->finding latency "
            f"p50 {f(lat['p50'])} / p95 {f(lat['p95'])} / p99 {f(lat['p99'])} ms, dropped {t['dropped']}, "
            f"errors {t['errors']}, findings {t['findings']}")
