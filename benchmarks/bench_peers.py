"""medge INT8 against what an x86 user would pick instead (NNCF + OpenVINO), side by side in one run.

For each of the four models (the two reference models, the ResNet-18-class and U-Net benchmark models of
benchmarks/make_models.py) with the calibration and validation sets of benchmarks/export_matrix.py:

* ``ort fp32``          ONNX Runtime, the FP32 file (the baseline of every ratio)
* ``openvino fp32``     OpenVINO CPU, the same FP32 file
* ``medge int8 / ort``  the bundle `medge export quantize` wrote, on ONNX Runtime with the device's settings
* ``medge int8 / ov``   the same file on OpenVINO (backend ``openvino``)
* ``nncf int8 / ov``    the peer: ``nncf.quantize`` (defaults) on the FP32 model with the same calibration
  tensors, compiled by OpenVINO

All runners use 2 threads, batch 1, the device's session settings (`export.runtimes`), and are timed
interleaved in blocks within one process (`export.report.latency_side_by_side`), median of ``--runs``,
once in each order (the mean of the two medians: the runner after another pays for its warm-up).
Accuracy: the task's primary metric on the validation set (reference models: true labels; benchmark
models: FP32 pseudo-labels, as in export_matrix) for every INT8 form.

medge vs NNCF is reported with a 95 % bootstrap interval of the ratio, and with what OpenVINO's CPU plugin
executes for each INT8 form (layer type, runtime precision and kernel per node of the compiled model's
runtime graph): when both lists are identical the two are the same computation and a ratio off 1.00 is noise.

Share of the int8 peak: model MACs (Conv, ConvTranspose, Gemm, MatMul from the shape-inferred graph) /
median latency, over threads x the CPU's clock x int8 multiply-accumulates per cycle and core by ISA:
128 with AVX-512 VNNI (two 512-bit VPDPBUSD per cycle, 64 u8 x s8 products each), 64 with AVX-VNNI or
AVX2 (two 256-bit VPDPBUSD / VPMADDUBSW; AVX2's 16-bit reduction steps ignored). The clock is lscpu's
"CPU max MHz" when the machine reports one, else /proc/cpuinfo's "cpu MHz" (a virtual machine often shows
only the nominal clock: a boosting core then reaches more than "100 %"). An upper bound, so the share
is a lower bound.

    pip install -e '.[bench]' && python -m benchmarks.bench_peers [--runs 40] [--only cxr-opacity,...]

Writes benchmarks/results/peers.json and peers.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx

from benchmarks.export_matrix import benchmark_cases, reference_cases
from benchmarks.results_io import write_results
from edge.inference.bundle import load_bundle
from edge.inference.preprocess import Preprocessor
from edge.inference.tasks import TASK_KINDS, build_task
from export import datasets, evaluate
from export.make_bundle import ExportOptions, run_export
from export.report import latency_side_by_side, machine
from export.spec import SpecFlags

THREADS = 2
INT8_MACS_PER_CYCLE = (("avx512_vnni", 128), ("avx_vnni", 64), ("avx2", 64))  # per core, best case, by ISA
ROWS = ("ort fp32", "openvino fp32", "medge int8 / ort", "medge int8 / ov", "nncf int8 / ov")


def model_macs(path: Path) -> int:
    """Multiply-accumulates of one inference (batch 1) from the shape-inferred graph."""
    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input)}
    inits = {i.name: list(i.dims) for i in m.graph.initializer}
    total = 0
    for n in m.graph.node:
        out = shapes.get(n.output[0])
        if not out:
            continue
        if n.op_type in ("Conv", "ConvTranspose") and n.input[1] in inits:
            w = inits[n.input[1]]  # Conv: Cout x Cin/g x kh x kw; ConvTranspose: Cin x Cout/g x kh x kw
            per_out = int(np.prod(w[1:]))
            if n.op_type == "ConvTranspose":
                x = shapes.get(n.input[0]) or out
                total += int(np.prod(x)) * int(np.prod(w[1:]))
            else:
                total += int(np.prod(out)) * per_out
        elif n.op_type in ("Gemm", "MatMul") and n.input[1] in inits:
            w = inits[n.input[1]]
            k = w[1] if n.op_type == "Gemm" and any(a.name == "transB" and a.i for a in n.attribute) else w[0]
            total += int(np.prod(out)) * int(k)
    return total


def cpu_ghz() -> tuple[float | None, str]:
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        mx = [float(ln.split(":")[1]) for ln in out.splitlines() if ln.startswith("CPU max MHz")]
        if mx and mx[0] > 0:
            return mx[0] / 1000, "lscpu CPU max MHz"
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    try:
        mhz = [float(ln.split(":")[1]) for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("cpu MHz")]
    except OSError:
        return None, "unknown"
    return (max(mhz) / 1000, "/proc/cpuinfo cpu MHz") if mhz else (None, "unknown")


def macs_per_cycle(isa: list[str]) -> int | None:
    return next((n for flag, n in INT8_MACS_PER_CYCLE if flag in isa), None)


def nncf_model(fp32: Path, tensors: list[np.ndarray], out: Path) -> Path:
    """The peer's INT8 model: NNCF post-training quantization with its defaults, saved as OpenVINO IR."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32))
    q = nncf.quantize(model, nncf.Dataset(tensors), subset_size=len(tensors))
    xml = out / "nncf_int8.xml"
    ov.save_model(q, str(xml), compress_to_fp16=False)
    return xml


