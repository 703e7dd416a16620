"""Quantization recipes that follow the deployment target.

The same model needs a different INT8 form per runtime (measured on this machine class, see the shared
architecture notes and benchmarks/results/quantize.md):

* ``cpu`` (ONNX Runtime CPU provider): QDQ with **uint8 asymmetric activations** and int8 per-channel
  weights (U8S8). ORT fuses these into QLinearConv/QLinearAdd/... running on VNNI; the symmetric S8S8
  form runs *slower than FP32* here, so it must never reach a CPU device. Convolutions whose input or
  output has fewer than 4 channels (a grayscale stem, a 1-channel mask head) stay in float unless that
  takes int8 away from a neighbour, a rule read off the graph (`export.speed`), not a timing. Weights use
  ``reduce_range`` (7 bits): x86 CPUs without VNNI add pairs of u8 x s8 products in 16 bits, and
  full-range weights saturate there (measured: cxr-opacity AUROC 0.9975 -> 0.74 on an AVX2 host). 7-bit
  weights cannot saturate, so the bundle runs with ORT's fast kernels on every x86 CPU, VNNI or not, and
  the device and export agree bit for bit with what the accuracy gate measured. A bundle without it runs
  in ORT's precision mode on the device (`edge.inference.backends.onnxruntime.exact_int8_needed`).
* ``tensorrt``: what TensorRT's explicit quantization expects - int8 symmetric activations and weights
  (zero point 0), per-channel weights on the output-channel axis (0 for Conv, 1 for ConvTranspose and
  MatMul), and **no bias quantization** (TensorRT fuses bias in higher precision itself).

``prepare_model`` pins dynamic dimensions and runs ORT's pre-processing (shape inference, basic graph
optimisation) once, so FP32 reference, INT8 and FP16 variants all come from the same graph.

Calibration (``calibrate``) runs ORT's own calibrators, but built here rather than inside ``quantize_static``:
``quantize_static`` forwards only ``CalibTensorRangeSymmetric``, ``CalibMovingAverage``,
``CalibMovingAverageConstant``, ``CalibMaxIntermediateOutputs`` and ``CalibPercentile`` to the calibrator (there is
no option for the histogram sizes), and its entropy calibrator defaults to ``num_bins=128`` and
``num_quantized_bins=128``. The KL search then has exactly one candidate threshold, the whole histogram, so
``entropy`` gave minmax's ranges byte for byte. ``CALIBRATION`` holds the settings each method really runs with.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge.errors import InputError
from edge.inference.backends.onnxruntime import exact_int8_needed
from edge.inference.preprocess import PreprocessSpec

TARGETS = ("cpu", "tensorrt")
METHODS = ("minmax", "entropy", "percentile")
MIN_QDQ_CHANNELS = 4  # cpu: convs narrower than this on either side are candidates for float (`export.speed`)

# What each method's calibrator runs with (ORT's create_calibrator option names). Entropy: 2048 histogram bins
# and one quantized bin per 8-bit level over ORT's symmetric search window [-t, t], so the search has 897
# candidate thresholds, down to 1/8 of the largest magnitude seen (ORT's default 128/128 has one: the full
# range, i.e. minmax). Percentile: 2048 bins, 0.005 % cut from each end. ``symmetric`` is added from the
# recipe: the calibrated range is symmetric exactly when the recipe's activations are (ORT's percentile
# default is symmetric, which can waste up to half of a uint8 range on a tensor that is not).
CALIBRATION: dict[str, dict[str, Any]] = {
    "minmax": {},
    "entropy": {"num_bins": 2048, "num_quantized_bins": 256},
    "percentile": {"num_bins": 2048, "percentile": 99.99},
}


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the INT8 graph; stored in the manifest so a bundle says how it was made."""

    target: str
    method: str = "minmax"
    format: str = "QDQ"
    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True
    reduce_range: bool = False
    activation_symmetric: bool = False
    weight_symmetric: bool = True
    quantize_bias: bool = True
    per_channel_axes: dict[str, int] = field(default_factory=dict)
    nodes_to_exclude: tuple[str, ...] = ()  # kept in float (speed rule or accuracy fallback)
    fallback_nodes: tuple[str, ...] = ()  # the subset the accuracy gate added

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["nodes_to_exclude"] = list(self.nodes_to_exclude)
        d["fallback_nodes"] = list(self.fallback_nodes)
        d["calibration"] = self.calibration
        return d

    @property
    def calibration(self) -> dict[str, Any]:
        """The calibrator settings this recipe's ranges come from: derived from the method, so a recipe built
        by hand cannot fall back to ORT's collapsed entropy defaults."""
        return {**CALIBRATION[self.method], "symmetric": self.activation_symmetric}

    @property
    def exact_int8(self) -> bool:
        """Whether the device runs this recipe's int8 layers in ORT's precision mode (the device's own rule)."""
        return exact_int8_needed(self.to_dict())

    def with_fallback(self, nodes: Iterable[str]) -> Recipe:
        nodes = tuple(n for n in nodes if n not in self.nodes_to_exclude)
        return Recipe(**{**asdict(self), "nodes_to_exclude": self.nodes_to_exclude + nodes,
                         "fallback_nodes": self.fallback_nodes + nodes, "per_channel_axes": dict(self.per_channel_axes)})


