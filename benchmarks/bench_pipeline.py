"""Pipeline overhead and end-to-end latency on the real SonoSite cine (pydicom-data), FP32 and INT8.

Side by side in one run, on the same model file, session settings and frames:

* **bare**: ``Backend.run`` on tensors preprocessed in advance, back to back, and where the backend can
  start an inference without waiting (OpenVINO) also two in flight; the faster is the ceiling.
* **pipeline**: the device pipeline (capture -> preprocess -> infer -> decode+smoothing+publish, threads
  and bounded queues) on the same frames as stored, never-dropped frames, as fast as it can go.
  overhead ratio = pipeline fps / bare fps (goal >= 0.9).
* **real time**: the same frames fed as live video at the cine's recorded rate (FrameTime 33.3 ms =
  30 fps); reports capture->finding latency p50/p95/p99, achieved fps and dropped frames.

Every variant runs with each ONNX Runtime intra-op thread count in ``--threads`` (default 1,2): on two
cores, one ORT thread leaves the other core to the pipeline's other stages, two make a single frame
faster but compete with them; and on each runtime in ``--providers`` (default cpu,openvino: ONNX
Runtime's CPU provider and OpenVINO, each alone, when the bundle was gated on it).

Bare and pipeline runs alternate for ``--rounds`` rounds and the medians are reported, because the
machine is shared and noisy. Frames are decoded once up front (JPEG decode is the source's job and is
benchmarked with the sources). Model: the ``us-free-fluid`` bundle when it exists, otherwise a U-Net of
the same shape built by benchmarks/make_models.py and quantized here (uint8-activation QDQ, per channel).

    python -m benchmarks.bench_pipeline [--bundle models/bundles/us-free-fluid] [--rounds 3] [--threads 1,2]
        [--providers cpu,openvino]

Writes benchmarks/results/pipeline.json and pipeline.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import yaml

from benchmarks.results_io import write_results
from edge.config import ModelConfig
from edge.frames import Frame, Region, StudyRef
from edge.inference.bundle import load_bundle, sha256_file
from edge.inference.loaded_model import assemble
from edge.inference.preprocess import PreprocessSpec
from edge.runtime.metrics import Metrics
from edge.runtime.pipeline import PipelineSettings, build_pipeline

ROOT = Path(__file__).resolve().parents[1]
CINE = "color3d_jpeg_baseline.dcm"
PYTHON_SWITCH_S = 0.005  # sys.getswitchinterval() of a fresh interpreter


def load_cine(path: Path | None = None) -> tuple[list[np.ndarray], dict]:
    """Decode the cine once with the device's own DICOM code (display values, spacing, imaging region)."""
    from pydicom.data import get_testdata_file

    from edge.imaging.dicom import frames_from_file, read_dicom

    path = path or Path(get_testdata_file(CINE))
    t0 = time.perf_counter()
    frames = list(frames_from_file(path, source="sonosite-cine"))
    decode_s = time.perf_counter() - t0
    ds = read_dicom(path)
    f0 = frames[0]
    r = f0.region
    meta = {"file": path.name, "manufacturer": str(ds.get("Manufacturer", "")), "frames": len(frames),
            "rows": f0.height, "cols": f0.width,
            "frame_time_ms": 1000.0 / f0.frame_rate if f0.frame_rate else float(ds.get("FrameTime", 33.333)),
            "region": [r.x0, r.y0, r.x1, r.y1] if r else None,
            "spacing_mm": list(f0.spacing_mm) if f0.spacing_mm else None,
            "decode_fps": round(len(frames) / decode_s, 1), "_path": str(path)}
    return [f.pixels for f in frames], meta


