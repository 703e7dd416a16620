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
            "preprocess": {**PRE, "size": [size, size]}, **extra}


def save_model(folder: Path, model: onnx.ModelProto, spec: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    (folder / "model.yaml").write_text(yaml.safe_dump(spec))
    return folder / "model.onnx"


def quiet(_msg: str) -> None:
    pass
