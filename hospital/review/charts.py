"""The dashboard's plots: rates over time per model, as inline SVG (the page) and as a PNG (the report).

One line per model and version, 0-100 %, one point per period; a dashed least-squares line over each
series, and a series whose agreement falls by 10 points or more is drawn in red and marked "falling", so
a downward trend is seen at a glance. Written here, with no plotting library and nothing fetched.
"""

from __future__ import annotations

from html import escape

import cv2
import numpy as np

from hospital.review.stats import Point, Summary, trend_of

PALETTE = ["#1f6fb4", "#2a9d52", "#8c5bb5", "#c77d0a", "#178a8a", "#6b6b6b"]
FALLING = "#c81e1e"
W, H, LEFT, RIGHT, TOP, BOTTOM = 720, 260, 52, 170, 28, 44


def _values(points: list[Point], metric: str) -> list[float | None]:
    return [p.counts.agreement if metric == "agreement" else p.counts.needs_review_rate for p in points]


def _geometry(n: int):
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + (pw * i / (n - 1) if n > 1 else pw / 2)

    def y(v: float) -> float:
        return TOP + ph * (1.0 - v)

    return x, y


def svg_chart(summary: Summary, metric: str, title: str) -> str:
    """An <svg> element (safe to put into a page: every text is escaped)."""
    buckets = summary.buckets
    x, y = _geometry(len(buckets))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" data-metric="{escape(metric)}"><title>{escape(title)}</title>',
           f'<text x="{LEFT}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>']
    for v in (0.0, 0.5, 1.0):
        out.append(f'<line x1="{LEFT}" y1="{y(v):.1f}" x2="{W - RIGHT}" y2="{y(v):.1f}" stroke="#ddd"/>'
                   f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" font-size="11" text-anchor="end">{100 * v:.0f} %</text>')
    step = max(1, len(buckets) // 6)
    for i, b in enumerate(buckets):
        if i % step == 0 or i == len(buckets) - 1:
            out.append(f'<text x="{x(i):.1f}" y="{H - BOTTOM + 16}" font-size="10" text-anchor="middle">{escape(b)}</text>')
    if not buckets:
        out.append(f'<text x="{LEFT + 10}" y="{H / 2}" font-size="12">no findings in this period</text>')
    for k, (name, points) in enumerate(summary.series.items()):
        values = _values(points, metric)
        trend = trend_of(points) if metric == "agreement" else None
        falling = bool(trend and trend.falling)
        color = FALLING if falling else PALETTE[k % len(PALETTE)]
        pts = [(x(i), y(v)) for i, v in enumerate(values) if v is not None]
        cls = "series falling" if falling else "series"
        out.append(f'<g class="{cls}" data-model="{escape(name)}">')
        if len(pts) > 1:
            out.append('<polyline fill="none" stroke-width="2" stroke="{}" points="{}"/>'.format(
                color, " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)))
        for a, b in pts:
            out.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{color}"/>')
        if trend:
            idx = [i for i, v in enumerate(values) if v is not None]
            out.append(f'<line x1="{x(idx[0]):.1f}" y1="{y(trend.first):.1f}" x2="{x(idx[-1]):.1f}" '
                       f'y2="{y(trend.last):.1f}" stroke="{color}" stroke-dasharray="5,4" stroke-width="1.5"/>')
        label = name + ("  \u25bc falling" if falling else "")
        weight = ' font-weight="bold"' if falling else ""
        out.append(f'<text x="{W - RIGHT + 10}" y="{TOP + 14 + 16 * k}" font-size="11" fill="{color}"{weight}>'
                   f'{escape(label)}</text></g>')
    out.append("</svg>")
    return "".join(out)


def _bgr(hex_color: str) -> tuple[int, int, int]:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return b, g, r


def png_chart(summary: Summary) -> bytes:
    """The report's picture: agreement (top) and needs-review rate (bottom) over time, per model."""
    panels = []
    for metric, title in (("agreement", "reviewer agreement per model"), ("needs_review", "needs-review rate per model")):
        img = np.full((H, W, 3), 255, np.uint8)
        buckets = summary.buckets
        x, y = _geometry(len(buckets))
        cv2.putText(img, title, (LEFT, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        for v in (0.0, 0.5, 1.0):
            cv2.line(img, (LEFT, int(y(v))), (W - RIGHT, int(y(v))), (221, 221, 221), 1)
            cv2.putText(img, f"{100 * v:.0f}%", (8, int(y(v)) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        step = max(1, len(buckets) // 5)
        for i, b in enumerate(buckets):
            if i % step == 0:
                cv2.putText(img, b, (int(x(i)) - 30, H - BOTTOM + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1,
                            cv2.LINE_AA)
        for k, (name, points) in enumerate(summary.series.items()):
            trend = trend_of(points) if metric == "agreement" else None
            falling = bool(trend and trend.falling)
            color = _bgr(FALLING if falling else PALETTE[k % len(PALETTE)])
            pts = [(int(x(i)), int(y(v))) for i, v in enumerate(_values(points, metric)) if v is not None]
            for a, b in zip(pts, pts[1:], strict=False):
                cv2.line(img, a, b, color, 2, cv2.LINE_AA)
            for p in pts:
                cv2.circle(img, p, 3, color, -1, cv2.LINE_AA)
            if trend and pts:
                cv2.line(img, (pts[0][0], int(y(trend.first))), (pts[-1][0], int(y(trend.last))), color, 1, cv2.LINE_AA)
            label = name + (" FALLING" if falling else "")
            cv2.putText(img, label[:26], (W - RIGHT + 8, TOP + 14 + 16 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1,
                        cv2.LINE_AA)
        panels.append(img)
    ok, buf = cv2.imencode(".png", np.vstack(panels))
    if not ok:
        raise RuntimeError("OpenCV could not encode the report's PNG")
    return buf.tobytes()
