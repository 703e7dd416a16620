"""Calibration / validation folders in the export toolchain's format, from the synthetic generators.

    python -m models.datasets us  --out DIR --n N --seed S     # segmentation: DIR/us_00000.png + DIR/masks/us_00000.png
    python -m models.datasets cxr --out DIR --n N --seed S     # classification: DIR/cxr_00000.png + DIR/labels.csv
    python -m models.datasets cxr --out DIR --n N --format dicom   # ... as CR DICOM (MONOCHROME1 and 2 alternate)
    python -m models.datasets nodule --out DIR --n N --seed S  # detection: DIR/nodule_00000.png + DIR/boxes.json

Formats (what a reader must do to get the device's display values):
- US images: 8-bit grayscale PNG = display values as-is (the fan region is in dataset.json; the
  us-free-fluid model uses the full frame, so readers need not crop). Masks: 8-bit PNG, 255 = fluid.
- CXR images: 16-bit grayscale PNG of the windowed display values scaled to 0-65535 (MONOCHROME1
  already inverted): display = png / 65535 as float32. DICOM: stored values + window, decode as the
  device does. labels.csv: header ``file,label``, label 1 = focal opacity present. Classes alternate,
  so any prefix of a set is balanced.
- Nodule images: like CXR images (16-bit PNG or ``--format dicom``), phantoms without a focal opacity and
  with ``index % 4`` small lung nodules (0-3, so any prefix of four holds each count). boxes.json maps
  each file to ``[[x0, y0, x1, y1, "nodule"], ...]`` in frame pixels (the nodule's bounding square; an
  empty list for an image without nodules), what the export toolchain reads for a detect model.

Sample i of a set depends only on (seed, i): ``--n 50`` is a prefix of ``--n 500`` with the same seed.
The training scripts draw from seeds that these defaults never use (see TRAIN_SEED in each script).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.errors import InputError
from edge.frames import Region

from . import synth_ultrasound as sus
from . import synth_xray as sxr
from .atomic import write_bytes, write_dicom, write_png, write_text

KINDS = ("us", "cxr", "nodule")
NODULE_LABEL = "nodule"
FORMATS = ("png", "dicom")


def sample_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index)])


@dataclass(frozen=True)
class UsSample:
    pixels: np.ndarray  # uint8 HxW display values
    mask: np.ndarray  # uint8 HxW 0/1
    region: Region
    spacing_mm: float


@dataclass(frozen=True)
class CxrSample:
    phantom: sxr.XrayPhantom
    pixels: np.ndarray  # float32 HxW display values in [0, 1]

    @property
    def label(self) -> int:
        return self.phantom.label


def us_sample(seed: int, index: int, size: tuple[int, int] = sus.DEFAULT_SIZE) -> UsSample:
    rng = sample_rng(seed, index)
    scene = sus.random_scene(rng, size)
    k = int(rng.choice([0, 1, 1, 2, 3]))
    pockets = [sus.random_pocket(rng, scene.geometry, size) for _ in range(k)]
    fluid = sus.pockets_mask(pockets, scene.sector)
    img = sus.render(scene, fluid, sus._scatter(rng, size))
    return UsSample(img, fluid.astype(np.uint8), sus.region_of(scene.sector), scene.geometry.spacing_mm)


def cxr_sample(seed: int, index: int, size: int = 512, photometric: str | None = None) -> CxrSample:
    """Label alternates with the index (balanced prefixes); photometric alternates every other pair."""
    rng = sample_rng(seed, index)
    pi = photometric or ("MONOCHROME1" if (index // 2) % 2 else "MONOCHROME2")
    p = sxr.make_phantom(rng, size=size, opacity=bool(index % 2), photometric=pi)
    return CxrSample(p, sxr.phantom_display(p))


def nodule_sample(seed: int, index: int, size: int = 512, photometric: str | None = None) -> CxrSample:
    """``index % 4`` nodules, no focal opacity; photometric alternates every other pair, as for cxr."""
    rng = sample_rng(seed, index)
    pi = photometric or ("MONOCHROME1" if (index // 2) % 2 else "MONOCHROME2")
    p = sxr.make_phantom(rng, size=size, opacity=False, photometric=pi, nodules=index % 4)
    return CxrSample(p, sxr.phantom_display(p))


def nodule_boxes(phantom: sxr.XrayPhantom, ndigits: int = 2) -> list[list]:
    """Ground truth in the export toolchain's detect format: [x0, y0, x1, y1, label] per nodule, frame pixels."""
    return [[*(round(float(v), ndigits) for v in n.box), NODULE_LABEL] for n in phantom.nodules]