def recipe_for(target: str, method: str = "minmax") -> Recipe:
    if target not in TARGETS:
        raise InputError(f"--target {target!r} is not one of {', '.join(TARGETS)}")
    if method not in METHODS:
        raise InputError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    if target == "cpu":
        return Recipe(target="cpu", method=method, reduce_range=True)
    return Recipe(target="tensorrt", method=method, activation_type="int8", weight_type="int8",
                  activation_symmetric=True, weight_symmetric=True, quantize_bias=False,
                  per_channel_axes={"Conv": 0, "ConvTranspose": 1, "MatMul": 1})


def load_onnx(path: Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: model file not found")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # protobuf DecodeError, ValidationError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: not a valid ONNX model ({first[:160]})") from None
    if not model.graph.node:
        raise InputError(f"{path}: not a valid ONNX model (graph has no nodes)")
    return model


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        dims = tuple(int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise InputError(f"--input-shape {text!r}: expected e.g. 1x1x256x256") from None
    if len(dims) != 4 or min(dims) <= 0:
        raise InputError(f"--input-shape {text!r}: expected four positive dims N x C x H x W")
    return dims


def graph_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    inits = {i.name for i in model.graph.initializer}
    ins = [i for i in model.graph.input if i.name not in inits]
    if len(ins) != 1:
        raise InputError(f"model has {len(ins)} inputs ({', '.join(i.name for i in ins)}); medge models take one image")
    return ins[0]


def prepare_model(src: Path, dst: Path, spec: PreprocessSpec, input_shape: tuple[int, ...] | None = None) -> dict:
    """Pin dims, check them against the preprocessing spec, run ORT pre-processing; return I/O spec."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = load_onnx(src)
    inp = graph_input(model)
    dims = inp.type.tensor_type.shape.dim
    if len(dims) != 4:
        raise InputError(f"{src}: input {inp.name!r} has rank {len(dims)}; expected N x C x H x W")
    want = tuple(input_shape) if input_shape else None
    fixed = []
    for i, d in enumerate(dims):
        v = d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        if want:
            if v is not None and v != want[i]:
                raise InputError(f"{src}: --input-shape {'x'.join(map(str, want))} contradicts the model's input dim {i} = {v}")
            v = want[i]
        elif v is None:  # dynamic: batch 1, the rest from the spec (its size came from the graph or the user)
            v = spec.input_shape[i]
        fixed.append(v)
    if fixed[0] != 1:
        raise InputError(f"{src}: batch size {fixed[0]} is not supported; the device runs batch 1")
    expect = list(spec.input_shape)
    if fixed != expect:
        raise InputError(f"{src}: model input {'x'.join(map(str, fixed))} does not match the preprocessing spec "
                         f"({'x'.join(map(str, expect))} from preprocess.size/color); fix the spec or the model")
    for d, v in zip(dims, fixed, strict=True):
        d.Clear()
        d.dim_value = v
    for out in model.graph.output:  # let shape inference recompute outputs from the pinned input
        for d in out.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.Clear()
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:  # per-channel QDQ (axis attribute) needs opset 13
        model = onnx.version_converter.convert_version(model, 13)
    dst = Path(dst)
    pinned = dst.with_name(f".{dst.name}.pinned.onnx")
    onnx.save(model, str(pinned))
    try:
        quant_pre_process(str(pinned), str(dst), skip_symbolic_shape=True)
    except Exception as e:
        raise InputError(f"{src}: ONNX Runtime cannot prepare this model ({str(e).splitlines()[0][:160]})") from None
    finally:
        pinned.unlink(missing_ok=True)
    prepared = onnx.load(str(dst))
    return io_spec(prepared)


def io_spec(model: onnx.ModelProto) -> dict:
    def shape(vi: onnx.ValueInfoProto) -> list:
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]

    inp = graph_input(model)
    return {"input": {"name": inp.name, "shape": shape(inp), "dtype": "float32"},
            "outputs": [{"name": o.name, "shape": shape(o), "dtype": "float32"} for o in model.graph.output]}


def narrow_convs(model: onnx.ModelProto, min_channels: int = MIN_QDQ_CHANNELS) -> list[str]:
    """Conv nodes whose weight has < min_channels input or output channels (cpu recipe keeps them float)."""
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type not in ("Conv", "ConvTranspose") or len(n.input) < 2 or n.input[1] not in inits:
            continue
        w = inits[n.input[1]].dims
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        cout, cin = (w[0], w[1] * group) if n.op_type == "Conv" else (w[1] * group, w[0])
        if min(cin, cout) < min_channels:
            out.append(n.name)
    return out


def ensure_node_names(path: Path) -> None:
    """Name unnamed nodes: exclusion lists and reports refer to nodes by name."""
    model = onnx.load(str(path))
    seen: set[str] = set()
    changed = False
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}"
            changed = True
        seen.add(n.name)
    if changed:
        onnx.save(model, str(path))


class TensorReader:
    """CalibrationDataReader over preprocessed tensors (already produced by the device's Preprocessor)."""

    def __init__(self, input_name: str, tensors: list[np.ndarray]) -> None:
        self.input_name = input_name
        self.tensors = tensors
        self._it = iter(tensors)

    def get_next(self) -> dict[str, np.ndarray] | None:
        t = next(self._it, None)
        return None if t is None else {self.input_name: t}

    def rewind(self) -> None:
        self._it = iter(self.tensors)


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


def _calibration_key(fp32_path: Path, recipe: Recipe, tensors: list[np.ndarray], input_name: str) -> str:
    """What the cached ranges were computed from; a cache made from another model, other inputs or other
    settings is recomputed instead of silently reused (ORT checks only the method)."""
    import onnxruntime as ort

    h = hashlib.sha256()
    h.update(Path(fp32_path).read_bytes())
    h.update(json.dumps({"method": recipe.method, "options": recipe.calibration, "input": input_name,
                         "onnxruntime": ort.__version__}, sort_keys=True).encode())
    for t in tensors:
        a = np.ascontiguousarray(t)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def calibrate(fp32_path: Path, recipe: Recipe, tensors: list[np.ndarray], input_name: str, cache_path: Path) -> Path:
    """Activation ranges for `recipe.method` with `recipe.calibration`, written to `cache_path` (ORT's JSON cache).

    Calibrated once per export: the speed rule and the fallback loop quantize many times from these ranges.
    """
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    cache_path = Path(cache_path)
    key_path = cache_path.with_name(cache_path.name + ".key")
    key = _calibration_key(fp32_path, recipe, tensors, input_name)
    if cache_path.is_file() and key_path.is_file() and key_path.read_text() == key:
        return cache_path
    if not tensors:
        raise InputError(f"{fp32_path}: no calibration inputs to calibrate {recipe.method} ranges from")
    key_path.unlink(missing_ok=True)
    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))  # what quantize_static calibrates
    try:
        with tempfile.TemporaryDirectory(prefix="medge-calib-") as tmp, contextlib.redirect_stdout(io.StringIO()):
            # as quantize_static does: the calibrator only picks tensors whose type it can see, so without shape
            # inference the outputs of Relu, Resize and the like get no range and are left unquantized (which
            # cost OpenVINO 1.6x on the benchmark U-Net: float islands between int8 convs)
            inferred = Path(tmp) / "inferred.onnx"
            onnx.save(load_model_with_shape_infer(Path(fp32_path)), str(inferred))
            cal = create_calibrator(inferred, op_types, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                    calibrate_method=_method(recipe.method), extra_options=dict(recipe.calibration))
            cal.collect_data(TensorReader(input_name, tensors))
            ranges = cal.compute_data()
    except Exception as e:  # ORT raises ValueError/RuntimeError/Fail with multi-line texts
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{fp32_path}: ONNX Runtime cannot calibrate this model ({recipe.method}: {first[:160]})") from None
    save_tensors_data(ranges, cache_path)
    key_path.write_text(key)
    return cache_path