def fallback_bundle(root: Path, frames: list[np.ndarray]) -> tuple[Path, str]:
    """The trained reference U-Net (models/us_free_fluid/model.onnx) or, before it exists, a random U-Net of
    the same shape, as FP32 + INT8 (QDQ, uint8 activations, per-channel int8 weights) in a bundle."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from benchmarks.make_models import unet
    from edge.inference.preprocess import Preprocessor

    ref = yaml.safe_load((ROOT / "models/us_free_fluid/model.yaml").read_text())
    spec = PreprocessSpec.from_dict(ref["preprocess"])
    root.mkdir(parents=True)
    trained = ROOT / "models/us_free_fluid/model.onnx"
    if trained.exists():
        onnx.save(onnx.load(str(trained)), root / "model.fp32.onnx")
        origin, out_name = "models/us_free_fluid/model.onnx, INT8 quantized here", "logits"
    else:
        onnx.save(unet(size=spec.size[0]), root / "model.fp32.onnx")
        origin, out_name = "random U-Net from benchmarks/make_models.py, INT8 quantized here", "mask_logits"
    pre = Preprocessor(spec)
    calib = [pre.apply_pixels(f)[0] for f in frames[::6]]  # the cine itself: calibration matches what runs

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"input": x}

    quantize_static(str(root / "model.fp32.onnx"), str(root / "model.int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    files = {n: sha256_file(root / n) for n in ("model.fp32.onnx", "model.int8.onnx")}
    manifest = {"schema_version": 1, "name": "bench-unet", "version": "0.0.1", "task": "segment",
                "labels": ref["labels"], "input": {"name": "input", "shape": [1, 1, *spec.size]},
                "outputs": [{"name": out_name, "shape": [1, 1, *spec.size], "activation": "sigmoid"}],
                "preprocess": spec.to_dict(), "preprocess_sha256": spec.sha256(),
                "variants": {"fp32": {"file": "model.fp32.onnx", "precision": "fp32"},
                             "int8": {"file": "model.int8.onnx", "precision": "int8"}},
                "default_variant": "int8", "threshold": ref["threshold"], "review_band": ref["review_band"],
                "urgent_labels": ref["urgent_labels"], "postprocess": ref.get("postprocess", {}), "files": files}
    (root / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return root, origin


class MemorySource:
    """Frames already in memory; ``interval_s`` paces them like a camera, ``live`` picks the admission rule."""

    def __init__(self, pixels: list[np.ndarray], meta: dict, live: bool, interval_s: float = 0.0, repeat: int = 1):
        self.name = "sonosite-cine"
        self.pixels, self.meta, self.live, self.interval_s, self.repeat = pixels, meta, live, interval_s, repeat
        self.completed = 0

    def frames(self, stop: threading.Event):
        region = Region(*self.meta["region"]) if self.meta["region"] else None
        spacing = tuple(self.meta["spacing_mm"]) if self.meta["spacing_mm"] else None
        n = len(self.pixels)
        t_next = time.monotonic()
        for k in range(n * self.repeat):
            if stop.is_set():
                return
            if self.interval_s:
                t_next += self.interval_s
                delay = t_next - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            i = k % n
            yield Frame(pixels=self.pixels[i], modality="US", source=self.name, index=k, spacing_mm=spacing,
                        region=region, live=self.live, frame_count=None if self.live else n * self.repeat,
                        study=None if self.live else StudyRef("1.2.826.0.1", "1.2.826.0.1.1", f"1.2.826.0.1.1.{k // n}"))

    def complete(self, frame, ok):
        self.completed += 1

    def close(self):
        pass


def run_bare(backend, tensors: list[np.ndarray]) -> float:
    t0 = time.perf_counter()
    for x in tensors:
        backend.run(x)
    return len(tensors) / (time.perf_counter() - t0)


def run_bare_in_flight(backend, tensors: list[np.ndarray]) -> float | None:
    """With a backend that can start an inference without waiting (OpenVINO: `start`), the runtime's own
    ceiling: the next tensor submitted before the previous one is collected, as the pipeline does. None for
    backends that only `run`."""
    start = getattr(backend, "start", None)
    if start is None:
        return None
    t0 = time.perf_counter()
    pending = start(tensors[0])
    for x in tensors[1:]:
        nxt = start(x)
        pending()
        pending = nxt
    pending()
    return len(tensors) / (time.perf_counter() - t0)


class CountingSink:
    """Counts findings; the outbox is benchmarked on its own (bench_outbox)."""

    def __init__(self) -> None:
        self.n = 0

    def store(self, findings: list) -> list[bool]:
        self.n += len(findings)
        return [True] * len(findings)


def run_pipeline(lm, source: MemorySource, depth: int, **settings) -> tuple[float, dict, int]:
    """``settings``: `PipelineSettings` fields that differ from the device's defaults."""
    metrics = Metrics()
    sink = CountingSink()
    pl = build_pipeline(source, lm, "bench", lambda s: ("s", "s", "i"), sink, metrics,
                        PipelineSettings(queue_depth=depth, **settings))
    before = sys.getswitchinterval()  # process-wide: the next run starts from Python's default again
    if pl.settings.gil_switch_ms is None:
        sys.setswitchinterval(PYTHON_SWITCH_S)
    t0 = time.perf_counter()
    try:
        pl.start()
        pl.join()
    finally:
        sys.setswitchinterval(before)
    wall = time.perf_counter() - t0
    if pl.failure:
        raise pl.failure
    snap = metrics.snapshot()
    return snap["total"]["frames_done"] / wall, snap, sink.n


