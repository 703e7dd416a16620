"""GPU acceptance, the Python half of benchmarks/gpu_check.sh (the shell half sets up the venv, exports
the tensorrt-target bundles, builds the engines and times every runtime with `medge bench --json`).

Timing alone accepts nothing: an engine can be fast and wrong (an FP16 overflow, a Q/DQ pair TensorRT
placed differently). So every (bundle, precision, runtime) is also judged on the validation set the
reference bundles were gated on, the way export's gate judges INT8: the backend the device would build
(`build_backend` with that one provider, no fallback, so a silent fall back to the CPU fails the row)
runs every validation tensor, the device's task code decodes the outputs, and `export.evaluate.gate`
compares its decisions with FP32 on ONNX Runtime's CPU provider (the reference every bundle's gate used)
within the bundle's own budget.

    python -m benchmarks.gpu_check sets --out DIR [--n-calib 64] [--n-val 120]
        the calibration and validation folders of models/build_bundles.py (its generator and seeds, its
        default sizes), one pair per reference model, printed as name<TAB>model<TAB>calib<TAB>val lines
    python -m benchmarks.gpu_check check --bundle DIR --val DIR --bench DIR [--precisions int8,fp16]
            [--runtimes trt-native,tensorrt,cuda]
        one JSON line per (bundle, precision, runtime): bench latencies (BENCH/<bundle>-<precision>-<runtime>.json,
        or .err with the one-line error) next to agreement and metric deltas, on stdout or appended to
        --out FILE (kept apart from anything a native library prints); exit 1 if any row fails

Run from the repository root (models/ is not an installed package).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import ModelConfig
from edge.errors import MedgeError
from edge.inference.backends import build_backend
from edge.inference.bundle import Bundle, load_bundle
from edge.inference.preprocess import Preprocessor
from edge.inference.tasks import TASK_KINDS, build_task


def make_sets(out: Path, n_calib: int, n_val: int) -> list[tuple[str, Path, Path, Path]]:
    from models.build_bundles import CALIB_SEED, MODELS, ROOT, VAL_SEED, make_set

    rows = []
    for name, (folder, kind) in MODELS.items():
        model = ROOT / folder / "model.onnx"
        if not model.is_file():
            raise SystemExit(f"gpu_check: {model}: reference model missing (python -m models.train_{folder})")
        calib = make_set(kind, out / name / "calib", n_calib, CALIB_SEED)
        val = make_set(kind, out / name / "val", n_val, VAL_SEED)
        rows.append((name, model, calib, val))
    return rows


def _r(v: float | None, nd: int = 5) -> float | None:
    return None if v is None else round(float(v), nd)


def bench_numbers(bench: Path, stem: str) -> tuple[dict[str, Any], list[str]]:
    """What `medge bench --json` measured for one row, or why it could not."""
    js, err = bench / f"{stem}.json", bench / f"{stem}.err"
    d = None
    # the last line that is a JSON object: a native library may write its own lines to stdout too
    for line in reversed(js.read_text(errors="replace").splitlines() if js.is_file() else []):
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(d, dict) and "latency_ms" in d:
            break
        d = None
    if d is not None:
        lat = {k: d["latency_ms"][k] for k in ("median", "p90", "p99", "min", "mean")}
        return {"provider": d["provider"], "latency_ms": lat, "fps": d["fps"], "sustained_fps": d["sustained_fps"],
                "gpu": d["machine"].get("gpu"), "fallbacks": d["fallbacks"]}, []
    text = err.read_text(errors="replace").strip() if err.is_file() else ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return {}, [f"bench: {lines[-1] if lines else 'no output (not run?)'}"]


def run_backend(bundle: Bundle, precision: str, runtime: str, tensors: list[np.ndarray],
                log: logging.Logger) -> tuple[list[dict[str, np.ndarray]] | None, str, list[str]]:
    """Outputs of every tensor on the backend the device builds for this one provider; (None, ..) if none."""
    mcfg = ModelConfig(name=bundle.manifest.name, bundle=bundle.root, variant=precision, providers=(runtime,),
                       intra_op_threads=2, require_signature=False)
    try:
        backend = build_backend(bundle, mcfg, log)
    except MedgeError as e:
        return None, "-", [str(e).splitlines()[0]]
    try:
        outs = [backend.run(t) for t in tensors]
    except Exception as e:  # a runtime failing part-way is this row's result, not the end of the check
        return None, backend.provider, [f"{runtime} failed while running ({type(e).__name__}: {str(e)[:200]})"]
    finally:
        backend.close()
    problems = [] if backend.provider == runtime else [f"asked for {runtime}, ran on {backend.provider}"]
    return outs, backend.provider, problems


def max_abs_diff(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> float:
    return max(float(np.max(np.abs(np.asarray(x[k], np.float32) - np.asarray(y[k], np.float32))))
               for x, y in zip(a, b, strict=True) for k in x)


def check(bundle_dir: Path, val: Path, bench: Path, precisions: list[str], runtimes: list[str]) -> list[dict[str, Any]]:
    from export import evaluate
    from export.datasets import load_validation

    log = logging.getLogger("gpu_check")
    log.setLevel(logging.ERROR)  # a skipped provider is this row's failure, reported in its line
    b = load_bundle(bundle_dir)
    m = b.manifest
    task = build_task(m)
    vs = load_validation(val, m.task, Preprocessor(m.preprocess), m.labels)
    budget = float((m.metrics.get("gate") or {}).get("budget") or TASK_KINDS[m.task].default_max_drop)
    ref_out = evaluate.run_outputs(b.model_path("fp32"), vs)  # the gate's reference: FP32, ONNX Runtime CPU
    ref = evaluate.predictions(task, vs, ref_out)
    tensors = [s.tensor for s in vs.samples]
    rows = []
    for precision in precisions:
        for runtime in runtimes:
            stem = f"{bundle_dir.name}-{precision}-{runtime}"
            row: dict[str, Any] = {"bundle": bundle_dir.name, "precision": precision, "runtime": runtime,
                                   "samples": len(tensors), "budget": budget}
            timing, problems = bench_numbers(bench, stem)
            if timing and timing["provider"] != runtime:
                problems.append(f"bench: asked for {runtime}, ran on {timing['provider']}")
            row.update(timing)
            if precision not in m.variants:
                problems.append(f"{bundle_dir}: no {precision} variant (has {', '.join(m.variants)})")
                outs = None
            else:
                outs, ran, more = run_backend(b, precision, runtime, tensors, log)
                row["checked_on"] = ran
                problems += [p for p in more if not any(p in q for q in problems)]  # bench said it already
            if outs is not None:
                g = evaluate.gate(vs, task, ref, evaluate.predictions(task, vs, outs), budget)
                row.update(primary_metric=g.primary, fp32=_r(g.fp32.get(g.primary)), candidate=_r(g.int8.get(g.primary)),
                           drop=_r(g.drop), agreement=_r(g.agreement),
                           deltas={k: _r(v) for k, v in g.deltas.items()}, max_abs_output_diff=_r(max_abs_diff(outs, ref_out), 6))
                if not g.passed:
                    problems.append(f"gate: {g.failures()} exceeds the budget {budget}")
            row["problems"] = problems
            row["passed"] = not problems
            rows.append(row)
    return rows


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sets", help="calibration/validation folders of models/build_bundles.py")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--n-calib", type=int, default=64)
    s.add_argument("--n-val", type=int, default=120)
    c = sub.add_parser("check", help="agreement with FP32 per precision and runtime, with the bench numbers")
    c.add_argument("--bundle", type=Path, required=True)
    c.add_argument("--val", type=Path, required=True)
    c.add_argument("--bench", type=Path, required=True, help="folder of medge bench --json outputs (.json / .err)")
    c.add_argument("--precisions", default="int8,fp16")
    c.add_argument("--runtimes", default="trt-native,tensorrt,cuda")
    c.add_argument("--out", type=Path, help="append the JSON lines to this file instead of printing them")
    a = ap.parse_args(argv)
    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if a.cmd == "sets":
        for name, model, calib, val in make_sets(a.out, a.n_calib, a.n_val):
            print(f"{name}\t{model}\t{calib}\t{val}")
        return 0
    try:
        rows = check(a.bundle, a.val, a.bench, _names(a.precisions), _names(a.runtimes))
    except MedgeError as e:
        print(f"gpu_check: {a.bundle}: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    if a.out is None:
        sys.stdout.write(text)
    else:
        with open(a.out, "a") as f:
            f.write(text)
    bad = [f"{r['bundle']} {r['precision']} {r['runtime']}: {'; '.join(r['problems'])}" for r in rows if not r["passed"]]
    for line in bad:
        print(f"gpu_check: FAIL {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