def quantize(fp32_path: Path, out_path: Path, recipe: Recipe, tensors: list[np.ndarray], input_name: str,
             cache_path: Path) -> None:
    """Write the INT8 QDQ model for `recipe` from the ranges `calibrate` caches in `cache_path`."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    calibrate(fp32_path, recipe, tensors, input_name, cache_path)
    qt = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    extra: dict[str, Any] = {
        "ActivationSymmetric": recipe.activation_symmetric,
        "WeightSymmetric": recipe.weight_symmetric,
        "QuantizeBias": recipe.quantize_bias,
    }
    if recipe.per_channel_axes:
        extra["QDQOpTypePerChannelSupportToAxis"] = dict(recipe.per_channel_axes)
    quantize_static(
        str(fp32_path), str(out_path), None,
        quant_format=QuantFormat.QDQ,
        per_channel=recipe.per_channel,
        reduce_range=recipe.reduce_range,
        activation_type=qt[recipe.activation_type],
        weight_type=qt[recipe.weight_type],
        nodes_to_exclude=list(recipe.nodes_to_exclude) or None,
        calibrate_method=_method(recipe.method),
        calibration_cache_path=str(cache_path),
        extra_options=extra,
    )


def activation_ranges(model: onnx.ModelProto) -> dict[str, tuple[float, float]]:
    """The float range each activation QuantizeLinear represents, by quantized tensor: what calibration
    decided, read back from the graph the device runs."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[1] not in inits:
            continue
        scale = float(inits[n.input[1]].reshape(-1)[0])
        zp = inits[n.input[2]] if len(n.input) > 2 and n.input[2] in inits else np.zeros((), np.uint8)
        info = np.iinfo(zp.dtype)
        z = int(zp.reshape(-1)[0])
        out[n.input[0]] = (scale * (info.min - z), scale * (info.max - z))
    return out


