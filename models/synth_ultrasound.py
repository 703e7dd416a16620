"""Synthetic B-mode ultrasound frames with free-fluid ground truth.

There is no public, redistributable POCUS data set with free-fluid masks that could be committed to this
repository, so the reference segmentation model learns from a simulator. The simulator reproduces the
properties a segmentation model (and its INT8 calibration) actually depends on: fan geometry with black
outside the sector, fully developed speckle (random scatterers convolved with a point-spread function and
envelope-detected), log compression, depth attenuation partly compensated by TGC, hypoechoic tissue and
acoustic shadows as dark distractors, anechoic pockets with irregular smooth borders as the positive
class, and burned-in text outside the sector as real carts have.

Everything is a pure function of the seed, so a data set, a test and a sample file can be regenerated
bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from edge.frames import Region
from models.pixel_font import draw_text

DEFAULT_SIZE = (256, 256)


@dataclass(frozen=True)
class SectorGeometry:
    """A curvilinear probe's fan: apex, radii (pixels) and half opening angle."""

    apex_x: float
    apex_y: float
    r_min: float
    r_max: float
    half_angle: float  # radians
    depth_cm: float  # physical depth at r_max, used for pixel spacing

    @property
    def spacing_mm(self) -> float:
        """Square pixel size: the displayed depth spans r_max - r_min pixels."""
        return self.depth_cm * 10.0 / (self.r_max - self.r_min)

    def polar(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        dx, dy = xx - self.apex_x, yy - self.apex_y
        return np.hypot(dx, dy), np.arctan2(dx, dy)  # angle 0 = straight down

    def mask(self, h: int, w: int) -> np.ndarray:
        r, th = self.polar(h, w)
        return (r >= self.r_min) & (r <= self.r_max) & (np.abs(th) <= self.half_angle)

    def bbox(self, h: int, w: int) -> Region:
        return region_of(self.mask(h, w))


@dataclass(frozen=True)
class Pocket:
    """One anechoic region: a rotated ellipse whose radius is modulated by a few low harmonics."""

    cx: float
    cy: float
    radius: float
    elongation: float  # >= 1, ratio of major to minor axis
    angle: float  # radians
    harmonics: tuple[tuple[float, float], ...]  # (amplitude, phase) for k = 2, 3, ...

    def mask(self, h: int, w: int) -> np.ndarray:
        out = np.zeros((h, w), bool)
        if self.radius < 1.5:
            return out
        # only the pocket's bounding square is evaluated: masks are made for every training frame
        reach = self.radius * math.sqrt(self.elongation) * (1.0 + sum(a for a, _ in self.harmonics)) + 2
        x0, x1 = max(0, int(self.cx - reach)), min(w, int(self.cx + reach) + 1)
        y0, y1 = max(0, int(self.cy - reach)), min(h, int(self.cy + reach) + 1)
        if x0 >= x1 or y0 >= y1:
            return out
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dx, dy = xx - self.cx, yy - self.cy
        c, s = math.cos(self.angle), math.sin(self.angle)
        u = (c * dx + s * dy) / math.sqrt(self.elongation)
        v = (-s * dx + c * dy) * math.sqrt(self.elongation)
        d = np.hypot(u, v)
        phi = np.arctan2(v, u)
        edge = np.ones_like(d)
        for k, (a, p) in enumerate(self.harmonics, start=2):
            edge += a * np.cos(k * phi + p)
        out[y0:y1, x0:x1] = d < self.radius * edge
        return out


@dataclass(frozen=True)
class Scene:
    """Everything random about one acquisition except the speckle and the pockets."""

    size: tuple[int, int]
    geometry: SectorGeometry
    tissue: np.ndarray  # float32 HxW echogenicity (1 = average tissue)
    attenuation_db_cm: float
    tgc: float  # fraction of the attenuation compensated
    dynamic_range_db: float
    gain_db: float
    psf_sigma: tuple[float, float]  # (axial, lateral) pixels
    noise_floor: float
    overlay: dict
    radius: np.ndarray  # float32 HxW distance from the apex (cached: every frame needs it)
    sector: np.ndarray  # bool HxW fan mask


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def random_geometry(rng: np.random.Generator, size: tuple[int, int] = DEFAULT_SIZE) -> SectorGeometry:
    h, w = size
    return SectorGeometry(
        apex_x=w / 2 + rng.uniform(-0.02, 0.02) * w,
        apex_y=0.09 * h,
        r_min=0.05 * h,
        r_max=rng.uniform(0.82, 0.86) * h,
        half_angle=math.radians(rng.uniform(28.0, 31.0)),
        depth_cm=float(rng.choice([12.0, 14.0, 16.0, 18.0])),
    )


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], sigma: float) -> np.ndarray:
    n = rng.standard_normal(size).astype(np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigma)
    return n / (n.std() + 1e-6)


