"""Export matrix: both reference models and both benchmark models through `medge export` for cpu and tensorrt.

The claim "every model we ship or benchmark quantizes for both targets" is only worth something when it
goes through the real export path, so every row here is one `export.make_bundle.run_export` call (prepare
-> device preprocessing -> calibrate -> target recipe -> accuracy gate with float fallback -> FP16 variant
-> report -> atomic bundle), followed by `edge.inference.bundle.load_bundle` on the published bundle and a look
inside its INT8 graph to check the recipe actually landed there (activation type and zero points, bias
quantization, per-channel weight axes per op type).

Data:
* reference models (models/us_free_fluid, models/cxr_opacity): labelled calibration/validation folders
  from `models.build_bundles.make_set` with its CALIB_SEED/VAL_SEED and default sizes, i.e. the data the
  demo bundles are built and gated on.
* benchmark models (benchmarks/make_models.py, random weights): `bench_quantize.synthetic_images`
  saved as PNG (calibration 32, validation 48, disjoint seeds). There is no truth, so validation labels
  are FP32 pseudo-labels computed on the tensors export itself will see (`export.datasets.load_samples`
  with the spec's `edge.inference.preprocess.Preprocessor`, FP32 model on ONNX Runtime CPU): the gate then measures
  INT8 agreement with FP32. Classify: label = FP32 probability >= its median over the validation set.
  Segment: the spec threshold (written into a model.yaml next to a copy of the model) is the median FP32
  pixel probability, masks = FP32 probability >= it. Segment images are generated at the model's input
  size so the model-space mask maps to image pixels 1:1. The same folders serve both targets.

A row fails on any exception (its one-line error is in the table), a failed gate, a bundle that does not
load, or (tensorrt) an INT8 graph that is not TensorRT's form; the script then exits 1. Where a gate failed,
or passed only by keeping nodes in float, the plain INT8 model is re-evaluated with ONNX Runtime's fused CPU
int8 kernels, with exact QDQ arithmetic (no fusion) and with the AVX2 precision mode, which tells a loss of
the INT8 representation apart from a loss of this host's int8 kernels (u8s8 pairs saturating in int16
without VNNI).

    python -m benchmarks.export_matrix [--runs 15] [--only resnet18,unet,us-free-fluid,cxr-opacity]

Writes benchmarks/results/export_matrix.json and export_matrix.md.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
import yaml
from onnx import numpy_helper

from benchmarks.bench_quantize import synthetic_images
from benchmarks.make_models import write_models
from benchmarks.results_io import write_results
from edge.inference.backends.onnxruntime import cpu_session
from edge.inference.bundle import load_bundle
from edge.inference.preprocess import Preprocessor, PreprocessSpec
from edge.inference.tasks import TASK_KINDS, build_task
from export import datasets, evaluate
from export import quantize as Q
from export.evaluate import make_session
from export.make_bundle import ExportOptions, GateFailed, run_export, task_config
from export.report import machine
from models.build_bundles import CALIB_SEED, MODELS, VAL_SEED, make_set

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("cpu", "tensorrt")
N_REF_CALIB, N_REF_VAL = 64, 120  # models.build_bundles defaults: the demo bundles' data
N_BENCH_CALIB, N_BENCH_VAL = 32, 48
BENCH_CALIB_SEED, BENCH_VAL_SEED = 303, 404
CLASSIFY_IMAGE_HW = (300, 400)  # a frame that is letterboxed and area-resized, as on the device
NEGATIVE = "normal"  # a negative label name export accepts (edge.inference.tasks.classify.NEGATIVE_NAMES)
PSEUDO_LABELS = (
    "benchmark models have random weights, so their validation labels are FP32 pseudo-labels computed on the tensors "
    "export itself uses (export.datasets.load_samples + the spec's edge.inference.preprocess.Preprocessor, FP32 model on ONNX "
    "Runtime CPU); the gate measures INT8 agreement with FP32. Classify: label = FP32 probability >= its median over "
    f"the {N_BENCH_VAL} validation images. Segment: spec threshold = median FP32 pixel probability, mask = FP32 "
    "probability >= threshold (~half foreground). Reference models use their labelled synthetic sets.")


@dataclass
class Case:
    """One model with its calibration and validation folders (shared by both targets)."""

    name: str
    kind: str  # reference | benchmark
    task: str
    model: Path
    calib: Path
    val: Path
    data: str  # how the folders were made, for the report
    notes: dict


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))  # as the task decoders apply a sigmoid output (float32 in, float32 out)


def write_pngs(folder: Path, images: list[np.ndarray], prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        if not cv2.imwrite(str(folder / f"{prefix}_{i:05d}.png"), img):
            raise OSError(f"cannot write {folder / f'{prefix}_{i:05d}.png'}")


def fp32_outputs(model: Path, folder: Path, spec: dict) -> tuple[list[datasets.Sample], list[np.ndarray]]:
    """FP32 output of every validation input, on exactly the tensors export will evaluate."""
    pre = Preprocessor(PreprocessSpec.from_dict(dict(spec["preprocess"])))
    samples = datasets.load_samples(folder, pre, "validation")
    sess = make_session(model)
    in_name = sess.get_inputs()[0].name
    out_name = spec["outputs"][0]["name"]
    outs = [np.asarray(sess.run([out_name], {in_name: s.tensor})[0], np.float32) for s in samples]
    if spec["outputs"][0].get("activation") != "sigmoid":
        raise ValueError(f"{spec['name']}: pseudo-labels expect a sigmoid output")
    return samples, outs


def pseudo_label_classify(model: Path, val: Path) -> dict:
    spec = yaml.safe_load(model.with_name("model.yaml").read_text())
    samples, outs = fp32_outputs(model, val, spec)
    probs = np.array([float(_sigmoid(o.reshape(-1))[-1]) for o in outs])
    median = float(np.median(probs))
    labels = (probs >= median).astype(int)
    positive = spec["labels"][-1]
    with open(val / "labels.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file", "label"])
        w.writerows((s.key, positive if y else NEGATIVE) for s, y in zip(samples, labels, strict=True))
    # what export will read back must be exactly these labels
    vs = datasets.load_validation(val, "classify", Preprocessor(PreprocessSpec.from_dict(dict(spec["preprocess"]))),
                                  tuple(spec["labels"]))
    if not np.array_equal(np.asarray(vs.truth), labels):
        raise RuntimeError(f"{spec['name']}: labels.csv does not read back as the pseudo-labels")
    return {"median_fp32_probability": median, "positives": int(labels.sum()), "n": len(labels),
            "fp32_logit_range": [round(float(min(o.min() for o in outs)), 4), round(float(max(o.max() for o in outs)), 4)]}


def pseudo_label_segment(model: Path, val: Path) -> dict:
    spec_path = model.with_name("model.yaml")
    spec = yaml.safe_load(spec_path.read_text())
    samples, outs = fp32_outputs(model, val, spec)
    probs = [_sigmoid(o.reshape(o.shape[-2:])) for o in outs]
    thr = float(np.float32(np.median(np.concatenate([p.reshape(-1) for p in probs]))))  # exact in float32
    masks = [p >= thr for p in probs]
    for s, m in zip(samples, masks, strict=True):
        g = s.geometry
        if g.frame_size != g.model_size or g.pad_top or g.pad_left:
            raise RuntimeError(f"{s.key}: image is not at model size; the mask would not map 1:1")
        (val / "masks").mkdir(exist_ok=True)
        if not cv2.imwrite(str(val / "masks" / f"{s.key}.png"), m.astype(np.uint8) * np.uint8(255)):
            raise OSError(f"cannot write mask for {s.key}")
    spec["threshold"] = thr
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    vs = datasets.load_validation(val, "segment", Preprocessor(PreprocessSpec.from_dict(dict(spec["preprocess"]))),
                                  tuple(spec["labels"]))
    if not all(np.array_equal(a, b) for a, b in zip(vs.truth, masks, strict=True)):
        raise RuntimeError(f"{spec['name']}: masks do not read back as the pseudo-labels")
    fg = float(np.mean([m.mean() for m in masks]))
    return {"threshold": thr, "foreground_fraction": round(fg, 4), "n": len(masks)}


def benchmark_cases(work: Path, only: set[str] | None = None) -> list[Case]:
    paths = write_models(work / "models")
    cases = []
    for key, model in paths.items():
        if only and key not in only:
            continue
        spec = yaml.safe_load(model.with_name("model.yaml").read_text())
        task = spec["task"]
        size = tuple(spec["preprocess"]["size"])
        hw = CLASSIFY_IMAGE_HW if task == "classify" else size
        calib, val = work / key / "calib", work / key / "val"
        print(f"[{key}] writing {N_BENCH_CALIB} calibration and {N_BENCH_VAL} validation images {hw[0]}x{hw[1]}, "
              "FP32 pseudo-labels", file=sys.stderr)
        write_pngs(calib, synthetic_images(N_BENCH_CALIB, *hw, seed=BENCH_CALIB_SEED), "calib")
        write_pngs(val, synthetic_images(N_BENCH_VAL, *hw, seed=BENCH_VAL_SEED), "val")
        notes = pseudo_label_classify(model, val) if task == "classify" else pseudo_label_segment(model, val)
        cases.append(Case(key, "benchmark", task, model, calib, val,
                          f"synthetic_images {hw[0]}x{hw[1]}, calib {N_BENCH_CALIB} (seed {BENCH_CALIB_SEED}), "
                          f"val {N_BENCH_VAL} (seed {BENCH_VAL_SEED}), FP32 pseudo-labels", notes))
    return cases


def reference_cases(work: Path, only: set[str] | None = None) -> list[Case]:
    cases = []
    for name, (folder, kind) in MODELS.items():
        if only and name not in only:
            continue
        model = ROOT / "models" / folder / "model.onnx"
        task = yaml.safe_load(model.with_name("model.yaml").read_text())["task"]
        print(f"[{name}] making calibration ({N_REF_CALIB}) and validation ({N_REF_VAL}) sets", file=sys.stderr)
        calib = make_set(kind, work / name / "calib", N_REF_CALIB, CALIB_SEED)
        val = make_set(kind, work / name / "val", N_REF_VAL, VAL_SEED)
        cases.append(Case(name, "reference", task, model, calib, val,
                          f"models.datasets {kind}, calib {N_REF_CALIB} (seed {CALIB_SEED}), val {N_REF_VAL} "
                          f"(seed {VAL_SEED}), true labels", {}))
    return cases


def int8_graph_facts(path: Path) -> dict:
    """What the INT8 graph really contains: activation Q types/zero points, bias DQs, weight per-channel axes."""
    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    consumers: dict[str, list[str]] = defaultdict(list)
    for n in m.graph.node:
        for i in n.input:
            consumers[i].append(n.op_type)
    act_types: Counter = Counter()
    act_zp_nonzero = 0
    n_q = 0
    bias_int32 = 0
    axes: dict[str, set[int]] = defaultdict(set)
    per_tensor: Counter = Counter()
    weight_zp_nonzero = 0
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear":
            n_q += 1
            zp = numpy_helper.to_array(inits[n.input[2]]) if len(n.input) > 2 and n.input[2] in inits else None
            act_types["uint8" if zp is None else zp.dtype.name] += 1
            act_zp_nonzero += int(zp is not None and bool(np.any(zp)))
        elif n.op_type == "DequantizeLinear" and n.input[0] in inits:
            w = numpy_helper.to_array(inits[n.input[0]])
            if w.dtype == np.int32:
                bias_int32 += 1
                continue
            scale = inits.get(n.input[1])
            ops = consumers.get(n.output[0]) or ["?"]
            if scale is not None and len(scale.dims) == 1:
                axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
                for op in ops:
                    axes[op].add(axis if axis >= 0 else axis + w.ndim)
            else:
                for op in ops:
                    per_tensor[op] += 1
            if len(n.input) > 2 and n.input[2] in inits:
                weight_zp_nonzero += int(bool(np.any(numpy_helper.to_array(inits[n.input[2]]))))
    return {"activation_q": n_q, "activation_types": dict(act_types), "activation_zero_point_nonzero": act_zp_nonzero,
            "bias_int32_dq": bias_int32, "weight_per_channel_axes": {k: sorted(v) for k, v in sorted(axes.items())},
            "weight_per_tensor": dict(per_tensor), "weight_zero_point_nonzero": weight_zp_nonzero}


def tensorrt_problems(recipe: dict, g: dict) -> list[str]:
    """Ways the INT8 graph or its recorded recipe is not the form TensorRT's explicit quantization wants."""
    p = []
    if not (recipe.get("activation_symmetric") and recipe.get("activation_type") == "int8"):
        p.append("recipe activations are not symmetric int8")
    if recipe.get("quantize_bias"):
        p.append("recipe quantizes bias")
    if set(g["activation_types"]) - {"int8"}:
        p.append(f"activation Q types {g['activation_types']}")
    if g["activation_zero_point_nonzero"]:
        p.append(f"{g['activation_zero_point_nonzero']} activation zero points are not 0")
    if g["bias_int32_dq"]:
        p.append(f"{g['bias_int32_dq']} int32 bias DequantizeLinear")
    if g["weight_zero_point_nonzero"]:
        p.append(f"{g['weight_zero_point_nonzero']} weight zero points are not 0")
    for op, want in (("Conv", 0), ("ConvTranspose", 1)):
        got = g["weight_per_channel_axes"].get(op)
        if got and got != [want]:
            p.append(f"{op} weight per-channel axes {got}, want [{want}]")
        if g["weight_per_tensor"].get(op):
            p.append(f"{g['weight_per_tensor'][op]} {op} weight(s) per-tensor")
    return p


