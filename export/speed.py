"""Speed rules of the cpu recipe, decided by measurement on the exporting machine.

Convolutions with fewer than 4 input or output channels (a grayscale stem, a 1-channel mask head) are
often slower in int8 than in FP32 on ONNX Runtime's CPU provider, but keeping one in float can also push
its neighbours out of the int8 chain (a stem followed by MaxPool leaves the pool in float NCHW, which
costs more than the stem saved). Which effect wins depends on the model and the CPU, so export builds
both variants and keeps the faster one, measured side by side; the decision is recorded in the recipe.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx

from . import quantize as Q
from .report import latency_side_by_side


def choose_narrow_exclusions(fp32: Path, recipe: Q.Recipe, tensors: list[np.ndarray], input_name: str, cache: Path,
                             work: Path, runs: int = 15) -> tuple[Q.Recipe, dict]:
    narrow = Q.narrow_convs(onnx.load(str(fp32)))
    if not narrow:
        return recipe, {"narrow_convs": [], "kept_float": False}
    plain, excl = work / "speed-plain.onnx", work / "speed-narrow-float.onnx"
    with_excl = Q.Recipe(**{**asdict(recipe), "nodes_to_exclude": tuple(narrow),
                            "per_channel_axes": dict(recipe.per_channel_axes)})
    Q.quantize(fp32, plain, recipe, tensors, input_name, cache)
    Q.quantize(fp32, excl, with_excl, tensors, input_name, cache)
    lat = latency_side_by_side({"plain": plain, "narrow_float": excl}, tensors[0], runs=runs,
                               exact_int8=recipe.exact_int8)
    a, b = lat["plain"]["median_ms"], lat["narrow_float"]["median_ms"]
    keep = b < a
    decision = {"narrow_convs": narrow, "kept_float": keep, "int8_ms_all_quantized": round(a, 3),
                "int8_ms_narrow_float": round(b, 3)}
    return (with_excl if keep else recipe), decision