def random_scene(seed: int | np.random.Generator, size: tuple[int, int] = DEFAULT_SIZE) -> Scene:
    rng = _rng(seed)
    h, w = size
    geo = random_geometry(rng, size)
    # tissue: smooth echogenicity texture, a few bright fascia-like layers, one hypoechoic organ
    tissue = np.exp(0.35 * _smooth_noise(rng, size, sigma=0.06 * h))
    r, th = geo.polar(h, w)
    for _ in range(rng.integers(1, 4)):
        depth = rng.uniform(geo.r_min + 10, geo.r_max - 10)
        bend = rng.uniform(-0.15, 0.15) * h
        line = depth + bend * (th / geo.half_angle) ** 2
        tissue *= 1.0 + rng.uniform(1.5, 4.0) * np.exp(-0.5 * ((r - line) / rng.uniform(1.2, 2.5)) ** 2)
    if rng.random() < 0.7:  # hypoechoic but not anechoic organ: a dark distractor
        organ = Pocket(
            cx=geo.apex_x + rng.uniform(-0.25, 0.25) * w,
            cy=rng.uniform(0.4, 0.85) * h,
            radius=rng.uniform(0.10, 0.2) * h,
            elongation=rng.uniform(1.0, 2.0),
            angle=rng.uniform(0, math.pi),
            harmonics=((0.1, rng.uniform(0, 6.28)),),
        ).mask(h, w)
        soft = cv2.GaussianBlur(organ.astype(np.float32), (0, 0), 3.0)
        tissue *= 1.0 - soft * rng.uniform(0.55, 0.85)
    if rng.random() < 0.35:  # acoustic shadow behind a strong reflector: dark along a ray
        t0 = rng.uniform(-0.8, 0.8) * geo.half_angle
        tw = rng.uniform(0.03, 0.08)
        r0 = rng.uniform(geo.r_min + 10, 0.5 * geo.r_max)
        ang = np.exp(-0.5 * ((th - t0) / tw) ** 4)
        below = 1.0 / (1.0 + np.exp(-(r - r0) / 2.0))
        tissue *= 1.0 - rng.uniform(0.6, 0.85) * ang * below
        tissue += 6.0 * ang * np.exp(-0.5 * ((r - r0) / 1.5) ** 2)
    overlay = {
        "name": f"SYNTH^{rng.choice(['ALPHA', 'BRAVO', 'DELTA', 'ECHO', 'TANGO'])}",
        "id": f"FAKE{rng.integers(0, 10**6):06d}",
        "date": f"20{rng.integers(20, 27):02d}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}",
        "time": f"{rng.integers(0, 24):02d}:{rng.integers(0, 60):02d}:{rng.integers(0, 60):02d}",
        "probe": f"C{rng.integers(2, 6)}-1 {rng.uniform(2.0, 5.0):.1f}MHz",
    }
    return Scene(
        size=size,
        geometry=geo,
        tissue=tissue.astype(np.float32),
        attenuation_db_cm=float(rng.uniform(0.5, 1.0)),
        tgc=float(rng.uniform(0.6, 0.9)),
        dynamic_range_db=float(rng.uniform(45.0, 60.0)),
        gain_db=float(rng.uniform(-4.0, 4.0)),
        psf_sigma=(float(rng.uniform(0.7, 1.1)), float(rng.uniform(1.4, 2.2))),
        noise_floor=float(rng.uniform(0.003, 0.01)),
        overlay=overlay,
        radius=r,
        sector=geo.mask(h, w),
    )


def random_pocket(rng: np.random.Generator, geo: SectorGeometry, size: tuple[int, int]) -> Pocket:
    """A pocket whose centre lies well inside the fan (free fluid collects away from the near field)."""
    h, _ = size
    rr = rng.uniform(0.35, 0.85) * geo.r_max
    tt = rng.uniform(-0.7, 0.7) * geo.half_angle
    return Pocket(
        cx=geo.apex_x + rr * math.sin(tt),
        cy=geo.apex_y + rr * math.cos(tt),
        radius=rng.uniform(0.05, 0.13) * h,
        elongation=rng.uniform(1.0, 3.0),
        angle=rng.uniform(0, math.pi),
        harmonics=tuple((rng.uniform(0, 0.22) / k, rng.uniform(0, 2 * math.pi)) for k in range(2, 5)),
    )