KERNEL_MODES = {  # how ONNX Runtime's CPU provider computes the same INT8 QDQ graph: (optimize, exact_int8)
    "cpu_kernels": (True, False),  # fused int8 kernels, ORT's default
    "exact_qdq": (False, False),  # no fusion: dequantize -> float op -> quantize, the arithmetic the QDQ graph specifies
    "x64quantprecision": (True, True),  # fused kernels, AVX2 precision mode
}


def kernel_diagnosis(case: Case, target: str, work: Path) -> dict:
    """For a failed gate: the plain target-recipe INT8 model's primary metric under each KERNEL_MODES entry.

    On an AVX2 host without VNNI, ONNX Runtime's u8s8 kernels multiply-add pairs into int16 with saturation;
    exact QDQ arithmetic (and TensorRT) do not. If the metric recovers without fusion, the loss is the
    host's kernels, not the INT8 representation.
    """

    d = work / "diagnosis" / f"{case.name}-{target}"
    d.mkdir(parents=True, exist_ok=True)
    spec = yaml.safe_load(case.model.with_name("model.yaml").read_text())
    pre_spec = PreprocessSpec.from_dict(dict(spec["preprocess"]))
    fp32, int8 = d / "fp32.onnx", d / "int8.onnx"
    io = Q.prepare_model(case.model, fp32, pre_spec)
    pre = Preprocessor(pre_spec)
    calib = [s.tensor for s in datasets.load_samples(case.calib, pre, "calibration")]
    vs = datasets.load_validation(case.val, case.task, pre, tuple(spec["labels"]))
    Q.quantize(fp32, int8, Q.recipe_for(target), calib, io["input"]["name"], d / "calibration.json")
    task = build_task(task_config(spec, tuple(spec["labels"]), spec["outputs"]))
    primary = TASK_KINDS[case.task].primary_metric

    def run(path: Path, optimize: bool, exact_int8: bool) -> tuple[float | None, list[np.ndarray]]:
        sess = cpu_session(path, 2, exact_int8=exact_int8, optimize=optimize)
        name, outs = sess.get_inputs()[0].name, [o.name for o in sess.get_outputs()]
        res = [dict(zip(outs, sess.run(None, {name: s.tensor}), strict=True)) for s in vs.samples]
        pred = evaluate.predictions(task, vs, res)  # decoded by the device's task code, as the gate does
        return evaluate.score(vs, pred, task)[primary], [np.asarray(r[spec["outputs"][0]["name"]], np.float32) for r in res]

    m_fp32, ref = run(fp32, True, False)
    res = {"recipe": "plain " + target + " recipe (no speed rule, no fallback)", "primary_metric": primary,
           "fp32": m_fp32}
    for mode, (optimize, exact) in KERNEL_MODES.items():
        m, ys = run(int8, optimize, exact)
        err = np.concatenate([(y - r).reshape(-1) for y, r in zip(ys, ref, strict=True)])
        spread = float(np.concatenate([r.reshape(-1) for r in ref]).std()) or 1.0
        res[mode] = {"metric": m, "output_rms_error_over_fp32_std": round(float(np.sqrt(np.mean(err ** 2))) / spread, 4)}
    return res


