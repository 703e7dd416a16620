"""Speed rule of the cpu recipe: which narrow convolutions stay float, decided from the graph, never from a timing.

Convolutions with fewer than 4 input or output channels (a grayscale stem, a 1-channel mask head) are where
ONNX Runtime's u8s8 kernels do not pay on x86 without VNNI: the int8 GEMM packs the reduction in groups of 4
and pays a quantize and a requantize around a product too small to repay them, and the layer adds
quantization error. So the cpu recipe keeps such a conv float, unless that takes int8 away from a
neighbour: ORT quantizes data-movement ops (MaxPool, Reshape, Resize, ...) only when their input already is,
so a float stem followed by MaxPool leaves the pool in float on the model's widest tensor, which costs more
than the stem saves. Whether that happens is read off the QDQ graphs (`int8_nodes`), one conv at a time.

The decision used to be the faster of the two variants timed side by side. On a shared 2-core host that
timing moved with the load and reruns of the same export kept 0 or 2 nodes float, so bundles were not
reproducible. Both variants are still timed and recorded (`int8_ms_*`) for the reader; nothing reads them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx

from . import quantize as Q
from .report import latency_side_by_side

RULE = (f"a Conv/ConvTranspose with fewer than {Q.MIN_QDQ_CHANNELS} input or output channels stays float unless "
        "keeping it float leaves another node without its int8 form (read off the QDQ graphs, not timed)")
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


def int8_nodes(model: onnx.ModelProto) -> set[str]:
    """Nodes ORT's QDQ fusion can run in int8: every activation input comes from a DequantizeLinear and every
    output goes only to QuantizeLinear nodes (the pattern its QLinear* and int8 data-movement kernels need)."""
    inits = {i.name for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in model.graph.node:
        for t in n.input:
            consumers[t].append(n)
    out = set()
    for n in model.graph.node:
        if n.op_type in QDQ_OPS:
            continue
        ins = [t for t in n.input if t and t not in inits]
        outs = [t for t in n.output if t]
        if ins and outs and all(t in producer and producer[t].op_type == "DequantizeLinear" for t in ins) \
                and all(consumers[t] and all(c.op_type == "QuantizeLinear" for c in consumers[t]) for t in outs):
            out.add(n.name)
    return out


def _excluding(recipe: Q.Recipe, nodes: list[str]) -> Q.Recipe:
    return Q.Recipe(**{**asdict(recipe), "nodes_to_exclude": recipe.nodes_to_exclude + tuple(nodes),
                       "per_channel_axes": dict(recipe.per_channel_axes)})


def choose_narrow_exclusions(fp32: Path, recipe: Q.Recipe, tensors: list[np.ndarray], input_name: str, cache: Path,
                             work: Path, runs: int = 15) -> tuple[Q.Recipe, dict]:
    """The recipe with the narrow convs `RULE` keeps float, and the record of why (report.json `speed_rule`)."""
    narrow = [n for n in Q.narrow_convs(onnx.load(str(fp32))) if n not in recipe.nodes_to_exclude]
    record: dict = {"rule": RULE, "min_channels": Q.MIN_QDQ_CHANNELS, "narrow_convs": narrow, "float_convs": [],
                    "kept_float": False, "decisions": {}}
    if not narrow:
        return recipe, record
    plain = work / "speed-plain.onnx"
    Q.quantize(fp32, plain, recipe, tensors, input_name, cache)
    base = int8_nodes(onnx.load(str(plain)))
    kept: list[str] = []
    for i, conv in enumerate(narrow):  # graph order: the same inputs give the same decisions
        trial = work / f"speed-trial-{i}.onnx"
        Q.quantize(fp32, trial, _excluding(recipe, kept + [conv]), tensors, input_name, cache)
        lost = sorted(base - int8_nodes(onnx.load(str(trial))) - set(kept) - {conv})
        if lost:
            record["decisions"][conv] = f"int8: keeping it float would leave {', '.join(lost)} in float"
        else:
            kept.append(conv)
            record["decisions"][conv] = "float: no other node loses its int8 form"
    excl = work / "speed-narrow-float.onnx"
    Q.quantize(fp32, excl, _excluding(recipe, narrow), tensors, input_name, cache)
    lat = latency_side_by_side({"plain": plain, "narrow_float": excl}, tensors[0], runs=runs,
                               exact_int8=recipe.exact_int8)
    record.update(float_convs=kept, kept_float=bool(kept),
                  int8_ms_all_quantized=round(lat["plain"]["median_ms"], 3),
                  int8_ms_narrow_float=round(lat["narrow_float"]["median_ms"], 3),
                  timing="both variants timed side by side for the record; the decision does not use it")
    return (_excluding(recipe, kept) if kept else recipe), record
