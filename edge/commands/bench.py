"""`medge bench --bundle DIR`: trtexec-style latency and throughput of a bundle on this device.

Export's latency table is measured on the workstation; what matters is the device, and on x86 the INT8
gain depends on the CPU (VNNI or not, `docs/ARCHITECTURE.md`). So the bundle is loaded exactly as the
device loads it (hashes, signature when a key is given) and the backend is built by `build_backend` from
the given providers, so the fallbacks and their reasons are the device's own and the report names the
provider that actually ran. The input is a deterministic random tensor in the model's normalised input
range (the bundle's own calibration statistics when the manifest has them): int8 kernels have
data-dependent paths (on AVX2 whether u8s8 pairs saturate depends on the values), so a zero tensor would
time a case no patient image is.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import ModelConfig
from edge.errors import ConfigError, MedgeError, cause_line
from edge.inference.backends import PROVIDERS, build_backend
from edge.inference.bundle import Bundle, load_bundle

VARIANTS = ("int8", "fp32", "fp16")
INPUT_SEED = 20240601  # fixed: two runs, two devices, two bundles of one model time the same tensor
# what decides int8 speed: x86 dot-product instructions (VNNI, AMX) and their Arm counterparts (Jetson)
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimddp", "i8mm")


@dataclass(frozen=True)
class BenchResult:
    """One measurement, with what is needed to compare it with another device's: what ran, on what, how."""

    bundle: str
    model: str  # name and version
    variant: str
    precision: str
    sha256: str  # of the model file that ran on this backend (the manifest's hash, verified at load)
    signature: str  # Bundle.signature_state
    backend: str  # Backend.name: the loader that ran it
    provider: str  # Backend.provider: what actually ran it
    providers: list[str]  # what was asked for, in order
    fallbacks: list[str]  # the device's log lines for each provider skipped on the way
    threads: int
    runs: int
    warmup: int
    input: dict[str, Any]  # shape, dtype, where its distribution came from, seed
    latency_ms: dict[str, float]  # median, p90, p99, min, mean, max
    fps: float  # 1000 / median latency
    sustained_fps: float  # timed runs / wall time of the timed loop (includes the loop's own overhead)
    isa: list[str]
    machine: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """For a person at the device: one aligned line per subject (`to_dict` is for scripts)."""
        lat = self.latency_ms
        inp = self.input
        cpu = self.machine
        isa = ", ".join(self.isa) or f"none of {'/'.join(ISA_FLAGS[:4])}"
        precision = "" if self.precision == self.variant else f" ({self.precision})"
        rows = [
            ("model", f"{self.model} {self.variant}{precision}, sha256 {self.sha256[:16]}, {self.signature}"),
            ("ran on", f"{self.backend}/{self.provider} (asked: {', '.join(self.providers)}), {self.threads} "
                       f"intra-op thread(s)"),
            *[("fallback", f) for f in self.fallbacks],
            ("input", f"{'x'.join(str(d) for d in inp['shape'])} {inp['dtype']}, {inp['distribution']}"),
            ("latency", f"median {lat['median']:.3f} ms, p90 {lat['p90']:.3f}, p99 {lat['p99']:.3f}, "
                        f"min {lat['min']:.3f}, mean {lat['mean']:.3f} ({self.runs} runs after {self.warmup} warm-up)"),
            ("throughput", f"{self.fps:.1f} fps (1000/median), {self.sustained_fps:.1f} runs/s sustained"),
            ("cpu", f"{cpu['cpu']} ({cpu['arch']}, {cpu['cpus']} usable CPU(s)), ISA {isa}"),
            *([("gpu", cpu["gpu"])] if "gpu" in cpu else []),
            *[("WARNING", w) for w in self.warnings],
        ]
        width = max(len(k) for k, _ in rows)
        return [f"{k:<{width}}  {v}" for k, v in rows]


