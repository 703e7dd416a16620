"""`medge export quantize`: model + calibration (+ validation, + spec) -> a verified, hashed bundle.

The steps are deliberately in one place so the order is visible: resolve the spec (`export.spec`: flags,
spec file, the graph itself), pin and prepare the FP32 graph, build the device Preprocessor from the spec
that goes into the manifest, calibrate, quantize with the target's recipe, gate on clinical metrics (or,
without a labelled validation set, on agreement with FP32) with float fallback, measure latency, write
everything into a staging folder and publish it atomically. Any failure before the publish leaves
nothing behind.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge.durable_files import write_atomic
from edge.errors import MedgeError
from edge.frames import Frame
from edge.inference.bundle import SCHEMA_VERSION, load_bundle, sha256_file
from edge.inference.preprocess import Preprocessor
from edge.inference.reference import ReferenceStats, build_reference, peak_confidence
from edge.inference.tasks import TASK_KINDS, Output, Task, TaskConfig, build_task

from . import datasets, evaluate, explain, quantize, report, runtimes, sensitivity
from .bundle_writer import finalize_manifest, staging
from .spec import SPEC_FILE, ResolvedSpec, SpecFlags, SpecResolver
from .speed import choose_narrow_exclusions


class GateFailed(MedgeError):
    """The INT8 model cannot be brought inside the accuracy budget."""


class WeakModel(GateFailed):
    """The FP32 model itself is at chance level on labelled data: its INT8 copy agrees with it perfectly, so
    the drop budget alone would pass a model that never learnt the task."""


MIN_USEFUL_SPEEDUP = 1.1  # below this, int8 costs accuracy for a speed-up within measurement noise


@dataclass
class ExportOptions:
    model: Path
    calib: Path
    val: Path | None  # None: the gate measures agreement with FP32 on the calibration inputs
    out: Path | None  # None: <name>-<version>-<target> next to the model
    target: str = "cpu"
    task: str | None = None  # shorthand for spec_flags.task
    spec: Path | None = None  # default: model.yaml next to the model, if there is one
    spec_flags: SpecFlags = field(default_factory=SpecFlags)
    write_spec: Path | None = None  # also save the resolved spec here
    method: str = "minmax"
    max_drop: float | None = None
    input_shape: str | None = None
    max_fallback: int = 8
    video_step: int = 10
    latency_runs: int = 30
    fp16: bool | None = None  # None: only for GPU targets
    sign_key: Path | None = None
    force: bool = False
    allow_weak_model: bool = False  # export even when FP32 is below the task kind's floor (recorded in the gate)
    min_subgroup_samples: int = evaluate.DEFAULT_MIN_SUBGROUP_SAMPLES  # smaller subgroups are reported, not gated


@dataclass
class ExportResult:
    out: Path
    gate: dict[str, Any]
    latency: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    float_nodes: list[str] = field(default_factory=list)
    spec: ResolvedSpec | None = None


def task_config(spec: dict[str, Any], labels: tuple[str, ...], out_specs: list[dict[str, Any]]) -> TaskConfig:
    """The decisions the manifest will describe, so the gate decodes with the device's task code."""
    rb = spec.get("review_band", [0.4, 0.6])
    return TaskConfig(task=spec["task"], labels=labels,
                      outputs=tuple(Output(str(o["name"]), str(o.get("activation", "none"))) for o in out_specs),
                      threshold=float(spec.get("threshold", 0.5)), review_band=(float(rb[0]), float(rb[1])),
                      urgent_labels=tuple(str(x) for x in spec.get("urgent_labels") or ()),
                      postprocess=dict(spec.get("postprocess") or {}))


