"""Build the signed demo bundles: models/bundles/us-free-fluid, cxr-opacity (the device demo) and cxr-nodule.

Each reference model goes through the same `medge export quantize` path a user's model would: fresh
calibration and validation folders from the synthetic generators (seeds disjoint from training), the
`cpu` recipe, the accuracy gate at the default budget, then an Ed25519 signature with the demo key.
The private demo key lives at models/keys/demo-signing.pem and is never committed (.gitignore); when it
is missing a new pair is made and the public half (models/keys/demo-signing.pub.pem, committed, named in
firmware_configs/demo.yaml) is replaced, so bundles and trusted key always match.

    python -m models.build_bundles [--only us-free-fluid|cxr-opacity|cxr-nodule] [--n-calib 64] [--n-val 120]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from export.make_bundle import ExportOptions, run_export
from export.sign import keygen

ROOT = Path(__file__).resolve().parent
KEYS = ROOT / "keys"
PRIVATE = KEYS / "demo-signing.pem"
PUBLIC = KEYS / "demo-signing.pub.pem"
MODELS = {  # bundle name: (model folder, models.datasets kind)
    "us-free-fluid": ("us_free_fluid", "us"),
    "cxr-opacity": ("cxr_opacity", "cxr"),
    "cxr-nodule": ("cxr_nodule", "nodule"),
}
CALIB_SEED, VAL_SEED = 101, 202


def ensure_key() -> Path:
    if not PRIVATE.exists():
        PUBLIC.unlink(missing_ok=True)
        _, _, fp = keygen(PRIVATE, PUBLIC)
        print(f"new demo signing key {fp} (private key stays out of git)", file=sys.stderr)
    return PRIVATE


def make_set(kind: str, out: Path, n: int, seed: int) -> Path:
    subprocess.run([sys.executable, "-m", "models.datasets", kind, "--out", str(out), "--n", str(n), "--seed", str(seed)],
                   check=True, cwd=ROOT.parent, stdout=subprocess.DEVNULL)
    return out


def build(name: str, n_calib: int, n_val: int) -> None:
    folder, kind = MODELS[name]
    model = ROOT / folder / "model.onnx"
    if not model.is_file():
        raise SystemExit(f"{model}: reference model not trained yet (python -m models.train_{folder})")
    with tempfile.TemporaryDirectory(prefix=f"medge-{name}-") as tmp:
        calib = make_set(kind, Path(tmp) / "calib", n_calib, CALIB_SEED)
        val = make_set(kind, Path(tmp) / "val", n_val, VAL_SEED)
        res = run_export(ExportOptions(model=model, calib=calib, val=val, out=ROOT / "bundles" / name, target="cpu",
                                       sign_key=ensure_key(), force=True),
                         log=lambda m: print(f"[{name}] {m}", file=sys.stderr))
    g = res.gate
    print(f"{name}: {g['primary_metric']} FP32 {g['fp32'][g['primary_metric']]} INT8 {g['int8'][g['primary_metric']]} "
          f"(budget {g['budget']}), INT8 {res.latency['speedup_int8']:.2f}x FP32, float nodes {res.float_nodes}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(MODELS))
    ap.add_argument("--n-calib", type=int, default=64)
    ap.add_argument("--n-val", type=int, default=120)
    a = ap.parse_args(argv)
    for name in [a.only] if a.only else list(MODELS):
        build(name, a.n_calib, a.n_val)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