def to_fp16(fp32_path: Path, out_path: Path) -> None:
    """FP16 variant for GPU targets; inputs/outputs stay float32 so the device code path is unchanged."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32_path))
    half = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(half, str(out_path))


def drop_float_tail_qdq(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Remove the QuantizeLinear -> DequantizeLinear pairs at the graph's tail: the dequantized tensor reaches
    graph outputs through float ops that do no int8 work (a Reshape, a Transpose, a ReduceMax, a Sub) and is
    never quantized again. The round trip adds rounding and one element-wise kernel and no int8 work. Pairs
    are removed from the outputs backwards until none is left (a head's conv -> Q/DQ -> Reshape -> Q/DQ ->
    Transpose loses both). For OpenVINO's file: its CPU plugin fuses the dequantization into the producing convolution when
    the output stays float, which is the graph NNCF builds; ONNX Runtime's file keeps the pairs (its QDQ
    fusion wants them). Graph output names are kept (Identity). Returns the pairs removed."""
    removed = 0
    while (n := _drop_tail_pass(model.graph)):
        removed += n
    return model, removed


# a tail's float ops move data or reduce it; a layer that does int8 work (the head conv) keeps its Q/DQ inputs
_NOT_TAIL = frozenset({"QuantizeLinear", "DequantizeLinear", "Conv", "ConvTranspose", "Gemm", "MatMul"})


