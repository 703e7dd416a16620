"""report.json / report.md: what export measured, in a form a reviewer can read and a script can parse.

Latency is measured on the exporting machine, side by side: the variants are interleaved in short blocks
in one process so background load hits them equally, and the median of N runs is reported.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np


def latency_side_by_side(models: dict[str, Path | tuple[str, Path]], x: np.ndarray, runs: int = 30, threads: int = 2,
                         warmup: int = 3, block: int = 5, exact_int8: bool = True,
                         keep_times: bool = False) -> dict[str, dict[str, Any]]:
    """Median latency per model, interleaved in short blocks within one process.

    Sessions are configured as the device runs them (`edge.inference.backends.onnxruntime`: intra-op workers do not
    spin, because the pipeline's stages share the cores). With spinning on, a dozen idle sessions' spinning
    workers in one process would be charged to whichever model runs next. Each block still starts with
    one untimed run; then `block` timed runs. Blocks rotate across models, in a new seeded order each
    round, until every model has `runs` timed runs. In a fixed order the model after an ONNX Runtime one
    ran 2-4 % slower than the same compiled OpenVINO file placed after another OpenVINO model (same file
    both times, medians of 300), which bench_peers had charged to medge's OpenVINO row. A model given as
    ``(runtime, path)`` runs on that CPU runtime (`export.runtimes`), so ONNX Runtime and OpenVINO are
    timed in the same interleaved loop. ``keep_times``: also return every timed run
    (``times_ms``), for a confidence interval of a ratio.
    """
    from .runtimes import runner

    runners = {k: runner(*(p if isinstance(p, tuple) else ("onnxruntime", p)), threads, exact_int8)
               for k, p in models.items()}
    for r in runners.values():
        for _ in range(warmup):
            r(x)
    times: dict[str, list[float]] = {k: [] for k in runners}
    order, shuffle = list(runners), np.random.default_rng(0).shuffle
    while min(len(v) for v in times.values()) < runs:
        shuffle(order)  # a new, seeded order every round: no model always follows the same one
        for k in order:
            r = runners[k]
            r(x)  # absorbs the previous model's spinning workers
            for _ in range(min(block, runs - len(times[k]))):
                t0 = time.perf_counter()
                r(x)
                times[k].append((time.perf_counter() - t0) * 1000)
    return {k: {"median_ms": float(np.median(v)), "p90_ms": float(np.percentile(v, 90)), "runs": len(v),
                **({"times_ms": v} if keep_times else {})} for k, v in times.items()}


def machine() -> dict[str, Any]:
    """The CPU (and its int8-relevant ISA, read as `medge bench` reads it) a report was measured on."""
    import onnxruntime as ort

    from edge.commands.bench import cpu_info

    cpu, isa = cpu_info()
    return {"cpu": cpu, "isa": isa, "python": platform.python_version(), "onnxruntime": ort.__version__}


def drop_text(drop: float) -> str:
    """One sign convention everywhere: a drop is positive; INT8 scoring better is said in words, never as
    a negative drop or a '-0.0000'."""
    if drop >= -5e-5:
        return f"drop {drop if drop > 0 else 0.0:.4f}"
    return f"no drop (INT8 better by {-drop:.4f})"


def speed_phrase(ratio: float) -> str:
    """'1.84x faster than FP32' / '0.91x the speed of FP32 (slower)': a ratio below 1 is never called faster."""
    return f"{ratio:.2f}x faster than FP32" if ratio >= 1.0 else f"{ratio:.2f}x the speed of FP32 (slower)"


def _ratio(ratio: float) -> str:
    return f"{ratio:.2f}x" + ("" if ratio >= 1.0 else " (slower)")


def write_reports(root: Path, report: dict[str, Any]) -> None:
    (root / "report.json").write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    (root / "report.md").write_text(render_md(report))


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _signed(v: float | None) -> str:
    if v is None:
        return "n/a"
    return "0.0000" if abs(v) < 5e-5 else f"{v:+.4f}"


def _subgroup_lines(g: dict[str, Any]) -> list[str]:
    """One row per column=value: a reviewer sees which subgroups were large enough to hold the model to the budget."""
    subs = g.get("subgroups") or []
    if not subs:
        return []
    pm = g["primary_metric"]
    lines = ["", f"### Subgroups ({pm}; gated with at least {g.get('min_subgroup_samples')} samples, budget "
             f"{_fmt(g['budget'])})", "", f"| column | value | n | FP32 {pm} | INT8 {pm} | delta (INT8 - FP32) | gate |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in subs:
        m = s["primary_metric"]
        tag = "" if m == pm else f" ({m})"
        lines.append(f"| {s['column']} | {s['value']} | {s['n']} | {_fmt(s['fp32'].get(m))}{tag} | "
                     f"{_fmt(s['int8'].get(m))}{tag} | {_signed(s['delta'])} | {s['note']} |")
    return lines


def render_md(r: dict[str, Any]) -> str:
    g = r["gate"]
    lines = [f"# Export report: {r['name']} {r['version']} ({r['task']}, target {r['target']})", ""]
    by_labels = g.get("reference", "labels") == "labels"
    lines += [f"Gate: **{'PASSED' if g['passed'] else 'FAILED'}** - {g['primary_metric']} {drop_text(g['drop'])} "
              f"(budget {_fmt(g['budget'])}), FP32/INT8 decision agreement {_fmt(g['agreement'])}.", ""]
    if g.get("sanity"):
        lines += [f"Gate sanity: {g['sanity']['note']}"
                  + (" - **WEAK MODEL, exported with --allow-weak-model**." if g.get("weak_model_allowed") else "."), ""]
    lines += [f"- WARNING: {w}" for w in g.get("warnings", [])] + ([""] if g.get("warnings") else [])
    if by_labels:
        lines += [f"## Accuracy ({g.get('evaluated_on', 'validation set')}, against its labels)", ""]
    else:
        lines += [f"## Agreement with FP32 ({g.get('evaluated_on', 'calibration set')})", "",
                  "No labelled validation set was given: the truth here is FP32's own decisions, so FP32 scores "
                  "perfectly and the INT8 column is how far quantization moves the decisions. This is not clinical "
                  "accuracy; export again with --val for that.", ""]
    lines += ["| metric | FP32 | INT8 | change (INT8 - FP32) |", "| --- | --- | --- | --- |"]
    for k in g["fp32"]:
        lines.append(f"| {k} | {_fmt(g['fp32'][k])} | {_fmt(g['int8'].get(k))} | {_signed(g['delta_int8_minus_fp32'].get(k))} |")
    lines += _subgroup_lines(g)
    lat = r["latency"]
    isa = "/".join(lat["machine"].get("isa", [])) or "no AVX2"
    lines += ["", f"## Latency on the exporting machine ({lat['machine']['cpu']}, {isa}, ORT {lat['machine']['onnxruntime']}, "
              f"{lat['threads']} threads, batch 1, median of {lat['runs']} runs interleaved in blocks)", "",
              "| variant | median ms | p90 ms | speed-up vs FP32 |", "| --- | --- | --- | --- |"]
    base = lat["variants"]["fp32"]["median_ms"]
    for k, v in lat["variants"].items():
        lines.append(f"| {k} | {v['median_ms']:.2f} | {v['p90_ms']:.2f} | {_ratio(base / v['median_ms'])} |")
    if lat.get("warning"):
        lines += ["", f"WARNING: {lat['warning']}."]
    if g.get("runtimes"):
        lines += ["", "## CPU runtimes", "",
                  f"The accuracy figures above were measured on {g.get('measured_on', 'onnxruntime')}; "
                  "the same INT8 file on every CPU runtime installed at export, against the same FP32 reference. Devices run "
                  "the bundle only on runtimes that passed (manifest `runtimes`).", "",
                  f"| runtime | INT8 file | gate | INT8 {g['primary_metric']} | drop | FP32 ms | INT8 ms | INT8 vs ORT FP32 |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for rt, v in g["runtimes"].items():
            lines.append(f"| {rt} | {v.get('file', 'model.int8.onnx')} | {'pass' if v['passed'] else 'FAIL (not offered)'} | "
                         f"{_fmt(v['int8'])} | "
                         f"{drop_text(v['drop'] or 0.0)} | {v['fp32_ms']:.2f} | {v['int8_ms']:.2f} | "
                         f"{_ratio(base / v['int8_ms'])} |")
    if r["target"] != "cpu":
        lines += ["", "Target is not the CPU: the INT8 form here is TensorRT's symmetric QDQ, which ONNX Runtime's CPU "
                  "provider runs slowly; the CPU numbers are for reference only."]
    fb = r.get("fallback", {})
    lines += ["", "## Nodes kept in float", ""]
    rec = r["recipe"]
    speed = [n for n in rec["nodes_to_exclude"] if n not in rec["fallback_nodes"]]
    lines.append(f"- by the {r['target']} recipe (narrow convolutions, faster in float): {', '.join(speed) or 'none'}")
    lines.append(f"- by the accuracy fallback: {', '.join(rec['fallback_nodes']) or 'none'}")
    if fb.get("steps"):
        lines += ["", "Each step keeps one more node in float (cumulative); speed measured side by side with FP32; drop is "
                  "the largest the gate judged (overall or in a gated subgroup).", "",
                  "| step | node kept in float | drop | INT8 ms | speed-up vs FP32 | gate |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for s in fb["steps"]:
            lines.append(f"| {s['step']} | {s['node_kept_float'] or '(initial)'} | {drop_text(s['drop'])} | "
                         f"{s['int8_latency_ms']:.2f} | {_ratio(s['speedup_vs_fp32'])} | {'pass' if s['passed'] else 'fail'} |")
    cal = r["calibration"]
    lines += ["", "## Calibration", "", f"{cal['inputs']} inputs, method {rec['method']}; tensor mean {cal['tensor_mean']}, "
              f"std {cal['tensor_std']}."]
    for w in cal.get("warnings", []):
        lines.append(f"- WARNING: {w}")
    lines += ["", "## Recipe", "", "```json", json.dumps(rec, indent=2), "```", ""]
    return "\n".join(lines)
