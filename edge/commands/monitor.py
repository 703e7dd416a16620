"""`medge monitor -c PROFILE [--png FILE]`: is any model seeing inputs unlike the ones it was validated on?

Reads what each running (or finished) pipeline writes to ``<data_dir>/monitor/<source>.json`` (the
`DriftMonitor` snapshot with the reference and recent distributions), so it needs neither the daemon's
process nor the bundles, and draws reference vs recent histograms into one PNG with OpenCV (already a
device dependency; no plotting library on the device).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.config import Config
from edge.durable_files import write_atomic
from edge.errors import InputError

PANEL_W, PANEL_H, MARGIN = 360, 180, 28
REF_BGR, RECENT_BGR = (160, 160, 160), (220, 110, 30)


def read_states(cfg: Config) -> list[dict[str, Any]]:
    out = []
    for s in cfg.sources:
        p = cfg.monitor_dir / f"{s.name}.json"
        try:
            out.append({**json.loads(p.read_text()), "file": str(p)})
        except FileNotFoundError:
            out.append({"source": s.name, "model": {"name": s.model}, "state": "no data", "file": str(p)})
        except (OSError, ValueError) as e:
            raise InputError(f"{p}: unreadable monitor state ({e})") from None
    return out


def line(st: dict[str, Any]) -> str:
    m = st.get("model", {})
    if st["state"] == "no data":
        return (f"{st['source']}  {m.get('name', '?')}: no data yet (nothing processed with monitoring on, or the bundle "
                "has no reference statistics)")
    psi = st.get("intensity_psi")
    conf = st.get("confidence_psi")
    age = time.time() - float(st.get("updated_at", time.time()))
    return (f"{st['source']}  {m.get('name', '?')} {m.get('version', '')}: {st['state'].upper()}  "
            f"window PSI {'-' if psi is None else f'{psi:.3f}'} (drift above {st['drift_psi']:.3f}; peak "
            f"{st['peak_intensity_psi']:.3f})  out-of-distribution frames {st['ood_frames']} of {st['frames']}  "
            f"drift events {st['drift_events']}  confidence PSI {'-' if conf is None else f'{conf:.3f}'} "
            f"(informational)  updated {age:.0f} s ago")


def _bars(canvas: np.ndarray, x0: int, y0: int, title: str, ref: list[float], recent: list[float] | None) -> None:
    cv2.putText(canvas, title, (x0, y0 - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (x0, y0), (x0 + PANEL_W, y0 + PANEL_H), (200, 200, 200), 1)
    if not ref:
        cv2.putText(canvas, "no reference", (x0 + 10, y0 + PANEL_H // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
        return
    top = max([*ref, *(recent or [])]) or 1.0
    n = len(ref)
    bw = PANEL_W / n
    for i, v in enumerate(ref):
        h = int(v / top * (PANEL_H - 6))
        cv2.rectangle(canvas, (int(x0 + i * bw + 1), y0 + PANEL_H - h), (int(x0 + (i + 0.5) * bw), y0 + PANEL_H),
                      REF_BGR, -1)
    for i, v in enumerate(recent or []):
        h = int(v / top * (PANEL_H - 6))
        cv2.rectangle(canvas, (int(x0 + (i + 0.5) * bw), y0 + PANEL_H - h), (int(x0 + (i + 1) * bw - 1), y0 + PANEL_H),
                      RECENT_BGR, -1)


def plot(states: list[dict[str, Any]], out: Path) -> None:
    rows = [s for s in states if s["state"] != "no data"]
    if not rows:
        raise InputError("no monitor data to plot yet: run medge with this profile first")
    h = len(rows) * (PANEL_H + 2 * MARGIN) + MARGIN
    canvas = np.full((h, 2 * PANEL_W + 3 * MARGIN, 3), 255, np.uint8)
    for k, st in enumerate(rows):
        y = MARGIN + k * (PANEL_H + 2 * MARGIN) + MARGIN
        psi = st.get("intensity_psi")
        _bars(canvas, MARGIN, y, f"{st['source']} / {st['model']['name']}: input intensity, PSI "
              f"{'-' if psi is None else f'{psi:.2f}'} ({st['state']})", st["reference"]["intensity"],
              st["recent"]["intensity"])
        _bars(canvas, 2 * MARGIN + PANEL_W, y, "confidence (reference: " + (st["reference"].get("confidence_from") or "-")
              + ")", st["reference"]["confidence"], st["recent"]["confidence"])
    cv2.putText(canvas, "grey: reference (export)   blue: recent frames", (MARGIN, h - 8), cv2.FONT_HERSHEY_SIMPLEX,
                0.45, (0, 0, 0), 1, cv2.LINE_AA)
    ok, png = cv2.imencode(".png", canvas)
    if not ok:
        raise InputError(f"{out}: cannot encode the plot")
    write_atomic(Path(out), png.tobytes(), make_parents=True)


def run_monitor(cfg: Config, png: Path | None = None, as_json: bool = False,
                echo: Callable[[str], None] = print) -> int:
    """0: nothing drifting; 1: at least one model is in drift (scripts and monitoring agents can alert on it)."""
    states = read_states(cfg)
    if as_json:
        echo(json.dumps(states, indent=2, sort_keys=True))
    else:
        for st in states:
            echo(line(st))
    if png is not None:
        plot(states, png)
        if not as_json:
            echo(f"plot: {png}")
    return 1 if any(st["state"] == "drift" for st in states) else 0