def side_by_side(lm, pixels, meta, rounds: int, repeat: int, **settings) -> dict:
    """Alternate bare and pipeline runs over the same frames; the ratio is the median of per-round ratios,
    so a burst of load from another process hits one pair, not one side."""
    region = Region(*meta["region"]) if meta["region"] else None
    tensors = [lm.preprocessor.apply_pixels(p, region)[0] for p in pixels] * repeat
    bare, sync, pipe, ratios, snap = [], [], [], [], None
    for _ in range(rounds):
        b = run_bare(lm.backend, tensors)
        b_in_flight = run_bare_in_flight(lm.backend, tensors)
        p, snap, _ = run_pipeline(lm, MemorySource(pixels, meta, live=False, repeat=repeat), depth=4, **settings)
        sync.append(b)
        bare.append(max(b, b_in_flight or 0.0))  # the ceiling the pipeline is held to: the faster way
        pipe.append(p)
        ratios.append(p / bare[-1])
    return {"bare_fps": round(statistics.median(bare), 1), "pipeline_fps": round(statistics.median(pipe), 1),
            "ratio": round(statistics.median(ratios), 3), "bare_run_fps": round(statistics.median(sync), 1),
            "bare_fps_rounds": [round(x, 1) for x in bare],
            "pipeline_fps_rounds": [round(x, 1) for x in pipe],
            "stage_ms_p50": {k: v["p50"] for k, v in snap["sources"]["sonosite-cine"]["stage_ms"].items()}}