def pockets_mask(pockets: list[Pocket], sector: np.ndarray) -> np.ndarray:
    h, w = sector.shape
    m = np.zeros((h, w), bool)
    for p in pockets:
        m |= p.mask(h, w)
    return m & sector


def render(scene: Scene, fluid: np.ndarray, scatter: np.ndarray) -> np.ndarray:
    """Image formation: reflectivity x complex scatterers -> PSF -> envelope -> gain/TGC -> log -> uint8.

    ``scatter`` is a complex HxW field of unit-variance scatterer amplitudes; passing correlated fields for
    consecutive frames gives a cine with realistically persistent speckle.
    """
    h, w = scene.size
    geo = scene.geometry
    refl = scene.tissue.copy()
    soft = cv2.GaussianBlur(fluid.astype(np.float32), (0, 0), 0.8)
    refl = refl * (1.0 - soft) + 1e-4 * soft  # anechoic: almost no scatterers
    amp = np.sqrt(refl)
    re = cv2.GaussianBlur((scatter.real * amp).astype(np.float32), (0, 0), sigmaX=scene.psf_sigma[1],
                          sigmaY=scene.psf_sigma[0])
    im = cv2.GaussianBlur((scatter.imag * amp).astype(np.float32), (0, 0), sigmaX=scene.psf_sigma[1],
                          sigmaY=scene.psf_sigma[0])
    env = np.hypot(re, im) / (0.25 / math.sqrt(scene.psf_sigma[0] * scene.psf_sigma[1]))
    r = scene.radius
    depth_cm = np.clip((r - geo.r_min) / (geo.r_max - geo.r_min), 0, 1) * geo.depth_cm
    # two-way attenuation, partly undone by TGC; fluid attenuates little, so tissue behind it is brighter
    # (posterior enhancement) - approximated along image columns.
    fluid_above_cm = np.cumsum(soft, axis=0) * (geo.spacing_mm / 10.0)
    path_cm = np.maximum(depth_cm - 0.8 * fluid_above_cm, 0.0)
    loss_db = 2 * scene.attenuation_db_cm * 0.5 * (path_cm - scene.tgc * depth_cm)
    env = env * 10 ** (-(loss_db - scene.gain_db) / 20.0)
    env = env + scene.noise_floor * np.abs(scatter.real[::-1, ::-1])
    db = 20.0 * np.log10(env + 1e-6)
    img = np.clip((db + scene.dynamic_range_db - 14.0) / scene.dynamic_range_db, 0.0, 1.0)
    img = np.where(scene.sector, img, 0.0)
    out = (img * 255.0 + 0.5).astype(np.uint8)
    draw_overlay(out, scene)
    return out


def draw_overlay(img: np.ndarray, scene: Scene) -> None:
    """Burned-in annotations outside the fan: fake patient banner, date, probe and depth scale."""
    h, w = img.shape
    geo = scene.geometry
    s = max(1, round(h / 256))
    ov = scene.overlay
    draw_text(img, ov["name"], 3, int(0.035 * h) + 3, 230, s)
    draw_text(img, ov["id"], 3, int(0.075 * h) + 3, 230, s)
    draw_text(img, ov["date"], int(0.70 * w), int(0.035 * h) + 3, 230, s)
    draw_text(img, ov["time"], int(0.70 * w), int(0.075 * h) + 3, 230, s)
    draw_text(img, ov["probe"], 3, h - 5, 200, s)
    # depth scale: a tick every cm along the right margin, labelled every 5 cm
    x = w - 6
    top, bottom = geo.apex_y + geo.r_min, geo.apex_y + geo.r_max
    for cm in range(int(geo.depth_cm) + 1):
        y = int(round(top + (bottom - top) * cm / geo.depth_cm))
        if y >= h:
            break
        ln = 4 if cm % 5 == 0 else 2
        img[y, x - ln:x + 1] = 220
        if cm % 5 == 0 and cm > 0:
            draw_text(img, str(cm), x - 5 - 12 * s, y + 3 * s, 220, s)