def one_line(e: BaseException, work: Path) -> str:
    text = (str(e).strip().splitlines() or [""])[0].replace(str(work), "<tmp>").replace(str(ROOT) + os.sep, "")
    return f"{type(e).__name__}: {text}"[:400]


def run_row(case: Case, target: str, work: Path, runs: int) -> dict:
    row: dict = {"model": case.name, "kind": case.kind, "task": case.task, "target": target, "passed": False}
    out = work / "bundles" / f"{case.name}-{target}"
    logs: list[str] = []

    def log(msg: str) -> None:
        logs.append(msg)
        print(f"[{case.name}/{target}] {msg}", file=sys.stderr)

    t0 = time.perf_counter()
    try:
        res = run_export(ExportOptions(model=case.model, calib=case.calib, val=case.val, out=out, target=target,
                                       latency_runs=runs), log=log)
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        g = res.gate
        pm = g["primary_metric"]
        bundle = load_bundle(out)
        recipe = dict(bundle.manifest.variants["int8"].recipe)
        facts = int8_graph_facts(bundle.model_path("int8"))
        speed_rule = json.loads((out / "report.json").read_text()).get("speed_rule") or {}
        row.update(primary_metric=pm, fp32=g["fp32"][pm], int8=g["int8"][pm], drop=g["drop"], budget=g["budget"],
                   gate_passed=g["passed"], agreement=g["agreement"], float_nodes=res.float_nodes,
                   fallback_nodes=list(recipe.get("fallback_nodes") or []), speed_rule=speed_rule,
                   speedup_int8=res.latency["speedup_int8"],
                   latency_ms={k: round(v["median_ms"], 3) for k, v in res.latency["variants"].items()},
                   variants=sorted(bundle.manifest.variants), fp16="fp16" in bundle.manifest.variants,
                   bundle_loads=True, recipe={k: recipe.get(k) for k in ("activation_type", "activation_symmetric",
                                                                         "weight_type", "weight_symmetric",
                                                                         "quantize_bias", "per_channel",
                                                                         "per_channel_axes")},
                   int8_graph=facts, warnings=[w.replace(str(work), "<tmp>") for w in res.warnings])
        problems = tensorrt_problems(recipe, facts) if target == "tensorrt" else []
        row["recipe_problems"] = problems
        row["passed"] = bool(g["passed"] and not problems)
        if problems:
            row["error"] = "INT8 graph is not TensorRT's form: " + "; ".join(problems)
    except Exception as e:  # any failure is a row of the table, not a crash of the matrix
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        row["error"] = one_line(e, work)
        gate_lines = [m for m in logs if m.startswith("gate: ")]
        if gate_lines:
            row["last_gate_log"] = gate_lines[-1]
        first = re.match(r"gate: (\w+) FP32 ([\d.]+) ", gate_lines[-1]) if gate_lines else None
        final = re.search(r"(\w+) drop ([\d.]+) exceeds the budget ([\d.]+) even with \d+ node\(s\) kept in float \(([^)]*)\)",
                          str(e))
        if isinstance(e, GateFailed) and first and final:  # the gate's final state, as a passing row shows it
            fp32, drop = float(first.group(2)), float(final.group(2))
            row.update(primary_metric=final.group(1), fp32=fp32, int8=round(fp32 - drop, 5), drop=drop,
                       budget=float(final.group(3)), gate_passed=False,
                       float_nodes=[n for n in final.group(4).split(", ") if n and n != "none"])
        log(f"FAILED: {row['error']}")
    if row.get("gate_passed") is False or row.get("fallback_nodes"):  # the gate failed, or passed only by fallback
        try:
            row["diagnosis"] = kernel_diagnosis(case, target, work)
            log(f"diagnosis: {json.dumps(row['diagnosis'])}")
        except Exception as e:  # the diagnosis is extra; its failure must not hide the row's own result
            row["diagnosis_error"] = one_line(e, work)
    return row


