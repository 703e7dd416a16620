"""What the explanation map costs: the cxr-opacity bundle's files with and without the CAM output, side by side.

For each file the bundle ships (FP32, INT8 on ONNX Runtime, and the OpenVINO file on OpenVINO when installed),
the same file with the CAM output removed from the graph's outputs is timed in the same interleaved loop
(`export.report.latency_side_by_side`: device session settings, 2 threads, median of ``--runs`` per file,
blocks rotating across files, run in both orders and averaged). Then the device-side work per finding:
decoding the map (`Classify.decode` with and without it) and rendering the overlay PNG (`overlay.render`),
on the reference sample models/samples/cxr_opacity.dcm. The reference model's map is the pooled map itself
(free); the common CNN head (GAP -> Gemm) gets an added 1x1 convolution, so the ResNet-18-class benchmark
model of benchmarks/make_models.py (FP32) is timed with and without its added map too.

    python -m benchmarks.bench_explain [--runs 300]

Writes benchmarks/results/explain.json and explain.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx

from benchmarks.results_io import write_results
from edge.imaging.dicom import frames_from_file
from edge.inference.bundle import load_bundle
from edge.inference.preprocess import Preprocessor
from edge.inference.tasks import build_task
from edge.inference.tasks.overlay import render
from export.report import latency_side_by_side, machine

ROOT = Path(__file__).resolve().parents[1]


def without_output(src: Path, name: str, dst: Path) -> Path:
    m = onnx.load(str(src))
    keep = [o for o in m.graph.output if o.name != name]
    del m.graph.output[:]
    m.graph.output.extend(keep)
    onnx.save(m, str(dst))
    return dst


def _median_ms(fn, n: int) -> float:
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        t.append((time.perf_counter() - t0) * 1000)
    return statistics.median(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "models/bundles/cxr-opacity")
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    a = ap.parse_args()
    b = load_bundle(a.bundle)
    expl = b.manifest.explanation
    if expl.get("kind") != "cam":
        raise SystemExit(f"{a.bundle}: the bundle provides no class-activation map ({expl})")
    out_name = expl["output"]
    frame = next(iter(frames_from_file(ROOT / "models/samples/cxr_opacity.dcm", source="bench")))
    x, geom = Preprocessor(b.manifest.preprocess).apply(frame)
    files = {"fp32": ("onnxruntime", b.model_path("fp32")), "int8": ("onnxruntime", b.model_path("int8"))}
    if "openvino" in b.manifest.runtimes and importlib.util.find_spec("openvino"):
        files["int8 openvino"] = ("openvino", b.model_path("int8", "openvino"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        timed = {}
        for k, (rt, p) in files.items():
            timed[k] = (rt, p)
            timed[f"{k} without map"] = (rt, without_output(p, out_name, Path(tmp) / f"{k.replace(' ', '_')}.onnx"))
        first = latency_side_by_side(timed, x, runs=a.runs)
        second = latency_side_by_side(dict(reversed(list(timed.items()))), x, runs=a.runs)
        for k in files:
            w = (first[k]["median_ms"] + second[k]["median_ms"]) / 2
            wo = (first[f"{k} without map"]["median_ms"] + second[f"{k} without map"]["median_ms"]) / 2
            rows.append({"file": k, "runtime": files[k][0], "with_ms": round(w, 4), "without_ms": round(wo, 4),
                         "cost_ms": round(w - wo, 4), "cost_pct": round(100 * (w / wo - 1), 1)})
        # the common head: GAP -> Flatten -> Gemm gets a 1x1 Conv with the head's weights (export.explain)
        from benchmarks.make_models import resnet18
        from export.explain import add_cam

        plain = Path(tmp) / "resnet18.onnx"
        onnx.save(resnet18(classes=2), str(plain))
        cam = Path(tmp) / "resnet18.cam.onnx"
        cam.write_bytes(plain.read_bytes())
        e = add_cam(cam, "logits", 2)
        xr = np.random.default_rng(0).normal(0, 1, (1, 1, 224, 224)).astype(np.float32)
        pair = {"resnet18 fp32": cam, "resnet18 fp32 without map": plain}
        first = latency_side_by_side(pair, xr, runs=max(30, a.runs // 5))
        second = latency_side_by_side(dict(reversed(list(pair.items()))), xr, runs=max(30, a.runs // 5))
        w = (first["resnet18 fp32"]["median_ms"] + second["resnet18 fp32"]["median_ms"]) / 2
        wo = (first["resnet18 fp32 without map"]["median_ms"] + second["resnet18 fp32 without map"]["median_ms"]) / 2
        rows.append({"file": f"ResNet-18-class fp32 ({e.method}, map {e.shape})", "runtime": "onnxruntime",
                     "with_ms": round(w, 4), "without_ms": round(wo, 4), "cost_ms": round(w - wo, 4),
                     "cost_pct": round(100 * (w / wo - 1), 1)})
    import onnxruntime as ort

    sess = ort.InferenceSession(str(b.model_path("int8")), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outputs = dict(zip(names, sess.run(None, {b.manifest.input.name: x}), strict=True))
    plain = {k: v for k, v in outputs.items() if k != out_name}
    task, task_pic = build_task(b.manifest), build_task(b.manifest, overlays=True)
    (det,) = task_pic.decode(outputs, geom, frame)
    device = {"decode_ms_without_map": round(_median_ms(lambda: task.decode(plain, geom, frame), 200), 4),
              "decode_ms_with_map": round(_median_ms(lambda: task.decode(outputs, geom, frame), 200), 4),
              "render_overlay_ms": round(_median_ms(lambda: render(det.picture, det, 384), 50), 3),
              "overlay_png_bytes": len(render(det.picture, det, 384) or "") * 3 // 4,
              "frame": [frame.height, frame.width]}
    res = {"benchmark": "explain", "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": machine(), "bundle": f"{b.manifest.name} {b.manifest.version}", "explanation": expl.get("method"),
           "map_shape": expl.get("shape"), "runs": a.runs, "threads": 2, "files": rows, "device": device}
    write_results("explain", res, markdown(res), folder=a.out)
    print(markdown(res))


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = ["# What the explanation map costs", "",
             f"{r['time']}; {m['cpu']} ({'/'.join(m.get('isa', []))}); ONNX Runtime {m['onnxruntime']}. Bundle "
             f"{r['bundle']}, class-activation map `{r['explanation']}` {r['map_shape']}. 2 threads, batch 1, median of "
             f"{r['runs']} runs per file, interleaved in blocks, both orders averaged. `python -m benchmarks.bench_explain`.",
             "", "| file | runtime | with map ms | without map ms | cost ms | cost |", "| --- | --- | --- | --- | --- | --- |"]
    for x in r["files"]:
        lines.append(f"| {x['file']} | {x['runtime']} | {x['with_ms']:.3f} | {x['without_ms']:.3f} | {x['cost_ms']:+.3f} | "
                     f"{x['cost_pct']:+.1f} % |")
    d = r["device"]
    lines += ["", f"Device side per finding ({d['frame'][0]}x{d['frame'][1]} CR frame): decode "
              f"{d['decode_ms_without_map']:.3f} ms without the map, {d['decode_ms_with_map']:.3f} ms with it (upsample, "
              f"peak); drawing and encoding the overlay {d['render_overlay_ms']:.1f} ms ({d['overlay_png_bytes']} bytes of "
              "PNG), paid only for findings the overlay policy picks.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
