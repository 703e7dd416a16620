"""Small models, specs and image folders for exercising `medge export` end to end."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import yaml

PRE = {"size": [32, 32], "color": "gray", "resize": "letterbox", "mean": [0.5], "std": [0.25]}


def write_images(folder: Path, n: int, seed: int, h: int = 48, w: int = 64, white: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    for i in range(n):
        img = 0.45 + 0.25 * np.sin(xx * rng.uniform(2, 12) + yy * rng.uniform(2, 12)) + rng.normal(0, 0.05, (h, w))
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.3)
        img[((yy - cy) ** 2 + (xx - cx) ** 2) < r * r] *= rng.uniform(0.1, 0.5)
        cv2.imwrite(str(folder / f"img{i:03d}.png"), (np.clip(img, 0, 1) * 255).astype(np.uint8))
    if white:  # one over-exposed frame: the outlier that stretches an activation range
        cv2.imwrite(str(folder / "zz_white.png"), np.full((h, w), 255, np.uint8))


def model_spec(task: str, name: str, output: str, size: int = 32, **extra) -> dict:
    return {"name": name, "version": "1.0.0", "task": task, "labels": ["finding"], "threshold": 0.5,
            "review_band": [0.4, 0.6], "input": {"name": "input"}, "outputs": [{"name": output, "activation": "sigmoid"}],
            "preprocess": {**PRE, "size": [size, size]}, "intended_use": {"modalities": ["CR", "DX"]}, **extra}


def save_model(folder: Path, model: onnx.ModelProto, spec: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    (folder / "model.yaml").write_text(yaml.safe_dump(spec))
    return folder / "model.onnx"


def quiet(_msg: str) -> None:
    pass


def _model(nodes: list, inits: list, out: str, out_shape: list[int], size: int = 32) -> onnx.ModelProto:
    from onnx import TensorProto, helper

    g = helper.make_graph(nodes, "test", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, size, size])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def random_classifier(seed: int = 0, bias: float = -4.0, size: int = 32) -> onnx.ModelProto:
    """Untrained Conv-Relu-GAP-Gemm with a negative bias: scores unrelated to any label, all below 0.5."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 1, 3, 3)) * 0.5).astype(np.float32), "cw"),
             numpy_helper.from_array(np.zeros(8, np.float32), "cb"),
             numpy_helper.from_array(rng.standard_normal((1, 8)).astype(np.float32), "gw"),
             numpy_helper.from_array(np.array([bias], np.float32), "gb")]
    nodes = [helper.make_node("Conv", ["input", "cw", "cb"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "gw", "gb"], ["logits"], name="fc", transB=1)]
    return _model(nodes, inits, "logits", [1, 1], size)


def brightness_classifier(gain: float = 4.0, size: int = 32) -> onnx.ModelProto:
    """logit = gain * mean(x): a classifier of image brightness, so a test decides every score by the pixels."""
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(np.array([[gain]], np.float32), "gw"),
             numpy_helper.from_array(np.zeros(1, np.float32), "gb")]
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "gw", "gb"], ["logits"], name="fc", transB=1)]
    return _model(nodes, inits, "logits", [1, 1], size)


def write_gray(folder: Path, name: str, level: int, bumped: int = 0, size: int = 32) -> str:
    """A flat gray image with ``bumped`` pixels one grey level brighter: means that differ by a fraction of a
    level, far finer than an 8-bit activation step calibrated on varied images."""
    folder.mkdir(parents=True, exist_ok=True)
    img = np.full((size, size), level, np.uint8)
    img.reshape(-1)[:bumped] += 1
    cv2.imwrite(str(folder / name), img)
    return name


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.write_text(",".join(header) + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows))