def bench_variant(bundle, variant: str, pixels, meta, rounds: int, threads: int, realtime_repeat: int, log,
                  provider: str = "cpu") -> dict:
    def load(spin: bool):
        mcfg = ModelConfig(name="bench", bundle=bundle.root, variant=variant, intra_op_threads=threads, warmup_runs=5,
                           require_signature=False, providers=(provider,))
        return assemble(bundle, mcfg, overlays=False, logger=log, allow_spinning=spin)

    lm = load(False)  # the device default
    sbs = side_by_side(lm, pixels, meta, rounds, repeat=2)
    interval = meta["frame_time_ms"] / 1000.0
    _, rt, rt_findings = run_pipeline(lm, MemorySource(pixels, meta, live=True, interval_s=interval,
                                                       repeat=realtime_repeat), depth=4)
    rp = run_replay(lm, meta["_path"])
    provider = lm.backend.provider
    cv_default = side_by_side(lm, pixels, meta, max(2, rounds // 2), repeat=2, opencv_threads=os.cpu_count())
    gil_default = side_by_side(lm, pixels, meta, max(2, rounds // 2), repeat=2, gil_switch_ms=None)
    runtime = lm.backend.name
    lm.close()
    spin = None
    if runtime == "onnxruntime":  # spinning is an ONNX Runtime setting
        spin_lm = load(True)
        spin = side_by_side(spin_lm, pixels, meta, max(2, rounds // 2), repeat=2)
        spin_lm.close()
    t = rt["total"]
    return {"runtime": runtime,
        "variant": variant, "model_file": bundle.variant(variant).file, "model_sha256": bundle.model_sha256(variant)[:12],
        "provider": provider, "intra_op_threads": threads, **sbs,
        **({"spinning_on": {k: spin[k] for k in ("bare_fps", "pipeline_fps", "ratio")}} if spin else {}),
        "opencv_default_pool": {k: cv_default[k] for k in ("bare_fps", "pipeline_fps", "ratio")},
        "python_switch_interval": {k: gil_default[k] for k in ("bare_fps", "pipeline_fps", "ratio")},
        "realtime": {"target_fps": round(1 / interval, 2), "frames_in": t["frames_in"], "frames_done": t["frames_done"],
                     "fps": round(t["frames_done"] / (t["frames_in"] * interval), 2), "dropped": t["dropped"],
                     "latency_ms": t["latency_ms"], "events": rt_findings},
        "replay": rp,
    }


def run_replay(lm, path: str, depth: int = 1) -> dict:
    """`medge replay` conditions: the device's replay source (decode in the capture thread, real-time pacing,
    stored frames never dropped) feeding the same pipeline."""
    from edge.config import SourceConfig
    from edge.sources import SourceContext, build_source

    with tempfile.TemporaryDirectory() as tmp:
        src = build_source(SourceConfig(name="sonosite-cine", kind="replay", model="bench", path=Path(path), realtime=True),
                           SourceContext(data_dir=Path(tmp)))
        t0 = time.perf_counter()
        fps, snap, events = run_pipeline(lm, src, depth)
        wall = time.perf_counter() - t0
    t = snap["total"]
    return {"frames": t["frames_done"], "fps": round(t["frames_done"] / wall, 2), "dropped": t["dropped"],
            "latency_ms": t["latency_ms"], "events": events, "queue_depth": depth}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "models/bundles/us-free-fluid")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", default="1,2", help="ONNX Runtime intra-op thread counts to compare, e.g. 1,2")
    ap.add_argument("--realtime-repeat", type=int, default=2, help="play the 120-frame cine this many times live")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    ap.add_argument("--providers", default="cpu,openvino", help="runtimes to compare, each alone (cpu = ONNX Runtime)")
    a = ap.parse_args()
    logging.basicConfig(level="WARNING")
    log = logging.getLogger("bench")
    pixels, meta = load_cine()
    with tempfile.TemporaryDirectory() as tmp:
        if (a.bundle / "manifest.yaml").exists():
            root, origin = a.bundle, str(a.bundle.relative_to(ROOT) if a.bundle.is_relative_to(ROOT) else a.bundle.name)
        else:
            root, origin = fallback_bundle(Path(tmp) / "bundle", pixels)
        bundle = load_bundle(root)
        variants = [v for v in ("fp32", "int8") if v in bundle.manifest.variants]
        threads = [int(t) for t in str(a.threads).split(",")]
        providers = [p for p in a.providers.split(",") if p == "cpu" or p.split("-")[0] in bundle.manifest.runtimes]
        results = [bench_variant(bundle, v, pixels, meta, a.rounds, t, a.realtime_repeat, log, p) for p in providers
                   for t in threads for v in variants]
        model = {"name": bundle.manifest.name, "version": bundle.manifest.version, "origin": origin,
                 "input": list(bundle.manifest.preprocess.size)}
    meta.pop("_path")  # machine-specific; the file name is kept
    out = {"benchmark": "pipeline", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "onnxruntime": ort.__version__,
                       "note": "shared 2-core machine; numbers are noisy"},
           "cine": meta, "model": model, "rounds": a.rounds, "results": results}
    write_results("pipeline", out, markdown(out), folder=a.out, indent=1)
    print(markdown(out))


def markdown(r: dict) -> str:
    c, m = r["cine"], r["model"]
    lines = [
        "# Pipeline benchmark",
        "",
        f"{r['time']}, {r['machine']['cpus']} CPUs ({r['machine']['note']}), onnxruntime {r['machine']['onnxruntime']}.",
        f"Cine: {c['file']} ({c['manufacturer']}, {c['frames']} frames {c['cols']}x{c['rows']}, "
        f"{1000 / c['frame_time_ms']:.0f} fps; device DICOM decode {c['decode_fps']} fps)."
        f" Model: {m['name']} {m['version']} ({m['origin']}), input {m['input'][0]}x{m['input'][1]}.",
        f"Bare vs pipeline: {r['rounds']} alternating rounds of 240 frames (the cine twice) on the same session; "
        "fps are medians, the ratio is the median of per-round ratios. Bare is the faster of back-to-back "
        "`Backend.run` and, where the backend can start an inference without waiting (OpenVINO), two in "
        "flight as the pipeline's infer stage submits them; the `run` figure is in parentheses.",
        "",
        "| runtime | variant | threads | bare fps (run) | pipeline fps | ratio | real-time fps (target) | dropped "
        "| latency p50 / p95 / p99 ms | events |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for x in r["results"]:
        rt = x["realtime"]
        lat = rt["latency_ms"]
        lines.append(f"| {x.get('runtime', 'onnxruntime')} | {x['variant']} | {x['intra_op_threads']} | {x['bare_fps']} "
                     f"({x.get('bare_run_fps', x['bare_fps'])}) | "
                     f"{x['pipeline_fps']} | {x['ratio']:.2f} | {rt['fps']} ({rt['target_fps']}) | {rt['dropped']} | "
                     f"{lat['p50']} / {lat['p95']} / {lat['p99']} | {rt['events']} |")
    lines += ["", "Why the device settings are what they are (same model and frames; each row its own alternating rounds). "
              "medge runs ORT's workers without spinning and OpenCV with one thread, because the pipeline's stages "
              "share the two cores with ORT's workers, and sets Python's switch interval to 0.5 ms so the infer "
              "thread gets the interpreter lock back soon after the runtime returns:", "",
              "| variant | ORT threads | setting | bare fps | pipeline fps | ratio |", "| --- | --- | --- | --- | --- | --- |"]
    for x in r["results"]:
        lines.append(f"| {x['variant']} on {x.get('runtime', 'onnxruntime')} | {x['intra_op_threads']} | "
                     f"device default (no spinning, OpenCV 1 thread, 0.5 ms switch) | "
                     f"{x['bare_fps']} | {x['pipeline_fps']} | {x['ratio']:.2f} |")
        for key, label in (("spinning_on", "ORT workers spin (ORT's default)"),
                           ("opencv_default_pool", "OpenCV's default pool (one thread per core)"),
                           ("python_switch_interval", "Python's 5 ms switch interval")):
            if key in x:
                lines.append(f"| {x['variant']} | {x['intra_op_threads']} | {label} | {x[key]['bare_fps']} | "
                             f"{x[key]['pipeline_fps']} | {x[key]['ratio']:.2f} |")
    lines += ["", "`medge replay` conditions (device replay source: DICOM decode in the capture thread, real-time pacing at "
              "the recorded rate, stored frames never dropped):", "",
              "| variant | ORT threads | fps | frames | dropped | latency p50 / p95 / p99 ms | events |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for x in r["results"]:
        rp = x["replay"]
        lat = rp["latency_ms"]
        lines.append(f"| {x['variant']} on {x.get('runtime', 'onnxruntime')} | {x['intra_op_threads']} | "
                     f"{rp['fps']} | {rp['frames']} | {rp['dropped']} | "
                     f"{lat['p50']} / {lat['p95']} / {lat['p99']} | {rp['events']} |")
    lines += ["", "Stage medians (ms) in the pipeline runs: " + "; ".join(
        f"{x['variant']}/{x['intra_op_threads']}t: " + ", ".join(f"{k} {v}" for k, v in x["stage_ms_p50"].items())
        for x in r["results"]), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
