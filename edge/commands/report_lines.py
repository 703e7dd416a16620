"""Human-readable one-line renderings of findings and run summaries (replay, demo)."""

from __future__ import annotations

from typing import Any

from edge.findings import Finding


def finding_line(f: Finding, new: bool = True) -> str:
    parts = [f"[{f.priority}]", f.label, f"{f.confidence:.2f}"]
    if f.needs_review:
        parts.append("NEEDS REVIEW")
    m = f.measurements
    if "area_mm2" in m:
        parts.append(f"area {m['area_mm2']:.1f} mm²")
    elif "area_px" in m:
        parts.append(f"area {m['area_px']:.0f} px (no pixel spacing)")
    if "count" in m:
        parts.append(f"{int(m['count'])} box(es)")
    if f.frame_range:
        parts.append(f"frames {f.frame_range[0]}-{f.frame_range[1]}")
    elif f.frame_index is not None:
        parts.append(f"frame {f.frame_index}")
    if f.latency_ms is not None:
        parts.append(f"latency {f.latency_ms:.1f} ms")
    parts.append(f"({f.source or '-'}, {f.model.name} {f.model.version} {f.model.variant})")
    if not new:
        parts.append("[duplicate: already in the outbox]")
    return "  ".join(parts)


def summary_line(snap: dict[str, Any], wall_s: float) -> str:
    t = snap["total"]
    lat = t["latency_ms"]

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    fps = t["frames_done"] / wall_s if wall_s > 0 else 0.0
    return (f"{t['frames_done']} frame(s) in {wall_s:.2f} s ({fps:.1f} fps), capture->finding latency "
            f"p50 {f(lat['p50'])} / p95 {f(lat['p95'])} / p99 {f(lat['p99'])} ms, dropped {t['dropped']}, "
            f"errors {t['errors']}, findings {t['findings']}")