def run_export(opts: ExportOptions, log: Callable[[str], None] = print,
               progress: Callable[[str, int], Callable[[int], None]] | None = None) -> ExportResult:
    recipe = quantize.recipe_for(opts.target, opts.method)
    input_shape = quantize.parse_shape(opts.input_shape)
    flags = opts.spec_flags if opts.task is None else replace(opts.spec_flags, task=opts.task)
    resolver = SpecResolver(opts.model, quantize.load_onnx(opts.model), opts.spec, flags, input_shape, opts.val)
    pre_spec = resolver.preprocess()
    out = Path(opts.out) if opts.out is not None else resolver.default_out(opts.target)
    for what, folder in (("calibration", opts.calib), ("validation", opts.val)):
        if folder is not None:
            datasets.list_inputs(folder, what)  # fail fast, before any heavy work

    with tempfile.TemporaryDirectory(prefix="medge-export-") as scratch_s, staging(out, opts.force) as stage:
        scratch = Path(scratch_s)
        fp32 = stage / "model.fp32.onnx"
        log(f"preparing {opts.model} (pin dims, shape inference, basic graph optimisation)")
        io = quantize.prepare_model(opts.model, fp32, pre_spec, input_shape)
        quantize.ensure_node_names(fp32)
        resolved = resolver.complete(onnx.load(str(fp32)), io)
        use = resolver.intended_use(datasets.list_inputs(opts.calib, "calibration"))
        log("intended use (what the device will let this model read):\n"
            + "\n".join(f"  {line}" for line in use.lines()))
        spec = resolved.spec
        log("model spec used:\n" + "\n".join(f"  {line}" for line in resolved.text().splitlines()))
        for n in resolved.notes:
            log(f"note: {n}")
        spec_text = resolved.text()
        (stage / SPEC_FILE).write_text(spec_text)
        if opts.write_spec:
            write_atomic(Path(opts.write_spec), spec_text.encode(), make_parents=True)
            log(f"spec saved to {opts.write_spec} (export again with --spec {opts.write_spec})")
        task = spec["task"]
        labels = tuple(spec["labels"])
        budget = float(opts.max_drop if opts.max_drop is not None else TASK_KINDS[task].default_max_drop)
        out_specs = [{**next(o for o in io["outputs"] if o["name"] == d["name"]), "activation": d["activation"]}
                     for d in spec["outputs"]]

        explanation, fp32_plain = _explanation(task, fp32, out_specs, scratch, log)

        pre = Preprocessor(pre_spec)
        calib = datasets.load_samples(opts.calib, pre, "calibration", opts.video_step,
                                      progress("calibration", len(datasets.list_inputs(opts.calib, "calibration")))
                                      if progress else None)
        cal_summary, warnings = datasets.calibration_summary(calib)
        for w in warnings:
            log(f"WARNING: {w}")
        tspec = build_task(task_config(spec, labels, out_specs))
        if opts.val is not None:
            vs = datasets.load_validation(opts.val, task, pre, labels, opts.video_step,
                                          progress("validation", len(datasets.list_inputs(opts.val, "validation")))
                                          if progress else None)
            gate_warnings = datasets.overlap_warnings(opts.calib, opts.val)
            for w in gate_warnings:
                log(f"WARNING: {w}")
        else:  # truth filled in from FP32's own decisions once FP32 has run
            gate_warnings = []
            vs = datasets.ValidationSet(task=task, samples=calib)
            log("no --val: the gate measures how far INT8 departs from FP32's own decisions on the calibration "
                "inputs (agreement, not clinical accuracy; pass --val for a labelled set)")

        # FP32 first: a model at chance level is refused before calibration and quantization are paid for
        fp32_outputs = evaluate.run_outputs(fp32, vs)  # the gate's reference, and the drift reference's confidences
        ref = evaluate.predictions(tspec, vs, fp32_outputs)
        if opts.val is None:
            vs.truth = evaluate.truth_from(ref, tspec)
        sanity = evaluate.sanity(vs, tspec, ref, labelled=opts.val is not None)
        log(f"gate sanity: {sanity.text()}")
        if sanity.weak and not opts.allow_weak_model:
            raise WeakModel(sanity.refusal(opts.model))
        for w in sanity.warnings():
            gate_warnings.append(w)
            log(f"WARNING: {w}")
        tensors = [s.tensor for s in calib]
        in_name = io["input"]["name"]
        cache = scratch / "calibration.json"
        int8 = scratch / "int8.onnx"
        log(f"calibrating ({len(tensors)} inputs, {opts.method}) and quantizing for {opts.target}")
        speed_rule: dict = {}
        if opts.target == "cpu":
            recipe, speed_rule = choose_narrow_exclusions(fp32, recipe, tensors, in_name, cache, scratch)
            for conv, why in speed_rule.get("decisions", {}).items():
                log(f"narrow conv {conv}: {why}")
        quantize.quantize(fp32, int8, recipe, tensors, in_name, cache)

        log(f"evaluating FP32 and INT8 on {len(vs.samples)} {'validation' if opts.val else 'calibration'} inputs")
        exact = recipe.exact_int8  # evaluate and time with the device's session settings for this recipe
        res = evaluate.gate(vs, tspec, ref, evaluate.predict(int8, vs, tspec, exact), budget, opts.min_subgroup_samples)
        log(f"gate: {res.primary} FP32 {_f(res.fp32[res.primary])} INT8 {_f(res.int8[res.primary])} "
            f"{report.drop_text(res.drop)} (budget {budget}){res.subgroup_summary()} -> {'pass' if res.passed else 'fail'}")
        x0 = vs.samples[0].tensor
        first_lat = sensitivity.quick_latency(fp32, int8, x0, exact_int8=exact)
        steps: list[sensitivity.FallbackStep] = [sensitivity.FallbackStep(0, None, res.deciding_drop, res.passed, *first_lat,
                                                                          res.to_dict())]
        ranking: list[dict] = []
        if not res.passed:
            errs = sensitivity.node_errors(fp32, int8, tensors, in_name)
            ranking = [{"node": e.node, "op_type": e.op_type, "added_error": round(e.added_error, 6),
                        "output_error": round(e.output_error, 6)} for e in errs[:20]]
            log("most sensitive nodes: " + ", ".join(f"{e.node} ({e.added_error:.2e})" for e in errs[:5]))
            state = {"res": res}

            def attempt(nodes: list[str]) -> tuple[float, bool, float, float, dict]:
                r = recipe.with_fallback(nodes)
                cand = scratch / f"int8-{len(nodes)}.onnx"
                quantize.quantize(fp32, cand, r, tensors, in_name, cache)
                g = evaluate.gate(vs, tspec, ref, evaluate.predict(cand, vs, tspec, exact), budget, opts.min_subgroup_samples)
                state.update(res=g, path=cand, recipe=r)
                return (g.deciding_drop, g.passed, *sensitivity.quick_latency(fp32, cand, x0, exact_int8=exact), g.to_dict())

            more, kept = sensitivity.fallback_loop([e.node for e in errs], attempt, opts.max_fallback, log)
            steps += more
            res = state["res"]
            if not res.passed:
                raise GateFailed(
                    f"{opts.model}: accuracy gate failed: {res.failures()} exceeds the budget {budget} "
                    f"even with {len(kept)} node(s) kept in float ({', '.join(kept) or 'none'}); improve the "
                    "calibration set, raise --max-drop, or allow more steps with --max-fallback")
            int8, recipe = state["path"], state["recipe"]
        shutil.copyfile(int8, stage / "model.int8.onnx")
        if explanation.kind == "cam":
            explanation = _gate_explanation(explanation, stage / "model.int8.onnx", vs, tspec, ref, fp32_outputs, exact,
                                            gate_warnings, log)
        runtime_files: dict[str, str] = {}
        gates = {"onnxruntime": res}
        ov_file = _openvino_candidate(opts, recipe, fp32, tensors, in_name, cache, scratch, vs, tspec, ref, budget, log)
        if ov_file is not None:
            path, gates["openvino"], r_ov = ov_file
            shutil.copyfile(path, stage / OPENVINO_INT8)
            runtime_files["openvino"] = OPENVINO_INT8
        gates = _gate_on_runtimes(opts, vs, tspec, ref, int8, exact, budget, gates, log)

        variants = {"fp32": {"file": "model.fp32.onnx", "precision": "fp32", "recipe": {}},
                    "int8": {"file": "model.int8.onnx", "precision": "int8", "recipe": recipe.to_dict()}}
        if runtime_files:
            variants["int8"]["runtime_files"] = runtime_files
            variants["int8"]["runtime_recipes"] = {"openvino": r_ov}
        if opts.fp16 if opts.fp16 is not None else opts.target != "cpu":
            log("writing the FP16 variant (GPU targets)")
            quantize.to_fp16(fp32, stage / "model.fp16.onnx")
            variants["fp16"] = {"file": "model.fp16.onnx", "precision": "fp16", "recipe": {"keep_io_types": True}}

        log(f"measuring latency FP32 vs INT8 side by side on {', '.join(gates)} ({opts.latency_runs} runs each)")
        timed: dict[str, Path | tuple[str, Path]] = {"fp32": stage / "model.fp32.onnx", "int8": stage / "model.int8.onnx"}
        for rt in gates:
            if rt != "onnxruntime":
                timed.update({f"fp32@{rt}": (rt, stage / "model.fp32.onnx"),
                              f"int8@{rt}": (rt, stage / runtime_files.get(rt, "model.int8.onnx"))})
        if fp32_plain is not None:  # what the explanation output costs: the same files without it, same loop
            quantize.quantize(fp32_plain, scratch / "int8.plain.onnx", recipe, tensors, in_name, cache)
            timed.update({"fp32 without cam": fp32_plain, "int8 without cam": scratch / "int8.plain.onnx"})
        lat = report.latency_side_by_side(timed, x0, runs=opts.latency_runs, exact_int8=exact)
        if fp32_plain is not None:
            cost = {k: round(lat[k]["median_ms"], 3) for k in ("fp32", "fp32 without cam", "int8", "int8 without cam")}
            cost["int8_cost_pct"] = round(100 * (lat["int8"]["median_ms"] / lat["int8 without cam"]["median_ms"] - 1), 1)
            explanation.extra["latency_ms"] = cost
            log(f"explanation map cost: INT8 {cost['int8']} ms with, {cost['int8 without cam']} ms without "
                f"({cost['int8_cost_pct']:+.1f} %)")
        latency = {"machine": report.machine(), "threads": 2, "runs": opts.latency_runs, "variants": lat,
                   "speedup_int8": round(lat["fp32"]["median_ms"] / lat["int8"]["median_ms"], 3)}
        if opts.target == "cpu" and latency["speedup_int8"] < MIN_USEFUL_SPEEDUP:
            isa = "/".join(latency["machine"].get("isa", [])) or "no AVX2"
            latency["warning"] = (f"INT8 is not meaningfully faster than FP32 on this machine ({latency['speedup_int8']:.2f}x, "
                                  f"CPU {isa}): int8 kernels gain little without VNNI or on narrow layers. Measure on the "
                                  "device's CPU class before choosing; a profile can run the fp32 variant (variant: fp32)")
            warnings.append(latency["warning"])
            log(f"WARNING: {latency['warning']}")
        offered = [rt for rt, g in gates.items() if g.passed]
        by_runtime = {rt: {"passed": g.passed, "file": runtime_files.get(rt, "model.int8.onnx"),
                           "primary_metric": g.primary, "int8": _r(g.int8[g.primary]),
                           "drop": _r(g.drop), "agreement": _r(g.agreement),
                           "fp32_ms": round(lat["fp32" if rt == "onnxruntime" else f"fp32@{rt}"]["median_ms"], 3),
                           "int8_ms": round(lat["int8" if rt == "onnxruntime" else f"int8@{rt}"]["median_ms"], 3)}
                      for rt, g in gates.items()}
        gate = {**res.to_dict(), "measured_on": "onnxruntime", "runtimes": by_runtime,
                "reference": "labels" if opts.val is not None else "fp32",
                "evaluated_on": f"{'validation' if opts.val is not None else 'calibration'} ({len(vs.samples)} inputs)",
                "sanity": sanity.to_dict(), "weak_model_allowed": sanity.weak, "warnings": gate_warnings}
        created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        provenance = _provenance(opts, spec_text, created)
        rep = {"name": str(spec["name"]), "version": str(spec["version"]), "task": task, "target": opts.target,
               "speed_rule": speed_rule, "gate": gate, "latency": latency, "recipe": recipe.to_dict(), "calibration": cal_summary,
               "fallback": {"ranking": ranking, "steps": [s.to_dict() for s in steps]}, "provenance": provenance,
               "explanation": explanation.to_dict()}
        report.write_reports(stage, rep)
        log("reference statistics for drift monitoring (calibration tensors, FP32 confidences)")
        reference = _reference(fp32_outputs, calib, vs, tspec, opts.val is not None)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "name": str(spec["name"]),
            "version": str(spec["version"]),
            "task": task,
            "description": str(spec.get("description") or ""),
            "labels": list(labels),
            "threshold": float(spec.get("threshold", 0.5)),
            "review_band": [float(v) for v in spec.get("review_band", [0.4, 0.6])],
            "urgent_labels": [str(v) for v in spec.get("urgent_labels") or []],
            "codes": dict(spec.get("codes") or {}),
            "input": io["input"],
            "outputs": out_specs,
            "preprocess": pre_spec.to_dict(),
            "preprocess_sha256": pre_spec.sha256(),
            "postprocess": dict(spec.get("postprocess") or {}),
            "target": opts.target,
            "variants": variants,
            "default_variant": "int8",
            "metrics": {"gate": gate, "latency_ms": {k: round(v["median_ms"], 3) for k, v in lat.items()},
                        "speedup_int8": latency["speedup_int8"]},
            "calibration": cal_summary,
            "provenance": provenance,
            "intended_use": use.use.to_dict(),
            "runtimes": offered,
            "reference": reference.to_dict(),
            "explanation": explanation.to_dict(),
        }
        finalize_manifest(stage, manifest)
        load_bundle(stage)  # what we publish must be exactly what the device accepts
        if opts.sign_key:
            from .sign import sign_bundle

            sign_bundle(stage, opts.sign_key)
    float_nodes = list(recipe.nodes_to_exclude)
    return ExportResult(out=out, gate=gate, latency=latency, warnings=warnings + gate_warnings, float_nodes=float_nodes,
                        spec=resolved)


