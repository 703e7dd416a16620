"""Synthetic chest-radiograph phantoms with an optional focal opacity and optional small lung nodules.

The reference opacity classifier needs labelled frontal chest images that can be regenerated and
committed; this phantom provides the anatomy that makes the task non-trivial (ribs and clavicles crossing
the lungs, heart and mediastinum, diaphragm domes, lung markings, quantum noise) and a focal opacity of
random size, contrast and position inside one lung as the positive class. The reference nodule detector
uses the same anatomy with ``nodules=k``: k small round nodules (radius a few mm, modest contrast) inside the
lung fields, each with its ground-truth box in frame pixels (`Nodule.box`). ``nodules=0`` (the default)
draws nothing extra from the random stream, so existing callers get byte-identical phantoms.

Pixels are *stored values* (uint16, 12 bits used), as a CR/DX detector writes them, with a VOI window
and a photometric interpretation. `display` turns them into what the device's DICOM decoder hands to
preprocessing: the linear VOI window of PS3.3 C.11.2.1.2 mapped to [0, 1], inverted for MONOCHROME1.
Training goes through `display`, so the model sees exactly the values the device sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

BITS_STORED = 12
MAX_STORED = (1 << BITS_STORED) - 1
PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
LUNG_DEPTH = 0.45  # attenuation deficit of aerated lung relative to soft tissue


@dataclass(frozen=True)
class Opacity:
    cx: float  # pixels
    cy: float
    radius: float  # pixels (1/e^2 radius of the soft blob)
    contrast: float  # added attenuation, relative to lung-to-soft-tissue difference
    side: str  # "right" or "left" lung (patient side; image left = patient right)


@dataclass(frozen=True)
class Nodule:
    cx: float  # pixels (frame coordinates, x to the right)
    cy: float
    radius: float  # pixels: the projected sphere's edge (the density is zero outside it)
    contrast: float  # peak added attenuation, relative to lung-to-soft-tissue difference
    side: str  # "right" or "left" lung (patient side; image left = patient right)
    radius_mm: float  # radius with the phantom's pixel spacing

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Ground-truth box x0, y0, x1, y1 in frame pixels: the nodule's bounding square."""
        return (self.cx - self.radius, self.cy - self.radius, self.cx + self.radius, self.cy + self.radius)


NODULE_RADIUS_PX = (6.0, 11.0)  # at 512 px (about 4-8 mm with the phantom's 0.62-0.75 mm spacing), times the patient scale
NODULE_CONTRAST = (0.35, 0.7)  # peak added attenuation relative to the lung-to-soft-tissue difference


@dataclass(frozen=True)
class XrayPhantom:
    stored: np.ndarray  # HxW uint16 stored values in the given photometric interpretation
    photometric: str  # MONOCHROME1 (high value = dark) or MONOCHROME2 (high value = bright)
    window: tuple[float, float]  # (center, width) in stored values
    spacing_mm: tuple[float, float]  # (row, column) imager pixel spacing
    opacity: Opacity | None
    nodules: tuple[Nodule, ...] = ()

    @property
    def label(self) -> int:
        return int(self.opacity is not None)


