"""DICOM decode to display values: edge.imaging.dicom against pydicom's own chain, side by side in one run.

* **cine**: the SonoSite 120-frame 480x640 JPEG baseline YBR_FULL_422 cine in pydicom-data, per frame:
  edge.imaging.dicom's lazy frames (OpenCV libjpeg-turbo decode + BGR->RGB) vs pydicom ``iter_pixels`` with its
  default YBR->RGB conversion (what ``pixel_array`` gives). Also time to the first frame, lazy vs
  decoding every frame up front.
* **CR display**: the Fuji 1760x1760 MONOCHROME1 CR (window 550/1024), stored values -> display [0, 1]:
  edge.imaging.dicom's per-object lookup table (one gather) vs pydicom apply_modality_lut + apply_voi_lut +
  normalise + invert on the full image. Decoding is excluded from both (same array in).

The machine is shared, so the variants alternate for ``--rounds`` rounds and medians are reported.

    python -m benchmarks.bench_decode [--rounds 3]

Writes benchmarks/results/decode.json and decode.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_voi_lut, iter_pixels

from benchmarks.results_io import write_results
from edge.imaging.dicom import DisplayMapper, frames_from_file, read_dicom


def data_file(name: str) -> Path:
    import os

    import pydicom.data

    dirs = [os.path.join(os.path.dirname(pydicom.data.__file__), "test_files")]
    try:
        import data_store

        dirs.insert(0, os.path.join(os.path.dirname(data_store.__file__), "data"))
    except ImportError:
        pass
    for d in dirs:
        if (Path(d) / name).is_file():
            return Path(d) / name
    raise SystemExit(f"{name} not found: install pydicom-data")


def per_frame_ms(it, n: int) -> list[float]:
    out = []
    t = time.perf_counter()
    for _ in range(n):
        next(it)
        now = time.perf_counter()
        out.append((now - t) * 1000)
        t = now
    return out


def bench_cine(path: Path, n: int) -> dict[str, list[float]]:
    ds = pydicom.dcmread(path)
    edge_it = frames_from_file(path, "bench")
    next(edge_it)  # file read + set-up, timed separately below
    edge = per_frame_ms(edge_it, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_it = iter_pixels(ds)
        next(ref_it)
        ref = per_frame_ms(ref_it, n)
    t = time.perf_counter()
    next(frames_from_file(path, "bench"))
    first_lazy = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    list(frames_from_file(path, "bench"))
    all_upfront = (time.perf_counter() - t) * 1000
    return {"edge": edge, "pydicom": ref, "first_lazy": [first_lazy], "all_upfront": [all_upfront]}


def bench_cr(path: Path) -> dict[str, float]:
    ds = read_dicom(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = ds.pixel_array
    t = time.perf_counter()
    mapper = DisplayMapper(ds, raw)
    setup = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    mapper(raw)
    edge = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v = apply_voi_lut(apply_modality_lut(raw, ds), ds)
    bits = int(ds.BitsStored)
    out = 1.0 - np.clip(v / (2**bits - 1), 0, 1).astype(np.float32)
    ref = (time.perf_counter() - t) * 1000
    assert out.shape == raw.shape
    return {"edge": edge, "pydicom": ref, "lut_setup": setup}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=60)
    args = ap.parse_args()
    cine, cr = data_file("color3d_jpeg_baseline.dcm"), data_file("RG3_UNCR.dcm")
    rounds_cine, rounds_cr = [], []
    for _ in range(args.rounds):
        rounds_cine.append(bench_cine(cine, args.frames))
        rounds_cr.append(bench_cr(cr))

    def med(key: str) -> float:
        return statistics.median(statistics.median(r[key]) for r in rounds_cine)

    def p95(key: str) -> float:
        return statistics.median(float(np.percentile(r[key], 95)) for r in rounds_cine)

    res = {
        "machine": {"python": platform.python_version(), "cpu_count": __import__("os").cpu_count(),
                    "note": "shared 2-core machine; medians over alternating rounds"},
        "rounds": args.rounds,
        "cine": {"file": cine.name, "frames_timed": args.frames,
                 "edge_ms_median": round(med("edge"), 2), "edge_ms_p95": round(p95("edge"), 2),
                 "pydicom_ms_median": round(med("pydicom"), 2), "pydicom_ms_p95": round(p95("pydicom"), 2),
                 "speedup": round(med("pydicom") / med("edge"), 2),
                 "first_frame_lazy_ms": round(med("first_lazy"), 1), "all_120_upfront_ms": round(med("all_upfront"), 1)},
        "cr_display": {"file": cr.name,
                       "edge_ms": round(statistics.median(r["edge"] for r in rounds_cr), 2),
                       "pydicom_ms": round(statistics.median(r["pydicom"] for r in rounds_cr), 2),
                       "lut_setup_ms": round(statistics.median(r["lut_setup"] for r in rounds_cr), 2)},
    }
    res["cr_display"]["speedup"] = round(res["cr_display"]["pydicom_ms"] / res["cr_display"]["edge_ms"], 2)
    c, d = res["cine"], res["cr_display"]
    md = [
        "# DICOM decode to display values (benchmarks/bench_decode.py)",
        "",
        f"Shared 2-core machine, medians over {args.rounds} alternating rounds.",
        "",
        "| case | edge.imaging.dicom | pydicom | ratio |",
        "| --- | --- | --- | --- |",
        f"| SonoSite cine 480x640 JPEG YBR, per frame (median) | {c['edge_ms_median']} ms "
        f"| {c['pydicom_ms_median']} ms | {c['speedup']}x |",
        f"| same, p95 | {c['edge_ms_p95']} ms | {c['pydicom_ms_p95']} ms | |",
        f"| Fuji CR 1760x1760 stored->display (decode excluded) | {d['edge_ms']} ms "
        f"(+{d['lut_setup_ms']} ms table, once per object) | {d['pydicom_ms']} ms | {d['speedup']}x |",
        "",
        f"Cine time to first frame, lazy: {c['first_frame_lazy_ms']} ms; all 120 frames up front: {c['all_120_upfront_ms']} ms.",
        "",
    ]
    write_results("decode", res, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
