"""Train the reference free-fluid segmentation model and export it to ONNX.

    python -m models.train_us_free_fluid                 # full run (<= 6 min on 2 cores), writes models/us_free_fluid/
    python -m models.train_us_free_fluid --steps 3 --n-train 8 --n-eval 4 --out SCRATCH_DIR   # smoke run

Every training tensor is produced by `edge.inference.preprocess.Preprocessor` from an `edge.frames.Frame`, with the
preprocess spec read from model.yaml, so the network learns on exactly what the device will feed it.
Training is a fixed number of steps (not wall time) with fixed seeds: two runs give the same weights.
Augmentations act on display pixels before preprocessing (gain, gamma, noise, small shifts, mirror),
and the network trains on random crops of the preprocessed tensor (it is fully convolutional; crops
cut the cost four-fold) before exporting at the full input size.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edge.frames import Frame
from edge.inference.preprocess import Preprocessor

from . import model_card
from . import training as T
from .datasets import us_sample

MODEL_DIR = T.MODELS_DIR / "us_free_fluid"
TRAIN_SEED = 910_001  # data seed for training frames; datasets.py defaults and evaluation use others
EVAL_SEED = 920_001  # held-out frames reported in the model card
US_TASK = (
    "Segments anechoic free fluid (dark pockets with smooth irregular borders) in B-mode ultrasound frames, "
    "as in a FAST exam. Output: one logit per model-input pixel; the device maps the mask back to the frame "
    "and measures connected components in mm^2 using the frame's pixel spacing."
)
US_DATA = (
    "- data: `models/synth_ultrasound.py` frames (256x256: fan geometry, speckle from scatterers and a PSF, "
    "log compression, depth attenuation with TGC, hypoechoic organs and acoustic shadows as distractors, 0-3 "
    "anechoic pockets, burned-in text). Augmented in display space (gain, gamma, noise, shifts, mirror) and "
    "turned into tensors by `edge.inference.preprocess.Preprocessor`; trained on random 64x64 crops of the 128x128 "
    "input (fully convolutional), exported at full size."
)


class UNet(nn.Module):
    """4-level U-Net (base 8 channels): Conv+BN+ReLU, MaxPool, bilinear Resize, skip concatenation."""

    def __init__(self, base: int = 8) -> None:
        super().__init__()
        c = [base, base * 2, base * 4, base * 8]
        self.e1 = nn.Sequential(T.ConvBNReLU(1, c[0]), T.ConvBNReLU(c[0], c[0]))
        self.e2 = nn.Sequential(T.ConvBNReLU(c[0], c[1]), T.ConvBNReLU(c[1], c[1]))
        self.e3 = nn.Sequential(T.ConvBNReLU(c[1], c[2]), T.ConvBNReLU(c[2], c[2]))
        self.b = nn.Sequential(T.ConvBNReLU(c[2], c[3]), T.ConvBNReLU(c[3], c[3]))
        self.d3 = nn.Sequential(T.ConvBNReLU(c[3] + c[2], c[2]), T.ConvBNReLU(c[2], c[2]))
        self.d2 = nn.Sequential(T.ConvBNReLU(c[2] + c[1], c[1]), T.ConvBNReLU(c[1], c[1]))
        self.d1 = nn.Sequential(T.ConvBNReLU(c[1] + c[0], c[0]), T.ConvBNReLU(c[0], c[0]))
        self.head = nn.Conv2d(c[0], 1, 1)

    @staticmethod
    def _up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.e1(x)
        e2 = self.e2(F.max_pool2d(e1, 2))
        e3 = self.e3(F.max_pool2d(e2, 2))
        b = self.b(F.max_pool2d(e3, 2))
        d3 = self.d3(torch.cat([self._up(b), e3], 1))
        d2 = self.d2(torch.cat([self._up(d3), e2], 1))
        d1 = self.d1(torch.cat([self._up(d2), e1], 1))
        return self.head(d1)


def augment(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Display-space augmentation: what differs between carts, presets and operators."""
    x = img.astype(np.float32) / 255.0
    sector = x > 0
    x = np.clip(x * rng.uniform(0.7, 1.3), 0, 1) ** rng.uniform(0.75, 1.35)
    x = x + rng.normal(0, rng.uniform(0, 0.05), x.shape).astype(np.float32) * sector
    x = np.clip(x, 0, 1)
    dy, dx = (int(v) for v in rng.integers(-10, 11, size=2))
    x = np.roll(x, (dy, dx), axis=(0, 1))
    m = np.roll(mask, (dy, dx), axis=(0, 1))
    if rng.random() < 0.5:
        x, m = x[:, ::-1], m[:, ::-1]
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(m)


def to_tensors(pre: Preprocessor, mask_pre: Preprocessor, img: np.ndarray, mask: np.ndarray, region=None):
    """(input tensor, model-space target) through the device's preprocessing; the mask takes the same path."""
    frame = Frame(pixels=img, modality="US", source="train", region=region)
    x, _ = pre.apply(frame)
    y, _ = mask_pre.apply_pixels(mask.astype(np.float32), region)
    return x[0], (y[0] > 0.5).astype(np.float32)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2, 3))
    den = p.sum((1, 2, 3)) + target.sum((1, 2, 3))
    return (1 - (2 * inter + 1) / (den + 1)).mean()