def display(stored: np.ndarray, window: tuple[float, float], photometric: str) -> np.ndarray:
    """Stored values -> float32 display values in [0, 1] (linear VOI, MONOCHROME1 inverted)."""
    if photometric not in PHOTOMETRICS:
        raise ValueError(f"photometric must be one of {PHOTOMETRICS}, got {photometric!r}")
    c, w = float(window[0]), float(window[1])
    x = stored.astype(np.float32)
    y = np.clip((x - (c - 0.5)) / max(w - 1.0, 1.0) + 0.5, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        y = 1.0 - y
    return y.astype(np.float32)


def phantom_display(p: XrayPhantom) -> np.ndarray:
    return display(p.stored, p.window, p.photometric)


def _ellipse(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, rx: float, ry: float, power: float = 2.0):
    return (np.abs((xx - cx) / rx) ** power + np.abs((yy - cy) / ry) ** power) <= 1.0


def _lung(xx, yy, cx, top, bottom, half_w, medial_sign, rng) -> np.ndarray:
    """A lung field: rounded apex, widening downwards, flat-ish medial border, diaphragm dome below."""
    t = np.clip((yy - top) / (bottom - top), 0, 1)
    width = half_w * (0.55 + 0.45 * np.sqrt(t))
    centre = cx + medial_sign * 0.15 * half_w * t
    inside = (np.abs(xx - centre) <= width) & (yy >= top) & (yy <= bottom)
    apex = _ellipse(xx, yy, cx, top + 0.5 * half_w, half_w * 0.6, half_w * 0.55)
    inside &= (yy >= top + 0.5 * half_w) | apex
    dome = bottom - 0.12 * (bottom - top) * (1 - ((xx - cx) / (1.2 * half_w)) ** 2)
    return inside & (yy <= dome)


def make_phantom(
    seed: int | np.random.Generator,
    size: int = 512,
    opacity: bool | None = None,
    photometric: str = "MONOCHROME2",
    nodules: int = 0,
) -> XrayPhantom:
    """One frontal chest phantom. ``opacity=None`` draws the class at random (p = 0.5); ``nodules`` small round
    nodules are placed inside the lungs (0, the default, leaves the random stream and the image unchanged)."""
    if photometric not in PHOTOMETRICS:
        raise ValueError(f"photometric must be one of {PHOTOMETRICS}, got {photometric!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if opacity is None:
        opacity = bool(rng.random() < 0.5)
    h = w = int(size)
    s = size / 512.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # patient placement varies: shift, scale, slight rotation
    scale = rng.uniform(0.88, 1.05)
    mx, my = w / 2 + rng.uniform(-0.04, 0.04) * w, h / 2 + rng.uniform(-0.03, 0.05) * h
    rot = math.radians(rng.uniform(-4, 4))
    u = (math.cos(rot) * (xx - mx) + math.sin(rot) * (yy - my)) / scale + 256 * s
    v = (-math.sin(rot) * (xx - mx) + math.cos(rot) * (yy - my)) / scale + 256 * s
    S = 256 * s  # noqa: N806 - half width of the canonical 512 frame

    att = np.zeros((h, w), np.float32)
    body = _ellipse(u, v, S, S * 1.15, S * rng.uniform(0.86, 0.95), S * 1.25, power=3.0)
    att[body] = 1.0
    # lungs
    top, bottom = S * rng.uniform(0.28, 0.36), S * rng.uniform(1.55, 1.72)
    half_w = S * rng.uniform(0.30, 0.36)
    gap = S * rng.uniform(0.04, 0.09)
    rl = _lung(u, v, S - gap - half_w, top, bottom, half_w, +1, rng)  # patient right = image left
    ll = _lung(u, v, S + gap + half_w, top, bottom * rng.uniform(0.97, 1.0), half_w * 0.95, -1, rng)
    lungs = (rl | ll) & body
    lung_soft = cv2.GaussianBlur(lungs.astype(np.float32), (0, 0), 3 * s)
    att -= LUNG_DEPTH * lung_soft
    # lung markings: vessel-like low-contrast texture, denser towards the hila
    mark = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 3.0 * s)
    mark = np.exp(-((mark / (0.25 * mark.std() + 1e-6)) ** 2))  # zero crossings: thin branching lines
    hila = np.exp(-(((u - S) / (S * 0.5)) ** 2) - ((v - S * 1.0) / (S * 0.6)) ** 2)
    att += lung_soft * mark * rng.uniform(0.03, 0.06) * (0.5 + hila)
    # heart and mediastinum
    heart = _ellipse(u, v, S + S * rng.uniform(0.08, 0.18), S * rng.uniform(1.22, 1.32),
                     S * rng.uniform(0.26, 0.34), S * rng.uniform(0.26, 0.32))
    medi = (np.abs(u - S) < S * rng.uniform(0.11, 0.15)) & (v > S * 0.15) & body
    hm = cv2.GaussianBlur((heart | medi).astype(np.float32), (0, 0), 4 * s)
    att += hm * (LUNG_DEPTH * lung_soft + 0.12)
    # spine
    att += 0.1 * cv2.GaussianBlur(((np.abs(u - S) < S * 0.07) & body).astype(np.float32), (0, 0), 2 * s)
    # ribs: posterior arcs descending laterally, drawn on a canvas in canonical coordinates
    ribs = np.zeros((h, w), np.float32)
    n_ribs = int(rng.integers(9, 11))
    spacing = (bottom - top) / n_ribs
    thick = max(2, int(round(S * rng.uniform(0.035, 0.05) * scale)))
    for side in (-1, 1):
        for i in range(n_ribs):
            y0 = top + (i + 0.3) * spacing
            pts = []
            for t in np.linspace(0, 1, 24):
                uu = S + side * (S * 0.08 + t * S * 0.82)
                vv = y0 + S * 0.25 * t * t + S * 0.08 * math.sin(math.pi * t)
                x = mx + scale * (math.cos(rot) * (uu - S) - math.sin(rot) * (vv - S))
                y = my + scale * (math.sin(rot) * (uu - S) + math.cos(rot) * (vv - S))
                pts.append((x, y))
            cv2.polylines(ribs, [np.round(np.array(pts)).astype(np.int32)], False, 1.0, thick, cv2.LINE_AA)
    # clavicles
    for side in (-1, 1):
        a = (mx + side * scale * S * 0.08, my + scale * (S * 0.42 - S))
        b = (mx + side * scale * S * 0.62, my + scale * (S * rng.uniform(0.22, 0.3) - S))
        cv2.line(ribs, tuple(int(round(c)) for c in a), tuple(int(round(c)) for c in b), 1.3,
                 max(3, int(round(thick * 1.5))), cv2.LINE_AA)
    ribs = cv2.GaussianBlur(ribs, (0, 0), 1.2 * s) * body * (0.4 + 0.6 * lung_soft)
    att += rng.uniform(0.08, 0.14) * ribs

    op = None
    if opacity:
        lung = rl if rng.random() < 0.5 else ll
        core = cv2.erode(lung.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=max(1, int(18 * s)))
        ys, xs = np.nonzero(core)
        k = int(rng.integers(0, len(ys)))
        radius = S * rng.uniform(0.06, 0.13) * scale
        contrast = rng.uniform(0.7, 1.3)
        op = Opacity(cx=float(xs[k]), cy=float(ys[k]), radius=float(radius), contrast=float(contrast),
                     side="right" if lung is rl else "left")
        # a dense, irregular rounded lesion with a soft border (consolidation / mass-like)
        d = np.sqrt((xx - op.cx) ** 2 + (yy - op.cy) ** 2) / radius
        ang = np.arctan2(yy - op.cy, xx - op.cx)
        lobes = 1 + sum(rng.uniform(0, 0.2) * np.cos(j * ang + rng.uniform(0, 6.28)) for j in (2, 3))
        blob = np.clip((lobes - d) / 0.35, 0, 1)
        blob = blob * blob * (3 - 2 * blob)
        att += contrast * LUNG_DEPTH * blob * lung_soft

    drawn = _draw_nodules(att, xx, yy, rl, ll, heart | medi, lung_soft, int(nodules), s * scale, rng) if nodules else []

    att = cv2.GaussianBlur(att, (0, 0), 1.0 * s)
    # detector: exposure-dependent gain and offset, quantum noise, a little low-frequency nonuniformity
    lo, hi = rng.uniform(300, 700), rng.uniform(2800, 3700)
    m2 = lo + (hi - lo) * np.clip(att / 1.4, 0, 1.2)
    lf = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 40 * s)
    m2 *= 1 + 0.03 * lf / (lf.std() + 1e-6)
    noise = rng.uniform(8, 30)
    m2 += noise * rng.standard_normal((h, w)).astype(np.float32) * np.sqrt(np.clip(m2 / 2000, 0.2, 2))
    m2 = np.clip(np.round(m2), 0, MAX_STORED)
    # window: what the modality would put in the header, roughly covering lungs to mediastinum
    lung_lo = np.percentile(m2[lungs], 1)
    p_hi = np.percentile(m2[body], rng.uniform(98, 99.8))
    p_lo = lung_lo - rng.uniform(0.15, 0.4) * (p_hi - lung_lo)
    center, width = (p_lo + p_hi) / 2, max(64.0, p_hi - p_lo)
    if photometric == "MONOCHROME1":
        stored = MAX_STORED - m2
        center = MAX_STORED - round(center) + 1  # keeps display() identical to the MONOCHROME2 image
    else:
        stored = m2
    px = round(float(rng.uniform(0.62, 0.75)) * 512 / size, 4)  # a ~35 cm field of view
    return XrayPhantom(
        stored=stored.astype(np.uint16),
        photometric=photometric,
        window=(float(round(center)), float(round(width))),
        spacing_mm=(float(px), float(px)),
        opacity=op,
        nodules=tuple(Nodule(cx, cy, r, c, side, round(r * float(px), 2)) for cx, cy, r, c, side in drawn),
    )