def parse_providers(text: str | Sequence[str]) -> list[str]:
    """``cuda,cpu`` -> ['cuda', 'cpu']. The profile's names (``models[].providers``), so a list that benched
    well can be pasted into the profile and run the same way."""
    names = [p.strip() for p in text.split(",")] if isinstance(text, str) else [str(p).strip() for p in text]
    names = [p for p in names if p]
    if not names:
        raise ConfigError(f"--providers {text!r}: name at least one provider ({', '.join(PROVIDERS)})")
    unknown = [p for p in names if p not in PROVIDERS]
    if unknown:
        raise ConfigError(f"--providers: unknown provider {unknown[0]!r}; choose from {', '.join(PROVIDERS)} "
                          "(comma-separated, tried in order)")
    return names


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, list[str]]:
    """CPU model name and ISA flags from /proc/cpuinfo (its first CPU): int8 latency depends on VNNI/AMX (x86)
    or dot-product instructions (Arm), so a number without them cannot be compared with another machine's."""
    names: dict[str, str] = {}
    flags: set[str] = set()
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware", "model") and value.strip():
                names.setdefault(key, value.strip())
            elif key in ("flags", "features") and not flags:  # x86 | Arm
                flags = set(value.split())
    except OSError:
        pass
    name = names.get("model name") or names.get("hardware") or names.get("model") or platform.processor()
    return name or platform.machine(), [f for f in ISA_FLAGS if f in flags]


def machine_info(cpu: str, provider: str) -> dict[str, Any]:
    """What the numbers were measured on (no host name: reports get shared)."""
    import onnxruntime as ort

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    out: dict[str, Any] = {"cpu": cpu, "arch": platform.machine(), "cpus": usable,
                           "system": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
                           "onnxruntime": ort.__version__}
    if provider in PROVIDERS and PROVIDERS[provider].gpu:
        from edge.inference.backends.engine_key import detect_gpu

        try:
            gpu = detect_gpu()
            out["gpu"] = f"{gpu.name} (sm{gpu.compute_capability[0]}{gpu.compute_capability[1]})"
        except MedgeError:
            out["gpu"] = "unknown (nvidia-smi gave no answer)"
    return out


def input_shape(bundle: Bundle) -> tuple[int, ...]:
    """The manifest's input shape with symbolic dims (a dynamic batch) pinned to 1, as the backends do."""
    return tuple(d if isinstance(d, int) and d > 0 else 1 for d in bundle.manifest.input.shape)


def representative_input(bundle: Bundle, seed: int = INPUT_SEED) -> tuple[np.ndarray, str]:
    """A deterministic random tensor a real preprocessed frame could be, and how it was drawn.

    Every value stays inside what preprocessing can produce ((0..1 - mean) / std per channel); within that,
    the bundle's calibration statistics (manifest ``reference``: mean of the tensors' means, mean of their
    standard deviations) set the distribution, else it is uniform over the range.
    """
    shape = input_shape(bundle)
    spec = bundle.manifest.preprocess
    channels = shape[1] if len(shape) == 4 else 1
    mean = np.resize(np.asarray(spec.mean, np.float64), channels).reshape(1, channels, *([1] * (len(shape) - 2)))
    std = np.resize(np.asarray(spec.std, np.float64), channels).reshape(mean.shape)
    lo, hi = (0.0 - mean) / std, (1.0 - mean) / std
    rng = np.random.default_rng(seed)
    ref = bundle.manifest.reference
    if ref is not None and ref.tensor_mean and ref.tensor_std:
        m, s = float(ref.tensor_mean[0]), max(float(ref.tensor_std[0]), 1e-6)
        x = np.clip(rng.normal(m, s, size=shape), lo, hi)
        how = f"normal(mean {m:.3f}, std {s:.3f}) from the bundle's reference statistics"
    else:
        x = rng.uniform(0.0, 1.0, size=shape) * (hi - lo) + lo
        how = "uniform over the normalised input range (the bundle has no reference statistics)"
    rng_text = ", ".join(f"{a:.2f}..{b:.2f}" for a, b in zip(lo.reshape(-1), hi.reshape(-1), strict=True))
    return x.astype(np.float32), f"{how}, clipped to {rng_text}, seed {seed}"