OPENVINO_INT8 = "model.int8.openvino.onnx"


def _explanation(task: str, fp32: Path, out_specs: list[dict[str, Any]], scratch: Path,
                 log: Callable[[str], None]) -> tuple[explain.Explanation, Path | None]:
    """Which explanation the bundle provides; for a classifier with a poolable head, the CAM output is added
    to the FP32 file before calibration (so it is quantized and gated with the rest). Returns the FP32 file
    without it too, to time what it costs."""
    if task != "classify":
        what = "the mask is its own explanation" if task == "segment" else "the boxes are their own explanation"
        return explain.Explanation("mask" if task == "segment" else "boxes", what), None
    plain = scratch / "fp32.plain.onnx"
    shutil.copyfile(fp32, plain)
    shape = out_specs[0].get("shape") or []
    n = int(np.prod([d for d in shape[1:] if isinstance(d, int) and d > 0])) if len(shape) > 1 else 1
    e = explain.add_cam(fp32, str(out_specs[0]["name"]), n)
    log(f"explanation: class-activation map ({e.method}, output {e.output} {e.shape})" if e.kind == "cam"
        else f"explanation: none ({e.reason})")
    return e, plain if e.kind == "cam" else None


def _gate_explanation(e: explain.Explanation, int8: Path, vs: datasets.ValidationSet, task: Task,
                      ref: evaluate.Predictions, fp32_outputs: list[dict[str, np.ndarray]], exact: bool,
                      warnings: list[str], log: Callable[[str], None]) -> explain.Explanation:
    """INT8's maps against FP32's on the samples FP32 calls positive (all, when fewer than 5 are): a map that
    departs from FP32's is not shipped (the bundle then says why), the classification itself is unaffected."""
    pos = [i for i, d in enumerate(evaluate.decisions(ref, task)) if d]
    idx = pos if len(pos) >= 5 else list(range(len(vs.samples)))
    sub = datasets.ValidationSet(task=vs.task, samples=[vs.samples[i] for i in idx])
    out8 = evaluate.run_outputs(int8, sub, exact)
    agree = explain.agreement([fp32_outputs[i][e.output] for i in idx], [o[e.output] for o in out8])
    log(f"explanation gate: INT8 vs FP32 maps r = {agree['correlation']:.3f}, hottest cell within one cell in "
        f"{100 * agree['peak_agreement']:.0f} % ({agree['samples']} samples; needs r >= {explain.MIN_CORRELATION})")
    if agree["correlation"] < explain.MIN_CORRELATION:
        msg = (f"explanation map withheld: INT8's map departs from FP32's (r = {agree['correlation']:.3f} < "
               f"{explain.MIN_CORRELATION}); findings carry no heatmap")
        warnings.append(msg)
        log(f"WARNING: {msg}")
        return explain.Explanation("none", msg)
    e.extra["gate"] = agree
    return e


