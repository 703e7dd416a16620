"""Drift monitoring: how fast a shifted input raises a drift event, and that in-distribution input raises none.

Streams through the device's own code (the bundle's `Preprocessor`, `DriftMonitor` with the profile's
default settings) and the demo bundles' reference statistics:

* in distribution: fresh synthetic cines / radiographs from the generators the calibration set came from
  (seeds disjoint from calibration), and the committed demo samples;
* shifted: the same inputs with gain x1.6, with added noise (sigma 25 grey levels), and, for ultrasound,
  another probe geometry (a linear-array field: the fan's central part fills the frame, no black margins).

For each stream it reports drift events raised, the frame at which the first one was raised (frames to
detect), and the share of frames flagged out of distribution (their findings would need review), plus the
monitor's cost per frame. Counts, not timings, are the acceptance numbers, so the machine's noise does
not move them.

    python -m benchmarks.bench_drift [--cines 12] [--frames 60] [--images 240]

Writes benchmarks/results/drift.json and drift.md.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from benchmarks.results_io import write_results
from edge.frames import Frame
from edge.imaging.dicom import frames_from_file
from edge.inference.bundle import load_bundle
from edge.inference.drift import DriftMonitor, MonitorSettings
from edge.inference.preprocess import Preprocessor
from models import datasets as D
from models import synth_ultrasound as sus

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "models" / "bundles"
SAMPLES = ROOT / "models" / "samples"
SEED = 9100  # disjoint from calibration (101), validation (202) and training seeds


def gain(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if img.dtype == np.uint8:
        return np.clip(img.astype(np.float32) * 1.6, 0, 255).astype(np.uint8)
    return np.clip(img * 1.6, 0, 1).astype(np.float32)


def noise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if img.dtype == np.uint8:
        return np.clip(img.astype(np.float32) + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8)
    return np.clip(img + rng.normal(0, 25 / 255, img.shape), 0, 1).astype(np.float32)


def linear_probe(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    crop = img[int(0.3 * h):int(0.8 * h), int(0.3 * w):int(0.7 * w)]
    return cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)


SHIFTS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "none": lambda img, rng: img, "gain x1.6": gain, "noise sigma 25": noise, "linear probe": linear_probe}


def us_frames(n_cines: int, n_frames: int) -> Iterator[Frame]:
    for c in range(n_cines):
        cine = sus.make_cine(SEED + c, n_frames=n_frames)
        for i, img in enumerate(cine.frames):
            yield Frame(pixels=img, modality="US", source="bench", index=i, spacing_mm=(cine.spacing_mm,) * 2,
                        frame_count=n_frames)


def cxr_frames(n: int) -> Iterator[Frame]:
    for i in range(n):
        s = D.cxr_sample(SEED, i)
        yield Frame(pixels=s.pixels, modality="CR", source="bench", index=i)


def sample_frames(names: list[str]) -> Iterator[Frame]:
    for n in names:
        yield from frames_from_file(SAMPLES / n, "bench")


def run(bundle: str, frames: Iterator[Frame], shift: str) -> dict:
    b = load_bundle(BUNDLES / bundle)
    pre = Preprocessor(b.manifest.preprocess)
    mon = DriftMonitor(b.manifest.reference, MonitorSettings())
    rng = np.random.default_rng(7)
    first = None
    n = 0
    cost = 0.0
    for f in frames:
        f.pixels = SHIFTS[shift](f.pixels, rng)
        t, _ = pre.apply(f)
        t0 = time.perf_counter()
        chk = mon.observe(t, f.streaming)
        cost += time.perf_counter() - t0
        n += 1
        if chk.change == "raised" and first is None:
            first = n
    snap = mon.snapshot()
    return {"bundle": bundle, "shift": shift, "frames": n, "drift_events": snap["drift_events"],
            "first_event_at_frame": first, "ood_frame_share": round(snap["ood_frames"] / max(1, n), 4),
            "peak_window_psi": snap["peak_intensity_psi"], "drift_psi": snap["drift_psi"], "ood_psi": snap["ood_psi"],
            "monitor_us_per_frame": round(cost / max(1, n) * 1e6, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cines", type=int, default=12)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--images", type=int, default=240)
    a = ap.parse_args(argv)
    rows = []
    for shift in SHIFTS:
        rows.append({**run("us-free-fluid", us_frames(a.cines, a.frames), shift), "input": "synthetic cines"})
        if shift != "linear probe":
            rows.append({**run("cxr-opacity", cxr_frames(a.images), shift), "input": "synthetic radiographs"})
    rows.append({**run("us-free-fluid", sample_frames(["us_cine.dcm"]), "none"), "input": "demo sample us_cine.dcm"})
    rows.append({**run("cxr-opacity", sample_frames(["cxr_normal.dcm", "cxr_opacity.dcm"] * 20), "none"),
                 "input": "demo samples cxr_*.dcm x20"})
    data = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.processor() or
            platform.machine(), "settings": MonitorSettings().__dict__, "rows": rows,
            "command": "python -m benchmarks.bench_drift " + " ".join(argv or [])}
    md = ["# Drift monitoring: detection and false alarms", "",
          f"{data['date']}; device defaults: window {MonitorSettings().window_frames} frames, verdict after "
          f"{MonitorSettings().min_frames}, event after {MonitorSettings().persist_frames} frames in a row above the "
          "bundle's drift_psi. `python -m benchmarks.bench_drift`.", "",
          "| bundle | input | shift | frames | drift events | first event at frame | OOD frames | peak window PSI "
          "| drift_psi | monitor us/frame |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    md_notes = ["", "Frames to detect: a shift present from the first frame cannot be called before the verdict "
                "(min_frames) plus persist_frames, so 39 is the floor with these settings. A shift that preprocessing "
                "averages away (pixel noise on a 512-pixel radiograph resized to 224 with area interpolation) barely "
                "moves what the model sees, and is not drift for that model. The confidence distribution is "
                "reported by the device but raises nothing (case mix moves it legitimately)."]
    for r in rows:
        md.append(f"| {r['bundle']} | {r['input']} | {r['shift']} | {r['frames']} | {r['drift_events']} | "
                  f"{r['first_event_at_frame'] or '-'} | {r['ood_frame_share']:.1%} | {r['peak_window_psi']:.3f} | "
                  f"{r['drift_psi']:.3f} | {r['monitor_us_per_frame']} |")
        print(md[-1])
    write_results("drift", data, "\n".join(md + md_notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
