"""The models a profile names, loaded and verified as bundles.

Kept apart from the daemon so `medge config check` and `medge doctor` verify bundles exactly the way
the daemon will at start, without starting anything.
"""

from __future__ import annotations

from edge.config import Config, ModelConfig
from edge.errors import BundleError, ConfigError
from edge.inference.bundle import Bundle, load_bundle


def load_model_bundle(cfg: Config, m: ModelConfig) -> Bundle:
    try:
        bundle = load_bundle(m.bundle, trusted_keys=list(cfg.trusted_keys), require_signature=m.require_signature)
    except BundleError as e:
        raise BundleError(f"model {m.name!r}: {e}") from None
    bundle.variant(m.variant)  # raises if the profile asks for a variant the bundle lacks
    return bundle


def wiring_problems(cfg: Config, bundles: dict[str, Bundle]) -> list[str]:
    """Sources whose declared modality their model's intended use excludes: such a source would never
    produce a finding, which on a device looks exactly like a run of normal patients."""
    from edge.sources import SOURCE_KINDS

    out = []
    where = cfg.source_file or "profile"
    for i, s in enumerate(cfg.sources):
        b, kind = bundles.get(s.model), SOURCE_KINDS.get(s.kind)
        use = b.manifest.intended_use if b is not None else None
        modality = kind.declared_modality(s) if kind is not None else None
        if use is not None and modality is not None and not use.accepts_modality(modality):
            out.append(f"{where}: sources[{i}] ({s.name}): modality {modality} is outside the intended use of model "
                       f"{s.model!r} ({b.manifest.name} {b.manifest.version} is for {', '.join(use.modalities)}); wire "
                       "the source to a model made for it")
    return out


def verify_models(cfg: Config) -> tuple[list[str], list[str]]:
    """Verify every bundle in the profile and how sources are wired to them; return one line per model and
    the warnings (bundles that declare no intended use). Wiring errors are raised together."""
    lines, warnings, bundles = [], [], {}
    for m in cfg.models:
        b = bundles[m.name] = load_model_bundle(cfg, m)
        v = b.variant(m.variant)
        sig = b.signature_state
        use = b.manifest.intended_use
        own = "".join(f", on {rt} {f} sha256 {b.manifest.files[f][:12]}" for rt, f in v.runtime_files.items())
        lines.append(f"model {m.name}: {b.manifest.name} {b.manifest.version} {v.name} "
                     f"sha256 {b.model_sha256(v.name)[:12]}{own} ({sig}); intended use: "
                     f"{use.describe() if use is not None else 'not declared'}")
        if b.manifest.legacy_warning:
            warnings.append(f"model {m.name}: {b.manifest.legacy_warning}")
    problems = wiring_problems(cfg, bundles)
    if problems:
        raise ConfigError(problems)
    return lines, warnings
