"""A verified bundle with its backend, preprocessor and output decoder, ready for a pipeline.

The daemon, `medge replay` and the demo all load models through here, so they run exactly the same code
path: verify the bundle (hashes, signature), build the backend from the ordered providers, warm it up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from edge.config import Config, ModelConfig
from edge.findings import ModelRef
from edge.inference.backends import Backend, build_backend
from edge.inference.bundle import Bundle, load_bundle
from edge.inference.modelset import load_model_bundle
from edge.inference.preprocess import Preprocessor
from edge.inference.tasks import Task, build_task


@dataclass
class LoadedModel:
    config: ModelConfig
    bundle: Bundle
    backend: Backend
    preprocessor: Preprocessor
    task: Task
    ref: ModelRef

    def describe(self) -> str:
        m = self.bundle.manifest
        sig = self.bundle.signature_state
        return (f"{self.config.name}: {m.name} {m.version} {self.ref.variant} on {self.backend.name}/"
                f"{self.backend.provider} ({m.task}, sha256 {self.ref.sha256[:12]}, {sig})")

    def close(self) -> None:
        self.backend.close()


def assemble(bundle: Bundle, mcfg: ModelConfig, overlays: bool, logger: logging.Logger,
             allow_spinning: bool = False) -> LoadedModel:
    variant = bundle.variant(mcfg.variant)
    backend = build_backend(bundle, mcfg, logger, allow_spinning=allow_spinning)
    ref = ModelRef(bundle.manifest.name, bundle.manifest.version, bundle.model_sha256(variant.name, backend.name),
                   variant.name)
    return LoadedModel(mcfg, bundle, backend, Preprocessor(bundle.manifest.preprocess),
                       build_task(bundle.manifest, overlays=overlays), ref)


def load_model(cfg: Config, mcfg: ModelConfig, logger: logging.Logger) -> LoadedModel:
    # Every finding in the outbox is sent, so an overlay is only drawn when privacy also allows sending it.
    overlays = cfg.pipeline.overlays != "none" and cfg.privacy.send_overlays
    return assemble(load_model_bundle(cfg, mcfg), mcfg, overlays, logger)


def load_model_dir(bundle_dir: Path, variant: str | None, trusted_keys: list[Path], logger: logging.Logger,
                   threads: int = 2, overlays: bool = False) -> LoadedModel:
    """For `medge replay`: a bundle folder without a profile (signature required only if keys are given)."""
    bundle = load_bundle(bundle_dir, trusted_keys=trusted_keys, require_signature=bool(trusted_keys))
    mcfg = ModelConfig(name=bundle.manifest.name, bundle=Path(bundle_dir), variant=variant, providers=("cpu",),
                       intra_op_threads=threads, require_signature=bool(trusted_keys))
    bundle.variant(variant)
    return assemble(bundle, mcfg, overlays, logger)