def _draw_nodules(att, xx, yy, rl, ll, mediastinum, lung_soft, n, s, rng) -> list[tuple]:
    """Add ``n`` projected spheres to ``att`` (in place) inside the lung fields, clear of the heart and
    mediastinum and of each other; returns (cx, cy, radius, contrast, side) per nodule."""
    lungs = (rl | ll) & ~cv2.dilate(mediastinum.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    dist = cv2.distanceTransform(lungs.astype(np.uint8), cv2.DIST_L2, 5)
    out: list[tuple] = []
    for _ in range(n):
        r = float(rng.uniform(*NODULE_RADIUS_PX) * s)
        ok = dist > r + 4 * s
        for cx, cy, rr, _c, _side in out:
            ok &= (xx - cx) ** 2 + (yy - cy) ** 2 > (r + rr + 12 * s) ** 2
        ys, xs = np.nonzero(ok)
        if len(ys) == 0:
            break
        k = int(rng.integers(0, len(ys)))
        cx, cy = float(xs[k] + rng.uniform(-0.5, 0.5)), float(ys[k] + rng.uniform(-0.5, 0.5))
        contrast = float(rng.uniform(*NODULE_CONTRAST))
        d2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (r * r)
        att += contrast * LUNG_DEPTH * np.sqrt(np.clip(1.0 - d2, 0.0, 1.0)) * np.maximum(lung_soft, 0.5)
        out.append((cx, cy, r, contrast, "right" if rl[int(round(cy)), int(round(cx))] else "left"))
    return out