def execution_graph(model: Path) -> list[tuple[str, str, str, str]]:
    """What OpenVINO's CPU plugin runs after its own graph transformations: (layer type, runtime precision,
    kernel, how many original layers it fused) per node in execution order, compiled with the device's
    settings. Two models with the same list run the same kernels on the same precisions with the same fused
    post-ops: their latencies can differ only by noise. The fused count matters: a Resize carrying a second
    fused requantization (Concat inputs on separate scales) ran the same kernel 20-30 % longer."""
    from edge.inference.backends.openvino import compile_cpu

    info = [op.get_rt_info() for op in compile_cpu(model, THREADS).get_runtime_model().get_ordered_ops()]
    return [(*(i[k].astype(str) for k in ("layerType", "runtimePrecision", "primitiveType")),
             f"{len([n for n in i['originalLayersNames'].astype(str).split(',') if n])} fused") for i in info]


def compare_graphs(ours: list[tuple[str, ...]], peer: list[tuple[str, ...]]) -> dict:
    differ = [i for i, (a, b) in enumerate(zip(ours, peer, strict=False)) if a != b]
    int8 = lambda g: sum("i8" in k.lower() for _, _, k, _ in g)  # noqa: E731 - int8 kernels (AMX ones: ..._i8)
    return {"identical": ours == peer, "nodes": [len(ours), len(peer)], "int8_kernels": [int8(ours), int8(peer)],
            "first_differences": [{"node": i, "medge": list(ours[i]), "nncf": list(peer[i])} for i in differ[:5]]}