class _Collect(logging.Handler):
    """Keeps the warnings `build_backend` logs (each skipped provider and why) for the report."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_bench(bundle: Path | str, variant: str | None = None, providers: str | Sequence[str] = ("cpu",), threads: int = 2,
              runs: int = 100, warmup: int = 10, trusted_keys: Sequence[Path] = (),
              logger: logging.Logger | None = None) -> BenchResult:
    """The measurement behind `medge bench`, importable so benchmarks time through the device's own loading
    and fallback path too. Raises a one-line `MedgeError` (bad flag, bundle, variant, no usable provider)."""
    wanted = parse_providers(providers)
    if variant is not None and variant not in VARIANTS:
        raise ConfigError(f"--variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    for flag, value, least in (("--threads", threads, 1), ("--runs", runs, 1), ("--warmup", warmup, 0)):
        if value < least:
            raise ConfigError(f"{flag} {value}: expected a whole number of at least {least}")
    if threads > 64:
        raise ConfigError(f"--threads {threads}: at most 64 (models[].intra_op_threads)")
    keys = [Path(k) for k in trusted_keys]
    b = load_bundle(Path(bundle), trusted_keys=keys, require_signature=bool(keys))
    v = b.variant(variant)
    mcfg = ModelConfig(name=b.manifest.name, bundle=Path(bundle), variant=v.name, providers=tuple(wanted),
                       intra_op_threads=threads, require_signature=bool(keys))
    log = logger or logging.getLogger("medge.bench")
    collect = _Collect()
    log.addHandler(collect)
    try:
        backend = build_backend(b, mcfg, log)
    finally:
        log.removeHandler(collect)
    try:
        x, how = representative_input(b)
        for _ in range(warmup):
            backend.run(x)
        times = np.empty(runs, np.float64)
        t_loop = time.perf_counter()
        for i in range(runs):
            t0 = time.perf_counter()
            backend.run(x)
            times[i] = time.perf_counter() - t0
        wall = time.perf_counter() - t_loop
    except MedgeError:
        raise
    except Exception as e:  # a runtime failing mid-run (out of GPU memory, a kernel error): say which, in one line
        raise MedgeError(f"{b.root}: {v.name} failed on {backend.name}/{backend.provider} ({type(e).__name__}: "
                         f"{cause_line(e)})") from None
    finally:
        backend.close()
    ms = times * 1000.0
    median = float(np.median(ms))
    lat = {"median": median, "p90": float(np.percentile(ms, 90)), "p99": float(np.percentile(ms, 99)),
           "min": float(ms.min()), "mean": float(ms.mean()), "max": float(ms.max())}
    cpu, isa = cpu_info()
    warnings = []
    if backend.provider != wanted[0]:
        warnings.append(f"{wanted[0]} did not run this model; these numbers are {backend.provider}'s")
    return BenchResult(
        bundle=str(b.root), model=f"{b.manifest.name} {b.manifest.version}", variant=v.name, precision=v.precision,
        sha256=b.model_sha256(v.name, backend.name), signature=b.signature_state, backend=backend.name, provider=backend.provider,
        providers=wanted, fallbacks=collect.lines, threads=threads, runs=runs, warmup=warmup,
        input={"shape": list(x.shape), "dtype": str(x.dtype), "distribution": how, "seed": INPUT_SEED},
        latency_ms={k: round(val, 4) for k, val in lat.items()}, fps=round(1000.0 / median, 2) if median > 0 else 0.0,
        sustained_fps=round(runs / wall, 2) if wall > 0 else 0.0, isa=isa, machine=machine_info(cpu, backend.provider),
        warnings=warnings)


def bench_command(bundle: Path, variant: str | None, providers: str, threads: int, runs: int, warmup: int,
                  as_json: bool, trusted_keys: Sequence[Path], echo: Callable[[str], None] = print) -> int:
    """`medge bench`: print the report (aligned lines, or one JSON object)."""
    res = run_bench(bundle, variant, providers, threads, runs, warmup, trusted_keys)
    if as_json:
        echo(json.dumps(res.to_dict(), sort_keys=True))
    else:
        for line in res.lines():
            echo(line)
    return 0