def _openvino_candidate(opts: ExportOptions, recipe: quantize.Recipe, fp32: Path, tensors: list, in_name: str,
                        cache: Path, scratch: Path, vs: datasets.ValidationSet, task: Task, ref: evaluate.Predictions,
                        budget: float, log: Callable[[str], None]):
    """OpenVINO's own INT8 file, by rule, never by timing: the float nodes of the common file are decisions
    about ONNX Runtime (its narrow-conv speed rule; its accuracy fallback, which runs ORT's kernels), and
    OpenVINO runs int8 where ORT does not pay and rounds differently. So try, in order, everything in int8,
    then only the common file's accuracy-fallback nodes in float; the first that passes the gate on
    OpenVINO is its file. Both use 8-bit weights except in the layers that read the input (7-bit:
    `quantize.narrow_first_layer_weights`, NNCF's overflow rule; the common file's 7-bit weights everywhere
    cost the benchmark U-Net its gate), quantize activations whose range crosses zero to symmetric int8 as
    NNCF does (`symmetric_signed_activations`), give a Concat's inputs one scale as NNCF does
    (`unify_concat_scales`), and drop the Q/DQ round trip at the tail (`drop_float_tail_qdq`).
    None: OpenVINO not installed, or neither passes (OpenVINO is then gated on the common file)."""
    if opts.target != "cpu" or "openvino" not in runtimes.installed():
        return None
    tried = []
    for keep in dict.fromkeys([(), tuple(recipe.fallback_nodes)]):
        # 8-bit weights but the first layer's (NNCF's overflow rule), no Q/DQ round trip at the tail
        r_ov = replace(recipe, reduce_range=False, nodes_to_exclude=keep, fallback_nodes=keep,
                       per_channel_axes=dict(recipe.per_channel_axes))
        path = scratch / f"int8-openvino-{len(tried)}.onnx"
        quantize.quantize(fp32, path, r_ov, tensors, in_name, cache)
        model, first = quantize.narrow_first_layer_weights(onnx.load(str(path)))
        model, signed = quantize.symmetric_signed_activations(model)
        model, unified = quantize.unify_concat_scales(model)
        onnx.save(quantize.drop_float_tail_qdq(model)[0], str(path))
        g = evaluate.gate(vs, task, ref, evaluate.predict(path, vs, task, runtime="openvino"), budget,
                          opts.min_subgroup_samples)
        what = f"{', '.join(keep)} in float" if keep else "every node in int8"
        log(f"openvino file ({what}): {g.primary} INT8 {_f(g.int8[g.primary])} {report.drop_text(g.drop)} "
            f"(budget {budget}) -> {'pass: shipped as ' + OPENVINO_INT8 if g.passed else 'fail'}")
        tried.append(what)
        if g.passed:
            return path, g, {**r_ov.to_dict(), "seven_bit_weight_nodes": first, "tail_qdq_dropped": True,
                             "symmetric_int8_activations": signed, "unified_concat_scales": unified}
    log(f"openvino: no own file passed ({'; '.join(tried)}); OpenVINO is gated on the common file")
    return None


