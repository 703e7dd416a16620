"""`medge inspect FILE`: what the daemon would see in a file, and whether it would accept it.

On-site staff use this when a modality's images "do not show up": it reads the file the same way the
sources do (decoding the first frame, so a truncated or undecodable object is caught here too) and prints
modality, geometry, spacing, rate and the one-line refusal reason. Patient identifiers are not printed.
With ``--config PROFILE`` it also says, for each model of the profile, whether the file lies inside the
model's intended use and, if not, why: the pipeline's own check on the file's first frame.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.errors import InputError
from edge.frames import Frame
from edge.imaging.dicom import describe, is_dicom_file, iter_frames, read_dicom
from edge.imaging.video import probe, read_video

EXIT_ACCEPTED = 0
EXIT_REFUSED = 1


def inspect_dicom(path: Path) -> dict[str, Any]:
    try:
        ds = read_dicom(path)
    except InputError as e:
        return {"path": str(path), "kind": "dicom", "accepted": False, "reason": str(e)}
    info = describe(ds, path).to_dict()
    info["kind"] = "dicom"
    if info["region"] is not None:
        r = info["region"]
        info["region"] = [r["x0"], r["y0"], r["x1"], r["y1"]]
    if info["accepted"]:
        try:
            first = next(iter_frames(ds, "inspect", path))
            info["display"] = {"dtype": str(first.pixels.dtype), "shape": list(first.pixels.shape),
                               "min": float(first.pixels.min()), "max": float(first.pixels.max())}
        except InputError as e:
            info["accepted"], info["reason"] = False, str(e)
    if info["reason"] and not info["reason"].startswith(str(path)):
        info["reason"] = f"{path}: {info['reason']}"
    return info


def inspect_image(path: Path) -> dict[str, Any] | None:
    """A still image (PNG, JPEG, ...) is not something the daemon reads; say what it is instead of probing it
    as a one-frame video."""
    import cv2

    if not cv2.haveImageReader(str(path)):
        return None
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    rows, cols = (img.shape[0], img.shape[1]) if img is not None else (None, None)
    fmt = path.suffix.lstrip(".").upper() or "image"
    return {"path": str(path), "kind": "image", "accepted": False, "rows": rows, "columns": cols,
            "reason": f"{path}: a still {fmt} image, not DICOM or video: the daemon's sources read DICOM (dicom-folder, "
                      "dicom-store) and video; export's --calib/--val folders take images like this"}


def inspect_video(path: Path) -> dict[str, Any]:
    v = probe(path)
    if v is None:
        return {"path": str(path), "kind": "unknown", "accepted": False,
                "reason": f"{path}: neither DICOM nor a video OpenCV can open"}
    return {"path": str(path), "kind": "video", "accepted": v.readable,
            "reason": None if v.readable else f"{path}: video opens but no frame can be read", "modality": None,
            "frames": v.frames, "rows": v.rows, "columns": v.columns,
            "photometric": "RGB (from BGR)" if v.readable else None, "spacing_mm": None, "frame_rate": v.frame_rate}


def first_frame(path: Path, default_modality: str | None = None, video_modality: str = "US") -> Frame | None:
    """The frame the pipeline would see first (None: nothing decodable)."""
    try:
        if is_dicom_file(path):
            return next(iter_frames(read_dicom(path), "inspect", path, default_modality=default_modality), None)
        for index, pixels, _ in read_video(path):
            return Frame(pixels=pixels, modality=video_modality, source="inspect", index=index, origin=path)
    except InputError:
        return None
    return None


def model_verdicts(path: Path, config: Path) -> list[dict[str, Any]]:
    """Per model of the profile: would it read this file (intended use), and why not."""
    from edge.config import load_config
    from edge.inference.modelset import load_model_bundle

    cfg = load_config(config)
    out = []
    for m in cfg.models:
        src = next((s for s in cfg.sources if s.model == m.name), None)
        frame = first_frame(path, src.default_modality if src else None, src.modality if src else "US")
        use = load_model_bundle(cfg, m).manifest.intended_use
        if frame is None:
            out.append({"model": m.name, "reads": False, "why": ["nothing decodable"]})
        elif use is None:
            out.append({"model": m.name, "reads": True, "why": ["the bundle declares no intended use (reads anything)"]})
        else:
            refusals = use.check(frame)
            out.append({"model": m.name, "reads": not refusals, "why": [r.detail for r in refusals]
                        or [f"inside its intended use ({use.describe()})"]})
    return out


def inspect_file(path: Path | str, as_json: bool = False, echo: Callable[[str], None] = print,
                 config: Path | None = None) -> int:
    """Print the report; exit code 0 if the daemon would accept the file, 1 if it would refuse it (with
    ``config``: 1 also when no model of the profile would read it)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give one file in it")
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if path.stat().st_size == 0:
        info: dict[str, Any] = {"path": str(path), "kind": "empty", "accepted": False,
                                "reason": f"{path}: empty file (0 bytes; an interrupted copy or transfer?)"}
    elif is_dicom_file(path):
        info = inspect_dicom(path)
    else:
        info = inspect_image(path) or inspect_video(path)
    if config is not None and info["accepted"]:
        info["models"] = model_verdicts(path, Path(config))
    if as_json:
        echo(json.dumps(info, indent=2, sort_keys=True, default=str))
    else:
        verdict = "ACCEPTED" if info["accepted"] else "REFUSED"
        if info.get("models") and not any(v["reads"] for v in info["models"]):
            verdict = "ACCEPTED by the sources, but NOT READ by any model of the profile (outside their intended use)"
        echo(f"{path.name}: {verdict}" + ("" if info["accepted"] else f" ({info['reason']})"))
        for key in ("kind", "modality", "sop_class", "transfer_syntax", "photometric", "rows", "columns", "frames",
                    "bits_stored", "spacing_mm", "spacing_source", "frame_rate", "frame_rate_source", "region",
                    "manufacturer", "display"):
            if info.get(key) is not None:
                echo(f"  {key:17s} {info[key]}")
        for v in info.get("models", []):
            echo(f"  model {v['model']}: {'would read it' if v['reads'] else 'would NOT read it'}: {'; '.join(v['why'])}")
    if "models" in info and not any(v["reads"] for v in info["models"]):
        return EXIT_REFUSED
    return EXIT_ACCEPTED if info["accepted"] else EXIT_REFUSED