def region_of(sector: np.ndarray) -> Region:
    ys, xs = np.nonzero(sector)
    return Region(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def _scatter(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    return (rng.standard_normal(size) + 1j * rng.standard_normal(size)).astype(np.complex64) / math.sqrt(2)


def make_frame(
    seed: int | np.random.Generator,
    size: tuple[int, int] = DEFAULT_SIZE,
    n_pockets: int | None = None,
) -> tuple[np.ndarray, np.ndarray, Region]:
    """One frame: (uint8 HxW image, uint8 HxW mask of anechoic pockets (0/1), sector bounding box).

    ``n_pockets`` defaults to a random 0-3 (about a third of frames have no fluid).
    """
    rng = _rng(seed)
    scene = random_scene(rng, size)
    k = int(rng.choice([0, 1, 1, 2, 3])) if n_pockets is None else int(n_pockets)
    pockets = [random_pocket(rng, scene.geometry, size) for _ in range(k)]
    fluid = pockets_mask(pockets, scene.sector)
    img = render(scene, fluid, _scatter(rng, size))
    return img, fluid.astype(np.uint8), region_of(scene.sector)


@dataclass(frozen=True)
class Cine:
    frames: np.ndarray  # N x H x W uint8
    masks: np.ndarray  # N x H x W uint8 (0/1)
    region: Region  # sector bounding box (constant over the cine)
    spacing_mm: float  # square pixel size
    frame_rate: float
    scene: Scene


def fluid_envelope(n_frames: int, start: float, stop: float, ramp: float = 0.08) -> np.ndarray:
    """Per-frame pocket scale in [0, 1]: 0 before ``start``, grows, holds, shrinks to 0 after ``stop``.

    ``start``/``stop``/``ramp`` are fractions of the cine length.
    """
    t = (np.arange(n_frames) + 0.5) / n_frames
    up = np.clip((t - start) / ramp, 0, 1)
    down = np.clip((stop - t) / ramp, 0, 1)
    e = np.minimum(up, down)
    return 0.5 - 0.5 * np.cos(np.pi * e)


def make_cine(
    seed: int,
    n_frames: int = 60,
    size: tuple[int, int] = DEFAULT_SIZE,
    frame_rate: float = 25.0,
    n_pockets: int | None = None,
    schedule: tuple[float, float] | None = None,
    speckle_correlation: float = 0.85,
) -> Cine:
    """A short cine: pockets drift and deform smoothly, and appear/disappear.

    Each pocket gets its own appearance window unless ``schedule`` = (start, stop) fractions forces a
    common one (the demo sample uses that: fluid appears mid-cine, stays, then goes away).
    """
    rng = np.random.default_rng(seed)
    scene = random_scene(rng, size)
    geo = scene.geometry
    k = int(rng.integers(1, 4)) if n_pockets is None else int(n_pockets)
    base = [random_pocket(rng, geo, size) for _ in range(k)]
    motion = [
        (rng.uniform(2, 6), rng.uniform(0, 6.28), rng.uniform(2, 6), rng.uniform(0, 6.28), rng.uniform(0.5, 1.5))
        for _ in base
    ]
    if schedule is not None:
        envs = [fluid_envelope(n_frames, *schedule) for _ in base]
    else:
        envs = []
        for _ in base:
            s = rng.uniform(-0.3, 0.6)
            envs.append(fluid_envelope(n_frames, s, s + rng.uniform(0.3, 1.0)))
    scatter = _scatter(rng, size)
    frames, masks = [], []
    rho = speckle_correlation
    for i in range(n_frames):
        t = i / max(1, n_frames - 1)
        pockets = []
        for p, (ax, px, ay, py, f), env in zip(base, motion, envs, strict=True):
            wob = tuple((a * (1 + 0.3 * math.sin(2 * math.pi * f * t + ph)), ph + 0.6 * t) for a, ph in p.harmonics)
            pockets.append(replace(
                p,
                cx=p.cx + ax * math.sin(2 * math.pi * f * t + px),
                cy=p.cy + ay * math.sin(2 * math.pi * f * t + py),
                radius=p.radius * float(env[i]),
                angle=p.angle + 0.2 * math.sin(2 * math.pi * t),
                harmonics=wob,
            ))
        fluid = pockets_mask(pockets, scene.sector)
        # probe/tissue motion: roll the scatterer field slightly and refresh part of it
        scatter = np.roll(scatter, 1 if i % 4 == 0 else 0, axis=0)
        scatter = (rho * scatter + math.sqrt(1 - rho * rho) * _scatter(rng, size)).astype(np.complex64)
        frames.append(render(scene, fluid, scatter))
        masks.append(fluid.astype(np.uint8))
    return Cine(
        frames=np.stack(frames),
        masks=np.stack(masks),
        region=region_of(scene.sector),
        spacing_mm=geo.spacing_mm,
        frame_rate=frame_rate,
        scene=scene,
    )
