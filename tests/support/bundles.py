"""Tiny real ONNX models and bundles for the backend/task/pipeline/daemon tests.

The models are built with onnx.helper so the tests run real ONNX Runtime sessions in milliseconds: the
segmentation "model" marks bright pixels as the finding (logits = 20 * (x - 0.5)), the classifier turns
mean brightness into a probability. That makes the expected findings computable from the test image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper

from edge.inference.preprocess import PreprocessSpec
from export.bundle_writer import finalize_manifest


def _const(name: str, value: float) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name + "_t", TensorProto.FLOAT, [], [value]))


def seg_model(size: int = 64) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, size, size])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, size, size])
    nodes = [_const("half", 0.5), _const("gain", 20.0),
             helper.make_node("Sub", ["input", "half"], ["centered"]),
             helper.make_node("Mul", ["centered", "gain"], ["logits"])]
    g = helper.make_graph(nodes, "toy_seg", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def cls_model(size: int = 32) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, size, size])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1])
    nodes = [helper.make_node("ReduceMean", ["input"], ["m"], axes=[2, 3], keepdims=0),
             _const("half", 0.5), _const("gain", 20.0),
             helper.make_node("Sub", ["m", "half"], ["c"]),
             helper.make_node("Mul", ["c", "gain"], ["logits"])]
    g = helper.make_graph(nodes, "toy_cls", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=9)
    return m


def write_bundle(root: Path, task: str = "segment", size: int = 64, key: Ed25519PrivateKey | None = None,
                 labels=("free_fluid",), urgent=("free_fluid",), threshold=0.5, review_band=(0.4, 0.6),
                 postprocess: dict | None = None, name: str = "toy-seg", std: float = 1.0) -> Path:
    root.mkdir(parents=True)
    model = seg_model(size) if task == "segment" else cls_model(size)
    onnx.save(model, root / "model.fp32.onnx")
    spec = PreprocessSpec(size=(size, size), std=(std,))
    out_shape = [1, 1, size, size] if task == "segment" else [1, 1]
    manifest = {
        "schema_version": 1, "name": name, "version": "0.0.1", "task": task, "labels": list(labels),
        "input": {"name": "input", "shape": [1, 1, size, size]},
        "outputs": [{"name": "logits", "shape": out_shape, "activation": "sigmoid"}],
        "preprocess": spec.to_dict(), "preprocess_sha256": spec.sha256(),
        "variants": {"fp32": {"file": "model.fp32.onnx", "precision": "fp32"}},
        "default_variant": "fp32", "threshold": threshold, "review_band": list(review_band),
        "urgent_labels": list(urgent), "postprocess": postprocess or {"min_area_px": 4},
    }
    data = finalize_manifest(root, manifest)  # export's manifest writer: hashes every file
    if key is not None:
        (root / "manifest.sig").write_bytes(key.sign(data))
    return root


def write_public_key(path: Path, key: Ed25519PrivateKey) -> Path:
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def blob_image(h: int = 128, w: int = 128, box: tuple[int, int, int, int] | None = (32, 32, 64, 64),
               value: int = 230) -> np.ndarray:
    """Dark frame with one bright rectangle (x0, y0, x1, y1): the toy segmenter's 'finding'."""
    img = np.full((h, w), 20, np.uint8)
    if box is not None:
        x0, y0, x1, y1 = box
        img[y0:y1, x0:x1] = value
    return img
