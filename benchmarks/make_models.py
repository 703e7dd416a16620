"""Deterministic benchmark models built with onnx.helper and seeded numpy weights (no torch).

The quantization speed-up claims in benchmarks/ need models whose shape matches what the device runs
(a ResNet-18-class classifier and a 16-128 channel U-Net) but that anyone can rebuild bit-for-bit from
this file. Weights are He-initialised and scaled so activations stay in a sane range through the depth,
which matters for calibration: a random model whose activations explode quantizes meaninglessly.

The U-Net comes in variants (``--unet-up``/``--unet-down``/``--unet-skip``) because which upsampling,
downsampling and skip ops ONNX Runtime's CPU provider runs in int8 decides the INT8/FP32 ratio; see
benchmarks/bench_quantize.py and its results table for the measured comparison.

    python -m benchmarks.make_models --out DIR    # writes resnet18.onnx and unet.onnx (+ model.yaml specs)
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


@dataclass
class _Graph:
    """Accumulates nodes and initializers while a model is being described."""

    rng: np.random.Generator
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    n: int = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}_{self.n}"

    def const(self, arr: np.ndarray, prefix: str) -> str:
        nm = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), nm))
        return nm

    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, relu: bool = True,
             gain: float = 1.0) -> str:
        w = self.rng.standard_normal((cout, cin, k, k)).astype(np.float32) * np.float32(gain * np.sqrt(2.0 / (cin * k * k)))
        b = (self.rng.standard_normal(cout) * 0.05).astype(np.float32)
        nm = self.name("conv")
        out = nm + "_out"
        self.nodes.append(helper.make_node(
            "Conv", [x, self.const(w, nm + "_w"), self.const(b, nm + "_b")], [out], name=nm,
            kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4))
        return self.relu(out) if relu else out

    def conv_transpose(self, x: str, cin: int, cout: int) -> str:
        w = self.rng.standard_normal((cin, cout, 2, 2)).astype(np.float32) * np.float32(np.sqrt(2.0 / cin))
        b = (self.rng.standard_normal(cout) * 0.05).astype(np.float32)
        nm = self.name("convT")
        out = nm + "_out"
        self.nodes.append(helper.make_node(
            "ConvTranspose", [x, self.const(w, nm + "_w"), self.const(b, nm + "_b")], [out], name=nm,
            kernel_shape=[2, 2], strides=[2, 2]))
        return self.relu(out)

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        nm = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [nm + "_out"], name=nm, **attrs))
        return nm + "_out"

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def model(self, inp: str, in_shape: list[int], out: str, out_shape: list, name: str) -> onnx.ModelProto:
        g = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info(inp, TensorProto.FLOAT, in_shape)],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)],
            self.inits,
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="medge-benchmarks")
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def resnet18(channels: int = 1, size: int = 224, classes: int = 1, seed: int = 0) -> onnx.ModelProto:
    """ResNet-18 topology (BatchNorm folded into conv bias, as an exported inference model has it)."""
    g = _Graph(np.random.default_rng(seed))
    x = g.conv("input", channels, 64, k=7, stride=2)
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if (stage > 0 and block == 0) else 1
            y = g.conv(x, cin, cout, stride=stride)
            y = g.conv(y, cout, cout, relu=False, gain=0.5)
            sc = g.conv(x, cin, cout, k=1, stride=stride, relu=False) if (stride != 1 or cin != cout) else x
            x = g.relu(g.op("Add", [y, sc]))
            cin = cout
    x = g.op("GlobalAveragePool", [x])
    x = g.op("Flatten", [x], axis=1)
    w = (g.rng.standard_normal((512, classes)) * np.sqrt(1.0 / 512)).astype(np.float32)
    b = np.zeros(classes, np.float32)
    out = "logits"
    g.nodes.append(helper.make_node("Gemm", [x, g.const(w, "fc_w"), g.const(b, "fc_b")], [out], name="fc"))
    return g.model("input", [1, channels, size, size], out, [1, classes], "resnet18_class")


def unet(size: int = 256, widths: tuple[int, ...] = (16, 32, 64, 128), up: str = "resize", down: str = "maxpool",
         skip: str = "concat", resize_mode: str = "asymmetric", seed: int = 0) -> onnx.ModelProto:
    """Four-level U-Net, 1 input channel, 1 output logit map.

    up: resize (nearest x2 then 3x3 conv) | conv-resize (3x3 conv at low resolution, then nearest x2)
        | convtranspose (2x2 stride 2)
    down: maxpool (2x2) | conv (3x3 stride 2)
    skip: concat (classic U-Net) | add (channel-matched sum, LinkNet-style)
    resize_mode: asymmetric (nearest/floor, ORT has a fast path for it) | half_pixel (ONNX default)
    """
    g = _Graph(np.random.default_rng(seed))
    x = "input"
    cin = 1
    skips = []
    for i, c in enumerate(widths[:-1]):
        x = g.conv(g.conv(x, cin, c), c, c)
        skips.append((x, c))
        x = g.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2]) if down == "maxpool" else g.conv(x, c, c, stride=2)
        cin = c
        del i
    x = g.conv(g.conv(x, cin, widths[-1]), widths[-1], widths[-1])
    cin = widths[-1]
    scales = g.const(np.array([1, 1, 2, 2], np.float32), "up_scales")
    for s, c in reversed(skips):
        if up in ("resize", "conv-resize"):
            if up == "conv-resize":  # reduce channels at low resolution, then upsample c (not cin) channels
                x = g.conv(x, cin, c)
            if resize_mode == "asymmetric":  # what torch.nn.Upsample(scale_factor=2) exports
                x = g.op("Resize", [x, "", scales], mode="nearest", coordinate_transformation_mode="asymmetric",
                         nearest_mode="floor")
            else:
                x = g.op("Resize", [x, "", scales], mode="nearest")
            if up == "resize":
                x = g.conv(x, cin, c)
        else:
            x = g.conv_transpose(x, cin, c)
        if skip == "concat":
            x = g.op("Concat", [x, s], axis=1)
            x = g.conv(x, 2 * c, c)
        else:
            x = g.op("Add", [x, s])
            x = g.conv(x, c, c)
        x = g.conv(x, c, c)
        cin = c
    w = (g.rng.standard_normal((1, cin, 1, 1)) * np.sqrt(1.0 / cin)).astype(np.float32)
    out = "mask_logits"
    g.nodes.append(helper.make_node("Conv", [x, g.const(w, "head_w"), g.const(np.zeros(1, np.float32), "head_b")],
                                    [out], name="head", kernel_shape=[1, 1]))
    return g.model("input", [1, 1, size, size], out, [1, 1, size, size], f"unet_{up}_{down}_{skip}")


def spec_for(task: str, name: str, size: int, channels: int, output: str, activation: str) -> dict:
    """The model.yaml export reads next to a model (benchmarks use synthetic images, so gray 0-1)."""
    return {
        "name": name,
        "version": "0.0.1",
        "task": task,
        "description": "deterministic benchmark model with random weights (not for clinical use)",
        "labels": ["finding"],
        "threshold": 0.5,
        "review_band": [0.4, 0.6],
        "input": {"name": "input"},
        "outputs": [{"name": output, "activation": activation}],
        "preprocess": {"size": [size, size], "color": "gray" if channels == 1 else "rgb", "resize": "letterbox",
                       "mean": [0.5], "std": [0.25]},
        "intended_use": {"modalities": ["OT"], "statement": "benchmarking only"},
    }


def write_models(out: Path, unet_up: str = "resize", unet_down: str = "maxpool",
                 unet_skip: str = "concat") -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, model, spec in (
        ("resnet18", resnet18(), spec_for("classify", "bench-resnet18", 224, 1, "logits", "sigmoid")),
        ("unet", unet(up=unet_up, down=unet_down, skip=unet_skip),
         spec_for("segment", "bench-unet", 256, 1, "mask_logits", "sigmoid")),
    ):
        d = out / key
        d.mkdir(exist_ok=True)
        onnx.save(model, d / "model.onnx")
        (d / "model.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        paths[key] = d / "model.onnx"
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--unet-up", choices=("resize", "conv-resize", "convtranspose"), default="resize")
    ap.add_argument("--unet-down", choices=("maxpool", "conv"), default="maxpool")
    ap.add_argument("--unet-skip", choices=("concat", "add"), default="concat")
    a = ap.parse_args()
    for k, p in write_models(a.out, a.unet_up, a.unet_down, a.unet_skip).items():
        print(f"{k}: {p}")


if __name__ == "__main__":
    main()
