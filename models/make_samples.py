"""Regenerate the committed demo inputs in models/samples/ (deterministic: same bytes every run).

    python -m models.make_samples [--out models/samples]

- us_cine.dcm: Ultrasound Multi-frame Image Storage, 60 frames 256x256 MONOCHROME2 8-bit, RLE Lossless,
  25 fps, Sequence of Ultrasound Regions (fan bounding box, PhysicalDelta in cm). Free fluid appears
  about a third of the way in, stays, and is gone again for the last quarter.
- cxr_opacity.dcm: CR, 512x512, 12 bits stored, MONOCHROME1, focal opacity in one lung.
- cxr_normal.dcm: CR, 512x512, 12 bits stored, MONOCHROME2, no opacity.
- cxr_nodule.dcm: CR, 384x384 (the same ~35 cm field of view at a coarser pixel spacing, which keeps the
  samples folder small), 12 bits stored, MONOCHROME1, two small lung nodules, no opacity.
- truth.json: the ground truth behind them (fluid frames and areas, opacity position, nodule boxes in
  frame pixels), for tests and for checking the demo's findings.

Patient identity in every file is visibly fake. The seeds were chosen once so the examples are clear
ones (a visible opacity, a pocket of moderate size); they are not a sample of typical difficulty.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .atomic import write_bytes, write_dicom
from .datasets import nodule_boxes
from .synth_dicom import cr_dataset, us_multiframe_dataset
from .synth_ultrasound import make_cine
from .synth_xray import make_phantom

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
US_SEED, US_FRAMES, US_FPS, US_SCHEDULE = 4, 60, 25.0, (0.3, 0.75)
CXR_OPACITY_SEED, CXR_NORMAL_SEED = 12, 16
CXR_NODULE_SEED, CXR_NODULE_SIZE, CXR_NODULE_COUNT, CXR_NODULE_PHOTOMETRIC = 0, 384, 2, "MONOCHROME1"


def make_samples(out: Path = SAMPLES_DIR) -> dict:
    out = Path(out)
    cine = make_cine(US_SEED, n_frames=US_FRAMES, frame_rate=US_FPS, n_pockets=1, schedule=US_SCHEDULE)
    write_dicom(out / "us_cine.dcm", us_multiframe_dataset(
        cine.frames, cine.region, cine.spacing_mm, cine.frame_rate, key="sample-us-cine",
        patient_id="FAKE-US-0001", compression="rle"))
    area_px = cine.masks.reshape(len(cine.masks), -1).sum(1)
    fluid = np.nonzero(area_px > 0)[0]
    truth = {
        "us_cine.dcm": {
            "frames": US_FRAMES, "frame_rate": US_FPS, "size": list(cine.frames.shape[1:]),
            "region": [cine.region.x0, cine.region.y0, cine.region.x1, cine.region.y1],
            "spacing_mm": round(cine.spacing_mm, 6),
            "fluid_frames": [int(fluid[0]), int(fluid[-1])] if len(fluid) else None,
            "fluid_area_mm2": [round(float(a) * cine.spacing_mm**2, 1) for a in area_px],
        }
    }
    for name, seed, opacity, pi in (("cxr_opacity.dcm", CXR_OPACITY_SEED, True, "MONOCHROME1"),
                                    ("cxr_normal.dcm", CXR_NORMAL_SEED, False, "MONOCHROME2")):
        p = make_phantom(seed, size=512, opacity=opacity, photometric=pi)
        write_dicom(out / name, cr_dataset(p, key=f"sample-{name}", patient_id=f"FAKE-CXR-{seed:04d}"))
        o = p.opacity
        truth[name] = {
            "label": p.label, "photometric": pi, "window": list(p.window), "spacing_mm": list(p.spacing_mm),
            "opacity": None if o is None else {"cx": round(o.cx, 1), "cy": round(o.cy, 1), "radius": round(o.radius, 1),
                                               "side": o.side},
        }
    p = nodule_phantom()
    write_dicom(out / "cxr_nodule.dcm", cr_dataset(p, key="sample-cxr_nodule.dcm", patient_id=f"FAKE-CXR-{CXR_NODULE_SEED:04d}"))
    truth["cxr_nodule.dcm"] = {
        "label": 0, "photometric": p.photometric, "window": list(p.window), "spacing_mm": list(p.spacing_mm),
        "size": list(p.stored.shape), "opacity": None,
        "nodules": [{"cx": round(n.cx, 1), "cy": round(n.cy, 1), "radius": round(n.radius, 1), "radius_mm": n.radius_mm,
                     "side": n.side} for n in p.nodules],
        "boxes": nodule_boxes(p, 1),
    }
    write_bytes(out / "truth.json", (json.dumps(truth, indent=1) + "\n").encode())
    return truth


def nodule_phantom():
    """The phantom behind cxr_nodule.dcm (tests regenerate it to compare with the decoded pixels)."""
    return make_phantom(CXR_NODULE_SEED, size=CXR_NODULE_SIZE, opacity=False, photometric=CXR_NODULE_PHOTOMETRIC,
                        nodules=CXR_NODULE_COUNT)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.make_samples", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=SAMPLES_DIR)
    a = ap.parse_args(argv)
    make_samples(a.out)
    for p in sorted(a.out.iterdir()):
        print(f"{p.name:20s} {p.stat().st_size:9d} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