def _f(v, fmt: str = "{:.4f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def float_cell(r: dict) -> str:
    """Nodes kept in float and why: the cpu speed rule (measured int8 ms all quantized vs narrow convs float) or the
    accuracy fallback."""
    if not r.get("float_nodes"):
        return "-"
    fb = set(r.get("fallback_nodes") or [])
    if "speedup_int8" not in r:  # failed gate: everything listed was tried by the fallback
        return ", ".join(r["float_nodes"]) + " (fallback, not enough)"
    parts = []
    speed = [n for n in r["float_nodes"] if n not in fb]
    if speed:
        sr = r.get("speed_rule") or {}
        ms = (f": INT8 {sr['int8_ms_narrow_float']:.1f} ms with them float vs {sr['int8_ms_all_quantized']:.1f} ms all int8"
              if sr.get("int8_ms_narrow_float") is not None else "")
        parts.append(f"{', '.join(speed)} (speed rule{ms})")
    if fb:
        parts.append(f"{', '.join(n for n in r['float_nodes'] if n in fb)} (fallback)")
    return "; ".join(parts)


def recipe_cell(r: dict) -> str:
    g = r.get("int8_graph")
    if not g:
        return "-"
    types = "/".join(sorted(g["activation_types"])) or "none"
    zp = "zp 0" if not g["activation_zero_point_nonzero"] else f"zp!=0 in {g['activation_zero_point_nonzero']}"
    sym = "sym" if r["recipe"]["activation_symmetric"] else "asym"
    bias = "bias float" if not g["bias_int32_dq"] else f"bias int32 x{g['bias_int32_dq']}"
    axes = ", ".join(f"{op}:{'/'.join(map(str, a))}" for op, a in g["weight_per_channel_axes"].items()) or "none"
    pt = "; per-tensor " + ", ".join(f"{op} x{n}" for op, n in g["weight_per_tensor"].items()) if g["weight_per_tensor"] else ""
    return f"act {types} {sym} ({g['activation_q']} Q, {zp}); {bias}; per-channel {axes}{pt}"


def render_md(result: dict) -> str:
    m = result["machine"]
    isa = "/".join(m["isa"]) or "no AVX2"
    lines = [
        "# Export matrix: 4 models x cpu/tensorrt through `medge export`", "",
        f"{result['date']}, {m['cpu']} ({isa}), {result['cpus']} CPUs (shared machine), onnxruntime {m['onnxruntime']}, "
        f"python {m['python']}. Load average at start: {result['load_avg'][0]:.2f}. Total {result['total_s']:.0f} s.", "",
        "Each row is one `export.make_bundle.run_export` (default accuracy budget, float fallback allowed, "
        f"{result['latency_runs']} latency runs) followed by `edge.inference.bundle.load_bundle` on the published "
        "bundle and a look "
        "inside its INT8 graph (last column: activation QuantizeLinear types and zero points, int32 bias "
        "DequantizeLinear, per-channel weight axes by consumer op).", "",
        "Data:",
    ]
    for name, c in result["cases"].items():
        lines.append(f"- {name}: {c['data']}" + (f"; {_notes(c['notes'])}" if c["notes"] else ""))
    lines += ["", f"Pseudo-labels: {result['pseudo_labels']}", "",
              "INT8 speed-up is export's own side-by-side CPU measurement. For target tensorrt it is for reference only: "
              "the symmetric S8S8 form TensorRT wants runs slowly on ONNX Runtime's CPU provider by design.", "",
              "| model | task | target | metric | FP32 | INT8 | drop | budget | gate | float nodes | INT8 speed-up (CPU) | "
              "fp16 variant | INT8 graph (checked) | bundle loads | wall s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        if "primary_metric" in r and "speedup_int8" not in r:  # gate failed: no bundle, nothing measured after it
            lines.append(f"| {r['model']} | {r['task']} | {r['target']} | {r['primary_metric']} | {_f(r['fp32'])} | "
                         f"{_f(r['int8'])} | {_f(r['drop'])} | {r['budget']} | **FAIL** | "
                         f"{float_cell(r)} | - | - | - | no bundle | {r['wall_s']:.0f} |")
            continue
        if "primary_metric" not in r:
            lines.append(f"| {r['model']} | {r['task']} | {r['target']} | - | - | - | - | - | **FAIL** | - | - | - | - | - | "
                         f"{r['wall_s']:.0f} |")
            continue
        gate = "pass" if r["passed"] else "**FAIL**"
        spd = f"{r['speedup_int8']:.2f}x" + (" (ref.)" if r["target"] != "cpu" else "")
        lines.append(
            f"| {r['model']} | {r['task']} | {r['target']} | {r['primary_metric']} | {_f(r['fp32'])} | {_f(r['int8'])} | "
            f"{_f(r['drop'])} | {r['budget']} | {gate} | {float_cell(r)} | {spd} | "
            f"{'yes' if r['fp16'] else 'no'} | {recipe_cell(r)} | {'yes' if r['bundle_loads'] else 'no'} | {r['wall_s']:.0f} |")
    failed = [r for r in result["rows"] if not r["passed"]]
    if failed:
        lines += ["", "Failed rows:", ""]
        for r in failed:
            extra = f" (last gate: {r['last_gate_log'][6:]})" if r.get("last_gate_log") else ""
            lines.append(f"- {r['model']} / {r['target']}: {r.get('error', 'gate failed')}{extra}")
    diag = [r for r in result["rows"] if r.get("diagnosis")]
    if diag:
        lines += ["", "Diagnosis of every gate that failed or passed only through the float fallback: the plain target-recipe "
                  "INT8 model (no speed rule, no fallback) on the same validation set, evaluated three ways on ONNX Runtime's "
                  "CPU provider: with its fused int8 kernels (what export's gate runs), with graph optimisation off (exact "
                  "QDQ arithmetic: dequantize, float op, quantize, i.e. what the QDQ graph specifies; TensorRT does not run "
                  "these CPU kernels), and with the fused kernels in AVX2 precision mode (`session.x64quantprecision=1`). "
                  "Error = RMS(INT8 - FP32 output) / std(FP32 output).", "",
                  "| model | target | metric | FP32 | INT8 CPU kernels (error) | INT8 exact QDQ (error) | "
                  "INT8 x64quantprecision (error) |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in diag:
            d = r["diagnosis"]
            cells = [f"{_f(d[k]['metric'])} ({d[k]['output_rms_error_over_fp32_std']:.3f})" for k in KERNEL_MODES]
            lines.append(f"| {r['model']} | {r['target']} | {d['primary_metric']} | {_f(d['fp32'])} | "
                         + " | ".join(cells) + " |")
    warned = [r for r in result["rows"] if r.get("warnings")]
    if warned:
        lines += ["", "Export warnings:", ""] + [f"- {r['model']} / {r['target']}: {w}" for r in warned for w in r["warnings"]]
    n = len(result["rows"])
    lines += ["", f"Result: all {n} rows pass." if result["passed"] else f"Result: {len(failed)} of {n} rows FAIL."]
    return "\n".join(lines) + "\n"


def _notes(n: dict) -> str:
    if "threshold" in n:
        return f"spec threshold {n['threshold']:.6f} (median FP32 pixel probability), foreground {n['foreground_fraction']:.1%}"
    if "median_fp32_probability" in n:
        return (f"label threshold {n['median_fp32_probability']:.8f} (median FP32 probability), {n['positives']}/{n['n']} "
                f"positive, FP32 logits {n['fp32_logit_range'][0]} to {n['fp32_logit_range'][1]}")
    return json.dumps(n)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15, help="latency runs per variant inside export")
    ap.add_argument("--only", help="comma-separated model names (resnet18, unet, us-free-fluid, cxr-opacity); "
                                   "results are not written then")
    a = ap.parse_args(argv)
    only = set(a.only.split(",")) if a.only else None
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = []
    with tempfile.TemporaryDirectory(prefix="medge-export-matrix-") as w:
        work = Path(w)
        cases: list[Case] = []
        for build in (reference_cases, benchmark_cases):
            try:
                cases += build(work, only)
            except Exception as e:  # a set that cannot be built fails its models' rows
                names = ([n for n in MODELS] if build is reference_cases else ["resnet18", "unet"])
                for n in names:
                    if only and n not in only:
                        continue
                    rows += [{"model": n, "kind": "?", "task": "?", "target": t, "passed": False, "wall_s": 0.0,
                              "error": "data preparation failed: " + one_line(e, work)} for t in TARGETS]
        for c in cases:
            for t in TARGETS:
                rows.append(run_row(c, t, work, a.runs))
    total = time.perf_counter() - t_start
    result = {"benchmark": "export_matrix", "date": date, "machine": machine(), "cpus": os.cpu_count(),
              "load_avg": list(load0), "latency_runs": a.runs, "pseudo_labels": PSEUDO_LABELS,
              "cases": {c.name: {"kind": c.kind, "task": c.task, "data": c.data, "notes": c.notes} for c in cases},
              "rows": rows, "total_s": round(total, 1), "passed": bool(rows) and all(r["passed"] for r in rows)}
    md = render_md(result)
    if only is None:
        write_results("export_matrix", result, md)
    print(md)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
