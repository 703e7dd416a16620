"""The models a profile names, loaded and verified as bundles.

Kept apart from the daemon so `medge config check` and `medge doctor` verify bundles exactly the way
the daemon will at start, without starting anything.
"""

from __future__ import annotations

from edge.config import Config, ModelConfig
from edge.errors import BundleError
from edge.inference.bundle import Bundle, load_bundle


def load_model_bundle(cfg: Config, m: ModelConfig) -> Bundle:
    try:
        bundle = load_bundle(m.bundle, trusted_keys=list(cfg.trusted_keys), require_signature=m.require_signature)
    except BundleError as e:
        raise BundleError(f"model {m.name!r}: {e}") from None
    bundle.variant(m.variant)  # raises if the profile asks for a variant the bundle lacks
    return bundle


def verify_models(cfg: Config) -> list[str]:
    """Verify every bundle in the profile; return one human-readable line per model."""
    lines = []
    for m in cfg.models:
        b = load_model_bundle(cfg, m)
        v = b.variant(m.variant)
        sig = b.signature_state
        lines.append(f"model {m.name}: {b.manifest.name} {b.manifest.version} {v.name} "
                     f"sha256 {b.model_sha256(v.name)[:12]} ({sig})")
    return lines