def read_display_png(path: Path) -> np.ndarray:
    """A dataset PNG as the device's display values: uint8 as-is, 16-bit as float32 in [0, 1]."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(f"{path}: not a readable PNG image")
    if img.ndim != 2:
        raise InputError(f"{path}: expected a grayscale PNG, got shape {img.shape}")
    if img.dtype == np.uint16:
        return (img.astype(np.float32) / 65535.0).astype(np.float32)
    return img


def write_us(out: Path, n: int, seed: int) -> Path:
    out = Path(out)
    files = {}
    for i in range(n):
        s = us_sample(seed, i)
        name = f"us_{i:05d}.png"
        write_png(out / name, s.pixels)
        write_png(out / "masks" / name, s.mask * np.uint8(255))
        r = s.region
        files[name] = {"region": [r.x0, r.y0, r.x1, r.y1], "spacing_mm": [s.spacing_mm, s.spacing_mm],
                       "fluid_px": int(s.mask.sum())}
    _write_meta(out, "us", n, seed, "png", files)
    return out


def write_cxr(out: Path, n: int, seed: int, fmt: str = "png", size: int = 512) -> Path:
    from .synth_dicom import cr_dataset

    out = Path(out)
    rows, files = [], {}
    for i in range(n):
        s = cxr_sample(seed, i, size=size)
        if fmt == "png":
            name = f"cxr_{i:05d}.png"
            write_png(out / name, np.round(s.pixels * 65535.0).astype(np.uint16))
        else:
            name = f"cxr_{i:05d}.dcm"
            write_dicom(out / name, cr_dataset(s.phantom, key=f"cxr-{seed}-{i}", patient_id=f"FAKE-{seed}-{i:05d}"))
        rows.append((name, s.label))
        o = s.phantom.opacity
        files[name] = {"label": s.label, "photometric": s.phantom.photometric, "spacing_mm": list(s.phantom.spacing_mm),
                       "opacity": None if o is None else {"cx": o.cx, "cy": o.cy, "radius": o.radius, "side": o.side}}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "label"])
    w.writerows(rows)
    write_text(out / "labels.csv", buf.getvalue())
    _write_meta(out, "cxr", n, seed, fmt, files)
    return out


def write_nodule(out: Path, n: int, seed: int, fmt: str = "png", size: int = 512) -> Path:
    from .synth_dicom import cr_dataset

    out = Path(out)
    boxes, files = {}, {}
    for i in range(n):
        s = nodule_sample(seed, i, size=size)
        if fmt == "png":
            name = f"nodule_{i:05d}.png"
            write_png(out / name, np.round(s.pixels * 65535.0).astype(np.uint16))
        else:
            name = f"nodule_{i:05d}.dcm"
            write_dicom(out / name, cr_dataset(s.phantom, key=f"nodule-{seed}-{i}", patient_id=f"FAKE-{seed}-{i:05d}"))
        boxes[name] = nodule_boxes(s.phantom)
        files[name] = {"photometric": s.phantom.photometric, "spacing_mm": list(s.phantom.spacing_mm),
                       "nodules": [{"cx": round(o.cx, 2), "cy": round(o.cy, 2), "radius": round(o.radius, 2),
                                    "radius_mm": o.radius_mm, "side": o.side} for o in s.phantom.nodules]}
    write_bytes(out / "boxes.json", (json.dumps(boxes, indent=1) + "\n").encode())
    _write_meta(out, "nodule", n, seed, fmt, files)
    return out


def _write_meta(out: Path, kind: str, n: int, seed: int, fmt: str, files: dict) -> None:
    meta = {
        "generator": f"models.datasets {kind}",
        "kind": kind,
        "n": n,
        "seed": seed,
        "format": fmt,
        "note": "synthetic data for demonstration only; not for clinical use",
        "pixels": ("8-bit PNG display values" if kind == "us" else
                   "16-bit PNG, display = value / 65535" if fmt == "png" else "CR DICOM, linear VOI window"),
        "files": files,
    }
    write_bytes(out / "dataset.json", json.dumps(meta, indent=1).encode())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.datasets", description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=KINDS)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format", choices=FORMATS, default="png", help="cxr and nodule: png (default) or dicom")
    a = ap.parse_args(argv)
    if a.n <= 0:
        ap.error("--n must be positive")
    if a.kind == "us" and a.format != "png":
        ap.error("--format dicom is only available for cxr and nodule")
    if a.kind == "us":
        write_us(a.out, a.n, a.seed)
    elif a.kind == "nodule":
        write_nodule(a.out, a.n, a.seed, a.format)
    else:
        write_cxr(a.out, a.n, a.seed, a.format)
    print(f"wrote {a.n} {a.kind} samples to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
