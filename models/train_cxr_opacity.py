"""Train the reference focal-opacity classifier and export it to ONNX.

    python -m models.train_cxr_opacity                   # full run (<= 6 min on 2 cores), writes models/cxr_opacity/
    python -m models.train_cxr_opacity --steps 3 --n-train 8 --n-eval 8 --out SCRATCH_DIR    # smoke run

Training images are phantoms turned into display values by the same VOI windowing the device's DICOM
decoder applies (`synth_xray.display`, MONOCHROME1 inverted), wrapped in an `edge.frames.Frame` and
turned into tensors by `edge.inference.preprocess.Preprocessor` with the spec from model.yaml. Phantoms are
generated at several matrix sizes so the network does not depend on one detector resolution; the
held-out set is generated at 512x512 like the demo samples. Fixed steps and seeds: reproducible.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edge.frames import Frame
from edge.inference.preprocess import Preprocessor

from . import model_card
from . import training as T
from .datasets import cxr_sample, sample_rng
from .synth_xray import make_phantom, phantom_display

MODEL_DIR = T.MODELS_DIR / "cxr_opacity"
TRAIN_SEED = 810_001
EVAL_SEED = 820_001
TRAIN_SIZES = (320, 384, 448)
CXR_TASK = (
    "Classifies a frontal chest radiograph as containing a focal lung opacity (a dense rounded lesion "
    "inside a lung field) or not. Output: one logit for the whole image."
)
CXR_DATA = (
    "- data: `models/synth_xray.py` phantoms (lungs, ribs, clavicles, heart/mediastinum, spine, lung "
    "markings, quantum noise; dense lesion of radius 6-13% of the half-width at 0.7-1.3x the "
    "lung-to-soft-tissue contrast) at 320/384/448 px, in pairs that share anatomy and differ by the lesion. "
    "12-bit stored values windowed exactly like the device's DICOM decoder (MONOCHROME1 and 2). Augmented in "
    "display space (contrast, brightness, gamma, noise, shifts); tensors from `edge.inference.preprocess.Preprocessor`. "
    "The 1/16-scale evidence map is also supervised with the lesion position during training."
)


class OpacityNet(nn.Module):
    """Four stride-2 stages of Conv+BN+ReLU (16-96 channels) -> 1x1 conv evidence map (1/16 scale) ->
    global max -> one logit.

    A focal opacity covers a few cells of the evidence map; the max keeps it from being averaged away by
    normal anatomy, and during training the map itself is supervised with the opacity's known position,
    which teaches the network where to look far faster than the image label alone (the exported graph
    is just the classifier: Conv/Relu/ReduceMax).
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 96)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for i, c in enumerate(widths):
            layers.append(T.ConvBNReLU(cin, c, stride=2))
            if i > 0:
                layers.append(T.ConvBNReLU(c, c))
            cin = c
        self.features = nn.Sequential(*layers)
        self.evidence = nn.Conv2d(cin, 1, 1)
        self.stride = 2 ** len(widths)

    def evidence_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.evidence(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.evidence_map(x).amax(dim=(2, 3))


def augment(pixels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    """Display-space augmentation: exposure/window differences, noise, small positioning shifts.

    Returns the image and the (dy, dx) shift applied, so the opacity's position can follow it.
    """
    x = np.clip((pixels - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.08, 0.08), 0, 1)
    x = x ** rng.uniform(0.8, 1.25)
    x = x + rng.normal(0, rng.uniform(0, 0.03), x.shape)
    h, w = x.shape
    dy, dx = (int(v) for v in rng.integers(-h // 32, h // 32 + 1, size=2))
    x = np.roll(x, (dy, dx), axis=(0, 1))
    return np.clip(x, 0, 1).astype(np.float32), (dy, dx)


def evidence_target(opacity, shift: tuple[int, int], geom, grid: int, stride: int) -> np.ndarray:
    """Cells of the evidence map that cover the opacity's dense core (all zero for a normal image)."""
    t = np.zeros((1, grid, grid), np.float32)
    if opacity is None:
        return t
    cx = geom.pad_left + (opacity.cx + shift[1] - geom.roi.x0) * geom.scale_x
    cy = geom.pad_top + (opacity.cy + shift[0] - geom.roi.y0) * geom.scale_y
    r = max(0.6 * opacity.radius * geom.scale_x, 0.5 * stride)
    c = (np.arange(grid) + 0.5) * stride
    t[0] = ((c[None, :] - cx) ** 2 + (c[:, None] - cy) ** 2 <= r * r).astype(np.float32)
    if not t.any():
        t[0, min(grid - 1, max(0, int(cy // stride))), min(grid - 1, max(0, int(cx // stride)))] = 1.0
    return t


def tensor(pre: Preprocessor, pixels: np.ndarray, spacing=None) -> np.ndarray:
    return tensor_geom(pre, pixels, spacing)[0]


def tensor_geom(pre: Preprocessor, pixels: np.ndarray, spacing=None):
    x, geom = pre.apply(Frame(pixels=pixels, modality="CR", source="train", spacing_mm=spacing))
    return x[0], geom


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney U form (ties count half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def evaluate(onnx_path: Path, spec, n: int, seed: int, threshold: float, band: tuple[float, float]) -> dict:
    """Held-out metrics through ORT on fresh 512x512 phantoms (both photometric interpretations)."""
    sess = T.ort_session(onnx_path)
    pre = Preprocessor(spec)
    scores, labels = [], []
    for i in range(n):
        s = cxr_sample(seed, i)
        x = tensor(pre, s.pixels)[None]
        z = float(sess.run(["logits"], {"input": x})[0].reshape(-1)[0])
        scores.append(1 / (1 + np.exp(-z)))
        labels.append(s.label)
    p, y = np.array(scores), np.array(labels)
    pred = p >= threshold
    tp, tn = int((pred & (y == 1)).sum()), int((~pred & (y == 0)).sum())
    return {
        "images": n,
        "positives": int(y.sum()),
        "auroc": round(auroc(p, y), 4),
        "sensitivity_at_threshold": round(tp / max(1, int(y.sum())), 4),
        "specificity_at_threshold": round(tn / max(1, int((y == 0).sum())), 4),
        "accuracy_at_threshold": round(float((pred == (y == 1)).mean()), 4),
        "in_review_band_fraction": round(float(((p >= band[0]) & (p <= band[1])).mean()), 4),
        "threshold": threshold,
        "data": f"models.datasets cxr --seed {seed} --n {n} (synthetic 512x512, disjoint from training)",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.train_cxr_opacity", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=MODEL_DIR)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--n-train", type=int, default=1400, help="distinct phantoms (augmented each use)")
    ap.add_argument("--n-eval", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0, help="torch/augmentation seed")
    ap.add_argument("--lr", type=float, default=3e-3)
    a = ap.parse_args(argv)

    clock = T.Stopwatch()
    T.setup_torch(a.seed)
    meta = T.load_model_yaml(MODEL_DIR)
    spec = T.preprocess_spec(meta)
    pre = Preprocessor(spec)
    rng = np.random.default_rng([a.seed, 29])

    pool = []
    for i in range(a.n_train):
        # pairs: phantoms 2j and 2j+1 share their anatomy and differ only by the opacity (and noise), so
        # the network cannot separate the classes by memorising patients
        r = sample_rng(TRAIN_SEED, i // 2)
        size = TRAIN_SIZES[(i // 2) % len(TRAIN_SIZES)]
        photometric = "MONOCHROME1" if (i // 2) % 2 else "MONOCHROME2"
        ph = make_phantom(r, size=size, opacity=bool(i % 2), photometric=photometric)
        pool.append((phantom_display(ph), ph.opacity))
    t_data = clock.seconds()

    model = OpacityNet()
    grid = spec.size[0] // model.stride
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    model.train()
    for step in range(a.steps):
        idx = rng.integers(0, len(pool), size=a.batch)
        xs, ts = [], []
        for k in idx:
            img, op = pool[int(k)]
            aug, shift = augment(img, rng)
            x, geom = tensor_geom(pre, aug)
            xs.append(x)
            ts.append(evidence_target(op, shift, geom, grid, model.stride))
        xb, tb = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ts))
        yb = torch.tensor([[float(pool[int(k)][1] is not None)] for k in idx])
        for g in opt.param_groups:
            g["lr"] = T.cosine_lr(step, a.steps, a.lr)
        emap = model.evidence_map(xb)
        loss = F.binary_cross_entropy_with_logits(emap.amax(dim=(2, 3)), yb) + F.binary_cross_entropy_with_logits(
            emap, tb, pos_weight=torch.tensor(10.0))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == a.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {clock.seconds():.0f}s", flush=True)
    t_train = clock.seconds()

    model.eval()
    checks = [tensor(pre, pool[k][0])[None] for k in range(min(3, len(pool)))]
    a.out.mkdir(parents=True, exist_ok=True)
    onnx_path = a.out / "model.onnx"
    export = T.export_onnx(model, spec.input_shape, onnx_path, checks)
    metrics = evaluate(onnx_path, spec, a.n_eval, EVAL_SEED, float(meta["threshold"]), tuple(meta["review_band"]))
    result = {
        "model": meta["name"], "version": meta["version"], "input_shape": list(spec.input_shape),
        "training": {"steps": a.steps, "batch": a.batch, "n_train_images": a.n_train, "sizes": list(TRAIN_SIZES),
                     "lr": a.lr, "seed": a.seed, "data_seed": TRAIN_SEED, "data_seconds": t_data,
                     "train_seconds": round(t_train - t_data, 1), "total_seconds": clock.seconds(),
                     "total_cpu_seconds": clock.cpu_seconds(),
                     "torch": torch.__version__, "threads": torch.get_num_threads()},
        "export": export, "held_out": metrics,
    }
    T.write_json(a.out / "metrics.json", result)
    T.write_card(a.out / "MODEL_CARD.md", model_card.render(meta, result, CXR_TASK, CXR_DATA))
    print(f"held-out: {metrics}")
    print(f"wrote {onnx_path} ({export['bytes']} bytes) in {clock.seconds():.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
