"""Shared pieces of the reference-model training scripts: seeding, layers, export and verification.

Both scripts must produce ONNX files the export toolchain can quantize and the device can run, so the
export rules live in one place: FP32, opset 17, batch 1 static shape, input ``input``, output
``logits``, BatchNorm folded into the preceding convolution (a Conv+ReLU graph is what the INT8
quantizers fuse best), and a check that onnxruntime reproduces the torch output before the file is
written.
"""

from __future__ import annotations

import io
import json
import math
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from edge.inference.preprocess import PreprocessSpec

from .atomic import write_bytes, write_text

OPSET = 17
MODELS_DIR = Path(__file__).resolve().parent


def setup_torch(seed: int, threads: int = 2) -> None:
    """Deterministic CPU training: fixed seeds, fixed thread count (the machine is shared)."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.use_deterministic_algorithms(True, warn_only=True)


def load_model_yaml(folder: Path) -> dict[str, Any]:
    return yaml.safe_load((Path(folder) / "model.yaml").read_text())


def preprocess_spec(meta: dict[str, Any]) -> PreprocessSpec:
    return PreprocessSpec.from_dict(meta["preprocess"])


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every ConvBNReLU's BatchNorm into its convolution (eval mode, in place)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    for m in model.modules():
        if isinstance(m, ConvBNReLU) and isinstance(m.bn, nn.BatchNorm2d):
            m.conv = fuse_conv_bn_eval(m.conv, m.bn)
            m.bn = nn.Identity()
    return model


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: Path, check_inputs: list[np.ndarray],
                output_names: tuple[str, ...] = ("logits",), exportable: nn.Module | None = None) -> dict:
    """Fold BN, export, verify every output against torch with onnxruntime on real inputs, then write
    atomically. ``exportable``: the copy to export when it differs from ``model`` (scales folded in, ...)."""
    import copy

    import onnx

    model = model.eval()
    folded = fold_batchnorm(copy.deepcopy(model) if exportable is None else exportable)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter is deliberate: it folds constants into a plain Conv/Relu graph
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            folded, (torch.zeros(input_shape),), buf, input_names=["input"], output_names=list(output_names),
            opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )
    data = buf.getvalue()
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto)
    ops = sorted({n.op_type for n in proto.graph.node})
    if "BatchNormalization" in ops:
        raise RuntimeError("BatchNormalization survived folding")
    from edge.inference.backends.onnxruntime import cpu_session

    sess = cpu_session(data, 2)
    max_err = 0.0
    with torch.no_grad():
        for x in check_inputs:
            out = model(torch.from_numpy(x))
            refs = [r.numpy() for r in (out if isinstance(out, (tuple, list)) else (out,))]
            for ref, got in zip(refs, sess.run(list(output_names), {"input": x}), strict=True):
                if got.shape != ref.shape:
                    raise RuntimeError(f"ONNX output shape {got.shape} != torch {ref.shape}")
                max_err = max(max_err, float(np.abs(got - ref).max()))
    if max_err > 1e-3:
        raise RuntimeError(f"onnxruntime output differs from torch by {max_err:.2e} (> 1e-3)")
    write_bytes(Path(path), data)
    return {"opset": OPSET, "ops": ops, "bytes": len(data), "ort_vs_torch_max_abs": max_err,
            "params": int(sum(p.numel() for p in folded.parameters()))}


def ort_session(path: Path):
    from edge.inference.backends.onnxruntime import cpu_session

    return cpu_session(path, 2)


def cosine_lr(step: int, total: int, base: float, warmup: int = 20) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


@dataclass
class Stopwatch:
    """Wall and CPU seconds: on a shared machine CPU time is the number that reproduces."""

    start: float = 0.0
    cpu_start: float = 0.0

    def __post_init__(self) -> None:
        self.start = time.perf_counter()
        self.cpu_start = time.process_time()

    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 1)

    def cpu_seconds(self) -> float:
        return round(time.process_time() - self.cpu_start, 1)


def write_json(path: Path, obj: Any) -> None:
    write_bytes(Path(path), (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def write_card(path: Path, text: str) -> None:
    write_text(Path(path), text)