def ratio_interval(peer_ms: list[float], ours_ms: list[float], n: int = 2000, seed: int = 0) -> list[float]:
    """95 % bootstrap interval of median(peer) / median(ours): whether a ratio near 1 says more than noise."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(peer_ms), np.asarray(ours_ms)
    r = np.median(rng.choice(a, (n, a.size)), axis=1) / np.median(rng.choice(b, (n, b.size)), axis=1)
    return [round(float(x), 3) for x in np.percentile(r, [2.5, 97.5])]


def accuracy(model: tuple[str, Path], vs: datasets.ValidationSet, task) -> float | None:
    pred = evaluate.predictions(task, vs, evaluate.run_outputs(model[1], vs, True, model[0]))
    s = evaluate.score(vs, pred, task)
    return s.get(TASK_KINDS[task.m.task].primary_metric)


def one_model(case, work: Path, runs: int, log) -> dict:
    bundle = work / f"{case.name}-bundle"
    log(f"[{case.name}] medge export quantize (cpu recipe, gate on every installed CPU runtime)")
    res = run_export(ExportOptions(model=case.model, calib=case.calib, val=case.val, out=bundle, force=True,
                                   spec_flags=SpecFlags(modalities=["OT"]) if case.kind == "benchmark" else SpecFlags(),
                                   latency_runs=5), log=lambda m: None)
    b = load_bundle(bundle)
    m = b.manifest
    pre = Preprocessor(m.preprocess)
    calib = [s.tensor for s in datasets.load_samples(case.calib, pre, "calibration")]
    log(f"[{case.name}] nncf.quantize on the FP32 model with the same {len(calib)} calibration tensors")
    xml = nncf_model(b.model_path("fp32"), calib, work)
    models = {"ort fp32": ("onnxruntime", b.model_path("fp32")), "openvino fp32": ("openvino", b.model_path("fp32")),
              "medge int8 / ort": ("onnxruntime", b.model_path("int8")),
              "medge int8 / ov": ("openvino", b.model_path("int8", "openvino")),
              "nncf int8 / ov": ("openvino", xml)}
    exact = b.variant("int8").recipe.get("reduce_range") is not True
    log(f"[{case.name}] timing {len(models)} runners interleaved, {runs} runs each, in both orders")
    # the runner after another pays for its caches and threads waking up: time in both orders, average the medians
    fwd = latency_side_by_side(models, calib[0], runs=runs, threads=THREADS, exact_int8=exact, keep_times=True)
    rev = latency_side_by_side(dict(reversed(list(models.items()))), calib[0], runs=runs, threads=THREADS,
                               exact_int8=exact, keep_times=True)
    lat = {k: {q: (fwd[k][q] + rev[k][q]) / 2 for q in ("median_ms", "p90_ms")} for k in models}
    vs = datasets.load_validation(case.val, m.task, pre, m.labels)
    task = build_task(m)
    macs = model_macs(b.model_path("fp32"))
    ghz, _ = cpu_ghz()
    per_cycle = macs_per_cycle(machine().get("isa", []))
    peak = THREADS * ghz * 1e9 * per_cycle if ghz and per_cycle else None
    base = lat["ort fp32"]["median_ms"]
    rows = {}
    for k, (rt, p) in models.items():
        ms = lat[k]["median_ms"]
        rows[k] = {"runtime": rt, "median_ms": round(ms, 3), "p90_ms": round(lat[k]["p90_ms"], 3),
                   "vs_ort_fp32": round(base / ms, 3),
                   "primary": None if "fp32" in k else accuracy((rt, p), vs, task),
                   "int8_peak_share": round(macs / (ms / 1000) / peak, 4) if peak and "int8" in k else None}
    best = min(("medge int8 / ort", "medge int8 / ov"), key=lambda k: rows[k]["median_ms"])
    times = lambda k: fwd[k]["times_ms"] + rev[k]["times_ms"]  # noqa: E731
    graphs = compare_graphs(execution_graph(models["medge int8 / ov"][1]), execution_graph(xml))
    return {"model": case.name, "kind": case.kind, "task": m.task, "input": list(m.input.shape), "macs": macs,
            "primary_metric": TASK_KINDS[m.task].primary_metric, "gate_runtimes": list(m.runtimes),
            "fp32_primary": res.gate["fp32"].get(TASK_KINDS[m.task].primary_metric), "rows": rows,
            "medge_best": best, "medge_best_vs_nncf": round(rows["nncf int8 / ov"]["median_ms"] / rows[best]["median_ms"], 3),
            "medge_best_vs_nncf_95": ratio_interval(times("nncf int8 / ov"), times(best)), "openvino_graphs": graphs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--only", default=None, help="comma-separated model names")
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args(argv)
    only = set(a.only.split(",")) if a.only else None
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="medge-peers-") as tmp:
        work = a.work or Path(tmp)
        cases = reference_cases(work, only) + benchmark_cases(work, only)
        results = [one_model(c, work / c.name, a.runs, log) for c in cases]
    import nncf
    import openvino as ov

    mach = machine()
    ghz, clock_from = cpu_ghz()
    per_cycle = macs_per_cycle(mach.get("isa", []))
    data = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": mach, "threads": THREADS,
            "runs": a.runs, "load_average": list(os.getloadavg()), "cpu_ghz": ghz, "clock_from": clock_from,
            "openvino": ov.__version__, "nncf": nncf.__version__, "int8_macs_per_cycle_per_core": per_cycle,
            "models": results,
            "command": "python -m benchmarks.bench_peers " + " ".join(argv or [])}
    isa = "/".join(mach.get("isa", [])) or "no AVX2"
    md = [f"# medge INT8 vs NNCF + OpenVINO INT8 ({mach['cpu']}, {isa})", "",
          f"{data['date']}; ONNX Runtime {mach['onnxruntime']}, OpenVINO {ov.__version__.split('-')[0]}, "
          f"NNCF {nncf.__version__}; "
          f"{THREADS} threads, batch 1, median of {a.runs} runs per runner interleaved in blocks in one process, mean "
          "of both runner orders; load "
          f"average at start {data['load_average'][0]:.2f}. Ratios are against ONNX Runtime FP32 on the same model. "
          "`python -m benchmarks.bench_peers`.", ""]
    for r in results:
        md += [f"## {r['model']} ({r['task']}, input {'x'.join(map(str, r['input']))}, {r['macs'] / 1e6:.0f} M MACs)", "",
               f"Gate passed on: {', '.join(r['gate_runtimes'])}. {r['primary_metric']}: FP32 {r['fp32_primary']}.", "",
               f"| runner | median ms | p90 ms | vs ORT FP32 | INT8 {r['primary_metric']} | share of int8 peak |",
               "| --- | --- | --- | --- | --- | --- |"]
        for k in ROWS:
            v = r["rows"][k]
            prim = "-" if v["primary"] is None else f"{v['primary']:.4f}"
            share = "-" if v["int8_peak_share"] is None else f"{v['int8_peak_share']:.1%}"
            md.append(f"| {k} | {v['median_ms']:.2f} | {v['p90_ms']:.2f} | {v['vs_ort_fp32']:.2f}x | {prim} | {share} |")
        lo, hi = r["medge_best_vs_nncf_95"]
        g = r["openvino_graphs"]
        same = ("identical: the same kernels on the same precisions with the same fused ops, so any difference is noise"
                if g["identical"] else
                f"different (first at node {g['first_differences'][0]['node']}: medge "
                f"{'/'.join(g['first_differences'][0]['medge'])}, NNCF {'/'.join(g['first_differences'][0]['nncf'])})")
        md += ["", f"medge's best ({r['medge_best']}) vs NNCF + OpenVINO: **{r['medge_best_vs_nncf']:.2f}x** "
               f"(NNCF latency / medge latency; >= 1 means medge is at least as fast; 95 % bootstrap interval "
               f"{lo:.2f}-{hi:.2f}x).", "",
               f"What OpenVINO's CPU plugin executes for medge's QDQ file and for NNCF's IR ({g['nodes'][0]} / "
               f"{g['nodes'][1]} nodes, {g['int8_kernels'][0]} / {g['int8_kernels'][1]} int8 kernels): {same}.", ""]
    md += [f"Peak: {THREADS} threads x {ghz} GHz ({clock_from}) x {per_cycle} int8 MAC/cycle per core ({isa}, best case); "
           "the share is MACs / median latency / peak (above 100 % the core boosts past the clock the machine reports). "
           "Benchmark models have random weights: their metric is agreement with FP32 pseudo-labels."]
    write_results("peers", data, "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