def evaluate(onnx_path: Path, spec, n: int, seed: int, threshold: float) -> dict:
    """Held-out metrics in frame space: model output mapped back through the preprocessing geometry."""
    sess = T.ort_session(onnx_path)
    pre = Preprocessor(spec)
    inter = union = psum = tsum = 0
    dices, ious, fp_frames, empty_frames = [], [], 0, 0
    for i in range(n):
        s = us_sample(seed, i)
        x, geom = pre.apply(Frame(pixels=s.pixels, modality="US", source="eval", region=s.region))
        logits = sess.run(["logits"], {"input": x})[0][0, 0]
        pred = geom.mask_to_frame((logits > np.log(threshold / (1 - threshold))).astype(np.uint8)) > 0
        gt = s.mask > 0
        a, b = int((pred & gt).sum()), int((pred | gt).sum())
        inter, union, psum, tsum = inter + a, union + b, psum + int(pred.sum()), tsum + int(gt.sum())
        if gt.any():
            dices.append(2 * a / (pred.sum() + gt.sum()))
            ious.append(a / b)
        else:
            empty_frames += 1
            fp_frames += int(pred.sum() * s.spacing_mm**2 >= 50.0)
    return {
        "frames": n,
        "frames_with_fluid": len(dices),
        "dice_pooled": round(2 * inter / max(1, psum + tsum), 4),
        "iou_pooled": round(inter / max(1, union), 4),
        "dice_mean_fluid_frames": round(float(np.mean(dices)), 4) if dices else None,
        "iou_mean_fluid_frames": round(float(np.mean(ious)), 4) if ious else None,
        "false_positive_frames_ge_50mm2": f"{fp_frames}/{empty_frames}",
        "threshold": threshold,
        "data": f"models.datasets us --seed {seed} --n {n} (synthetic, disjoint from training)",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.train_us_free_fluid", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=MODEL_DIR)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=64, help="training crop (multiple of 8); export is full size")
    ap.add_argument("--n-train", type=int, default=1200, help="distinct synthetic frames (augmented each use)")
    ap.add_argument("--n-eval", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0, help="torch/augmentation seed")
    ap.add_argument("--lr", type=float, default=3e-3)
    a = ap.parse_args(argv)

    clock = T.Stopwatch()
    T.setup_torch(a.seed)
    meta = T.load_model_yaml(MODEL_DIR)
    spec = T.preprocess_spec(meta)
    pre = Preprocessor(spec)
    mask_pre = Preprocessor(replace(spec, mean=(0.0,), std=(1.0,), interpolation="area"))
    rng = np.random.default_rng([a.seed, 17])

    pool = [us_sample(TRAIN_SEED, i) for i in range(a.n_train)]
    t_data = clock.seconds()
    model = UNet()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    H, W = spec.size  # noqa: N806
    cs = min(a.crop, H, W)
    model.train()
    for step in range(a.steps):
        xs, ys = [], []
        for _ in range(a.batch):
            s = pool[int(rng.integers(0, len(pool)))]
            img, m = augment(s.pixels, s.mask, rng)
            x, y = to_tensors(pre, mask_pre, img, m, s.region)
            # crops biased towards fluid so the rare positive pixels are seen often enough
            if y.any() and rng.random() < 0.6:
                yy, xx = np.nonzero(y[0])
                k = int(rng.integers(0, len(yy)))
                cy = int(np.clip(yy[k] - cs // 2 + rng.integers(-cs // 4, cs // 4 + 1), 0, H - cs))
                cx = int(np.clip(xx[k] - cs // 2 + rng.integers(-cs // 4, cs // 4 + 1), 0, W - cs))
            else:
                cy, cx = int(rng.integers(0, H - cs + 1)), int(rng.integers(0, W - cs + 1))
            xs.append(x[:, cy : cy + cs, cx : cx + cs])
            ys.append(y[:, cy : cy + cs, cx : cx + cs])
        xb, yb = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
        for g in opt.param_groups:
            g["lr"] = T.cosine_lr(step, a.steps, a.lr)
        logits = model(xb)
        loss = F.binary_cross_entropy_with_logits(logits, yb) + dice_loss(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == a.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {clock.seconds():.0f}s", flush=True)
    t_train = clock.seconds()

    model.eval()
    checks = [to_tensors(pre, mask_pre, s.pixels, s.mask, s.region)[0][None] for s in pool[:3]]
    a.out.mkdir(parents=True, exist_ok=True)
    onnx_path = a.out / "model.onnx"
    export = T.export_onnx(model, spec.input_shape, onnx_path, checks)
    metrics = evaluate(onnx_path, spec, a.n_eval, EVAL_SEED, float(meta["threshold"]))
    result = {
        "model": meta["name"], "version": meta["version"], "input_shape": list(spec.input_shape),
        "training": {"steps": a.steps, "batch": a.batch, "crop": cs, "n_train_frames": a.n_train, "lr": a.lr,
                     "seed": a.seed, "data_seed": TRAIN_SEED, "data_seconds": t_data,
                     "train_seconds": round(t_train - t_data, 1), "total_seconds": clock.seconds(),
                     "total_cpu_seconds": clock.cpu_seconds(),
                     "torch": torch.__version__, "threads": torch.get_num_threads()},
        "export": export, "held_out": metrics,
    }
    T.write_json(a.out / "metrics.json", result)
    T.write_card(a.out / "MODEL_CARD.md", model_card.render(meta, result, US_TASK, US_DATA))
    print(f"held-out: {metrics}")
    print(f"wrote {onnx_path} ({export['bytes']} bytes) in {clock.seconds():.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