def _consumers(g: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it."""
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for t in n.input:
            out.setdefault(t, []).append(n)
    return out


def _drop_tail_pass(g: onnx.GraphProto) -> int:
    consumers = _consumers(g)
    outputs = {o.name for o in g.output}
    quantized = {n.input[0] for n in g.node if n.op_type == "QuantizeLinear"}
    memo: dict[str, bool] = {}

    def float_tail(t: str) -> bool:
        """Read only by float ops whose results end in graph outputs, never quantized again."""
        if t not in memo:
            cs = consumers.get(t, [])
            memo[t] = t not in quantized and (t in outputs if not cs else all(
                c.op_type not in _NOT_TAIL and all(float_tail(o) for o in c.output if o) for c in cs))
        return memo[t]

    drop: set[int] = set()
    rename: dict[str, str] = {}
    for q in g.node:
        if q.op_type != "QuantizeLinear":
            continue
        dqs = consumers.get(q.output[0], [])
        if dqs and all(d.op_type == "DequantizeLinear" and float_tail(d.output[0]) for d in dqs):
            for d in dqs:
                rename[d.output[0]] = q.input[0]
                drop.add(id(d))
            drop.add(id(q))
    kept = [n for n in g.node if id(n) not in drop]
    for n in kept:
        n.input[:] = [rename.get(t, t) for t in n.input]
    kept += [onnx.helper.make_node("Identity", [rename[o]], [o], name=f"{o}_float") for o in sorted(outputs & set(rename))]
    del g.node[:]
    g.node.extend(kept)
    return len(drop) // 2


def symmetric_signed_activations(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Activations whose calibrated range crosses zero (a uint8 zero point above 0: in practice the normalised
    input) become symmetric int8 with zero point 0, over the same range's larger side; ranges that start at 0
    (after ReLU) stay uint8. For OpenVINO's file: this is NNCF's activation rule, and on CPUs with AMX the CPU
    plugin runs an asymmetric uint8 input through u8 convolution kernels where NNCF's int8 input gets s8 ones
    (us-free-fluid: 0.91x of NNCF before, executed graph identical to NNCF's after). On VNNI-only CPUs the two
    forms executed the same kernels. Returns the rewritten tensors (the Q/DQ pairs' quantized inputs)."""
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    done: dict[tuple[str, str], None] = {}
    tensors = []
    for n in g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(n.input) < 3:
            continue
        sn, zn = n.input[1], n.input[2]
        if (sn, zn) in done or sn not in inits or zn not in inits:
            continue
        zp, scale = numpy_helper.to_array(inits[zn]), numpy_helper.to_array(inits[sn])
        if zp.dtype != np.uint8 or zp.ndim != 0 or int(zp) == 0:
            continue  # weights (int8, per channel) and ranges that start at 0
        done[(sn, zn)] = None
        lo, hi = -int(zp) * float(scale), (255 - int(zp)) * float(scale)
        inits[sn].CopyFrom(numpy_helper.from_array(np.array(max(-lo, hi) / 127, scale.dtype), sn))
        inits[zn].CopyFrom(numpy_helper.from_array(np.array(0, np.int8), zn))
        if n.op_type == "QuantizeLinear":
            tensors.append(n.input[0])
    return model, tensors


def unify_concat_scales(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Give every quantized input of a Concat the quantization of the Concat's output (per-tensor scale and
    zero point; the output's calibrated range covers its inputs'). For OpenVINO's file: ONNX Runtime's
    quantizer calibrates each Concat input on its own, and OpenVINO's CPU plugin then requantizes every input
    to one scale inside the producing kernel (the U-Net's Resize ran 20-30 % longer with that second fused
    FakeQuantize); NNCF quantizes a Concat's inputs as one group with one scale, which is this. A producer
    read by two Concats keeps the first one's. Returns the Concats changed."""
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers = _consumers(g)

    def qparams(n: onnx.NodeProto) -> tuple[str, str] | None:
        if len(n.input) < 3 or n.input[1] not in inits or n.input[2] not in inits:
            return None
        return (n.input[1], n.input[2]) if numpy_helper.to_array(inits[n.input[1]]).ndim == 0 else None

    assigned: dict[tuple[str, str], tuple[str, str]] = {}
    changed = []
    for c in g.node:
        outs = consumers.get(c.output[0], []) if c.op_type == "Concat" else []
        if not outs or any(q.op_type != "QuantizeLinear" or qparams(q) is None for q in outs):
            continue
        target = qparams(outs[0])
        dqs = [producer.get(t) for t in c.input]
        if (len({qparams(q) for q in outs}) != 1
                or any(d is None or d.op_type != "DequantizeLinear" or qparams(d) is None for d in dqs)):
            continue
        tz = numpy_helper.to_array(inits[target[1]])
        if any(numpy_helper.to_array(inits[qparams(d)[1]]).dtype != tz.dtype for d in dqs):
            continue
        for d in dqs:
            own = qparams(d)
            if own == target or own in assigned:
                continue
            assigned[own] = target
            for src, dst in zip(target, own, strict=True):
                inits[dst].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits[src]).copy(), dst))
        changed.append(c.name)
    return model, changed