def _gate_on_runtimes(opts: ExportOptions, vs: datasets.ValidationSet, task: Task, ref: evaluate.Predictions,
                      int8: Path, exact: bool, budget: float, gates: dict[str, evaluate.GateResult],
                      log: Callable[[str], None]) -> dict[str, evaluate.GateResult]:
    """The chosen INT8 model on every other CPU runtime installed here (not yet gated on its own file),
    against the same FP32 reference: the device may run a cpu bundle on any runtime its gate passed on,
    and on no other."""
    gates = dict(gates)
    if opts.target != "cpu":
        return gates
    for rt in runtimes.installed():
        if rt in gates:
            continue
        g = evaluate.gate(vs, task, ref, evaluate.predict(int8, vs, task, exact, runtime=rt), budget,
                          opts.min_subgroup_samples)
        gates[rt] = g
        log(f"gate on {rt}: {g.primary} INT8 {_f(g.int8[g.primary])} {report.drop_text(g.drop)} (budget {budget})"
            f"{g.subgroup_summary()} -> {'pass' if g.passed else 'fail: devices will not run this bundle on ' + rt}")
    return gates


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 5)


def _reference(fp32_outputs: list[dict[str, np.ndarray]], calib: list[datasets.Sample], vs: datasets.ValidationSet,
               task: Task, labelled: bool) -> ReferenceStats:
    """What the device's drift monitor compares against: the calibration tensors as the device makes them,
    and FP32's peak confidence per validation input (calibration inputs without --val)."""
    conf = [peak_confidence(task.peak_scores(o, s.geometry, Frame(np.zeros((1, 1), np.uint8), "", "export",
                                                                      spacing_mm=s.spacing_mm)))
            for o, s in zip(fp32_outputs, vs.samples, strict=True)]
    return build_reference([s.tensor for s in calib], conf, "validation" if labelled else "calibration",
                           [s.geometry.frame_size for s in calib], [s.spacing_mm for s in calib if s.spacing_mm])


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _provenance(opts: ExportOptions, spec_text: str, created: str) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort

    from edge import __version__ as medge_version  # type: ignore[attr-defined]

    return {
        "source_model": Path(opts.model).name,
        "source_model_sha256": sha256_file(Path(opts.model)),
        "spec_sha256": hashlib.sha256(spec_text.encode()).hexdigest(),  # of model_spec.yaml in the bundle
        "calibration_set_sha256": _folder_hash(opts.calib),
        "validation_set_sha256": _folder_hash(opts.val) if opts.val is not None else None,
        "created_at": created,
        "tool": f"medge {medge_version}",
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "method": opts.method,
        "max_drop": opts.max_drop,
    }


def _folder_hash(folder: Path) -> str:
    """Stable hash over file names and contents: which data the bundle was calibrated/validated on."""
    h = hashlib.sha256()
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(bytes.fromhex(sha256_file(p)))
    return h.hexdigest()
