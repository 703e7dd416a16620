"""Reference statistics: what a model's inputs and outputs looked like when it was validated.

Export computes them from the calibration tensors (after the device's own preprocessing) and the FP32
model's confidences on the validation set, and stores them in the manifest; the device computes the same
statistics with the same functions on what it sees (`edge.inference.drift`). One implementation of
"histogram of a tensor" and "PSI" for both sides, so a drift score means the same thing everywhere.

Why PSI (population stability index) over fixed bins: it compares two histograms without assuming a
shape, it is cheap to update from a rolling window, and it has conventional reading thresholds (below
0.1 stable, 0.1-0.25 moderate shift, above 0.25 major shift). The bins are set by the reference's own
value range (quantiles 0.5 % and 99.5 %, the outer bins open-ended), so a gain change or added noise moves
mass into bins the reference barely uses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edge.errors import BundleError

INTENSITY_BINS = 16
CONFIDENCE_EDGES = tuple(round(i / 10, 1) for i in range(11))  # 10 equal bins on [0, 1]
SAMPLE_VALUES = 4096  # values taken from one tensor (a regular stride): a histogram, not a copy
EPS = 1e-4  # floor for empty bins: PSI is infinite otherwise


def tensor_sample(t: np.ndarray) -> np.ndarray:
    """A regular subsample of a tensor's values (the same on export and device)."""
    flat = np.asarray(t, np.float32).reshape(-1)
    return flat[:: max(1, flat.size // SAMPLE_VALUES)]


def histogram(values: np.ndarray, edges: np.ndarray | tuple[float, ...]) -> np.ndarray:
    """Counts over ``edges`` with the outer bins open-ended (values outside land in the first/last bin)."""
    e = np.asarray(edges, np.float64)
    idx = np.clip(np.searchsorted(e, np.asarray(values, np.float64), side="right") - 1, 0, len(e) - 2)
    return np.bincount(idx, minlength=len(e) - 1).astype(np.float64)


def proportions(counts: np.ndarray) -> np.ndarray:
    total = float(counts.sum())
    return counts / total if total > 0 else np.full(len(counts), 1.0 / max(1, len(counts)))


def psi(expected: np.ndarray | tuple[float, ...], actual: np.ndarray | tuple[float, ...]) -> float:
    """Population stability index between two proportion vectors (order: reference, recent)."""
    e = np.maximum(np.asarray(expected, np.float64), EPS)
    a = np.maximum(np.asarray(actual, np.float64), EPS)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def peak_confidence(scores: dict[str, float]) -> float:
    """A frame's confidence for the output distribution: its highest reportable label score (0: none)."""
    return float(max(scores.values(), default=0.0))


@dataclass(frozen=True)
class ReferenceStats:
    inputs: int  # calibration tensors the statistics were taken from
    intensity_edges: tuple[float, ...]
    intensity: tuple[float, ...]  # pooled proportions per bin
    tensor_mean: tuple[float, float]  # mean and standard deviation of the per-tensor means
    tensor_std: tuple[float, float]  # ... of the per-tensor standard deviations
    frame_psi_p95: float  # one calibration tensor against the pooled reference, 95th percentile
    frame_psi_max: float
    ood_psi: float  # a single frame above this is out of distribution (its findings need review)
    drift_psi: float  # a rolling window of separate objects (radiographs, stills) above this is drift
    drift_psi_stream: float  # ... of one stream (live video, a cine: one patient for many frames)
    confidence: tuple[float, ...] = ()  # proportions over CONFIDENCE_EDGES, FP32 on the validation set
    confidence_from: str = ""  # validation | calibration
    rows: tuple[int, int] | None = None  # frame sizes and spacing seen in calibration (display frames)
    columns: tuple[int, int] | None = None
    spacing_mm: tuple[float, float] | None = None

    @classmethod
    def from_dict(cls, d: Any, where: str) -> ReferenceStats:
        if not isinstance(d, dict):
            raise BundleError(f"{where}: reference must be a mapping")
        try:
            def pair(k: str, tp: type = float) -> Any:
                v = d.get(k)
                return None if v is None else (tp(v[0]), tp(v[1]))

            ref = cls(inputs=int(d["inputs"]), intensity_edges=tuple(float(x) for x in d["intensity_edges"]),
                      intensity=tuple(float(x) for x in d["intensity"]), tensor_mean=pair("tensor_mean"),
                      tensor_std=pair("tensor_std"), frame_psi_p95=float(d["frame_psi_p95"]),
                      frame_psi_max=float(d["frame_psi_max"]), ood_psi=float(d["ood_psi"]),
                      drift_psi=float(d["drift_psi"]), drift_psi_stream=float(d["drift_psi_stream"]),
                      confidence=tuple(float(x) for x in d.get("confidence") or ()),
                      confidence_from=str(d.get("confidence_from") or ""), rows=pair("rows", int),
                      columns=pair("columns", int), spacing_mm=pair("spacing_mm"))
        except KeyError as e:
            raise BundleError(f"{where}: reference: required key {e.args[0]!r} is missing; re-export the bundle") from None
        except (TypeError, ValueError, IndexError) as e:
            raise BundleError(f"{where}: reference: {e}") from None
        if len(ref.intensity) != len(ref.intensity_edges) - 1 or len(ref.intensity) < 2:
            raise BundleError(f"{where}: reference: intensity needs one proportion per bin between its edges")
        if ref.confidence and len(ref.confidence) != len(CONFIDENCE_EDGES) - 1:
            raise BundleError(f"{where}: reference: confidence needs {len(CONFIDENCE_EDGES) - 1} proportions")
        if not (ref.drift_psi > 0 and ref.drift_psi_stream > 0 and ref.ood_psi > 0):
            raise BundleError(f"{where}: reference: drift_psi, drift_psi_stream and ood_psi must be positive")
        return ref

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if v is not None}

    def frame_psi(self, tensor: np.ndarray) -> tuple[float, np.ndarray]:
        """One tensor against the reference: its PSI and its histogram counts (for a rolling window)."""
        counts = histogram(tensor_sample(tensor), self.intensity_edges)
        return psi(self.intensity, proportions(counts)), counts


# Thresholds from the calibration set's own spread, never below the conventional readings (PSI 0.25:
# major shift). A single image differs from the pooled population more than a window of many does:
# * out of distribution: twice the largest single-calibration-input PSI;
# * drift of separate objects (a window of many patients' radiographs): 1.5 x the largest PSI of windows
#   drawn at random from the calibration set (the spread of an in-distribution window of that size);
# * drift of one stream (a window of one patient's cine or live video, whose frames are alike): the
#   largest single-calibration-input PSI, since such a window is, in effect, one input.
OOD_FLOOR, OOD_FACTOR = 0.5, 2.0
DRIFT_FLOOR, DRIFT_FACTOR = 0.25, 1.5
BOOTSTRAP_WINDOWS, BOOTSTRAP_FRAMES = 200, 100  # the device's default window (MonitorSettings.window_frames)


def build_reference(tensors: list[np.ndarray], confidences: list[float], confidence_from: str,
                    frame_sizes: list[tuple[int, int]], spacings: list[tuple[float, float]]) -> ReferenceStats:
    """The statistics export stores; ``tensors`` are the calibration tensors as the device makes them."""
    samples = [tensor_sample(t) for t in tensors]
    pooled = np.concatenate(samples)
    lo, hi = float(np.quantile(pooled, 0.005)), float(np.quantile(pooled, 0.995))
    if hi <= lo:
        hi = lo + 1e-3
    # the range split in INTENSITY_BINS - 2 bins, plus one open bin below and one above it
    edges = np.concatenate([[lo - 1e6], np.linspace(lo, hi, INTENSITY_BINS - 1), [hi + 1e6]])
    ref_p = proportions(sum(histogram(s, edges) for s in samples))
    per = np.array([psi(ref_p, proportions(histogram(s, edges))) for s in samples])
    means = np.array([float(np.mean(t)) for t in tensors])
    stds = np.array([float(np.std(t)) for t in tensors])
    p95, pmax = float(np.quantile(per, 0.95)), float(per.max())
    counts = np.stack([histogram(s, edges) for s in samples])
    rng = np.random.default_rng(0)  # fixed: the same calibration set gives the same bundle
    boot = max(psi(ref_p, proportions(counts[rng.integers(0, len(samples), BOOTSTRAP_FRAMES)].sum(0)))
               for _ in range(BOOTSTRAP_WINDOWS))
    conf = proportions(histogram(np.asarray(confidences, np.float64), CONFIDENCE_EDGES)) if confidences else None

    def span(vals: list, tp: type) -> tuple | None:
        return (tp(min(vals)), tp(max(vals))) if vals else None

    return ReferenceStats(
        inputs=len(tensors), intensity_edges=tuple(round(float(x), 6) for x in edges),
        intensity=tuple(round(float(x), 6) for x in ref_p),
        tensor_mean=(round(float(means.mean()), 6), round(float(means.std()), 6)),
        tensor_std=(round(float(stds.mean()), 6), round(float(stds.std()), 6)),
        frame_psi_p95=round(p95, 4), frame_psi_max=round(pmax, 4),
        ood_psi=round(max(OOD_FLOOR, OOD_FACTOR * pmax), 4), drift_psi=round(max(DRIFT_FLOOR, DRIFT_FACTOR * boot), 4),
        drift_psi_stream=round(max(DRIFT_FLOOR, pmax), 4),
        confidence=tuple(round(float(x), 6) for x in conf) if conf is not None else (),
        confidence_from=confidence_from if conf is not None else "",
        rows=span([h for h, _ in frame_sizes], int), columns=span([w for _, w in frame_sizes], int),
        spacing_mm=span([min(s) for s in spacings] + [max(s) for s in spacings], float) if spacings else None)