def narrow_first_layer_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """7-bit weights (scale x2) for the convolutions that read the graph input, 8-bit everywhere else: NNCF's
    default overflow fix for CPUs. Without VNNI, u8 x s8 products are summed in pairs in 16 bits, which
    saturates first where the input is unnormalised and wide; deeper layers see ReLU-bounded activations.
    Full 8-bit weights elsewhere keep the accuracy 7-bit ones cost (benchmark U-Net: Dice drop 0.014 vs 0.023)."""
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    inputs = {i.name for i in g.input} - set(inits)

    def from_input(t: str) -> bool:  # DQ <- Q <- a graph input
        dq = producer.get(t)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        return q is not None and q.op_type == "QuantizeLinear" and q.input[0] in inputs

    changed = []
    for n in g.node:
        if n.op_type not in ("Conv", "ConvTranspose") or not from_input(n.input[0]) or len(n.input) < 2:
            continue
        wdq = producer.get(n.input[1])
        if wdq is None or wdq.op_type != "DequantizeLinear" or wdq.input[0] not in inits or wdq.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[wdq.input[0]])
        if w.dtype != np.int8:
            continue
        s = numpy_helper.to_array(inits[wdq.input[1]])
        inits[wdq.input[0]].CopyFrom(numpy_helper.from_array(np.clip(np.round(w.astype(np.float32) / 2), -64, 63)
                                                             .astype(np.int8), wdq.input[0]))
        inits[wdq.input[1]].CopyFrom(numpy_helper.from_array((s * 2).astype(s.dtype), wdq.input[1]))
        changed.append(n.name)
    return model, changed
