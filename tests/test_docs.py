"""Reference pages generated from the code stay current, and every profile key is documented."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

from edge.config import Config

ROOT = Path(__file__).resolve().parents[1]


def test_generated_reference_pages_are_current():
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "generate.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _keys(cls: type, prefix: str = "") -> list[str]:
    hints, out = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        if f.name == "source_file":
            continue
        tp = hints[f.name]
        sub = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else tp
        key = f"{prefix}{f.name}" + ("[]" if sub is not tp and dataclasses.is_dataclass(sub) else "")
        assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no doc"
        out.append(key)
        if dataclasses.is_dataclass(sub):
            out += _keys(sub, key + ".")
    return out


def test_profile_reference_lists_every_key_the_loader_accepts():
    page = (ROOT / "docs" / "PROFILE.md").read_text()
    keys = _keys(Config)
    assert len(keys) > 60
    missing = [k for k in keys if f"`{k}`" not in page]
    assert not missing, missing
    for k in ("pipeline.metrics_port", "sources[].loop", "sync.password_file", "sync.topic_prefix", "pipeline.overlays"):
        assert f"`{k}`" in page


def test_model_spec_reference_names_every_spec_and_postprocess_key():
    from edge.inference.tasks.base import POSTPROCESS_KEYS
    from export.spec import SPEC_KEYS

    page = (ROOT / "docs" / "MODEL_SPEC.md").read_text()
    for k in [*SPEC_KEYS, *POSTPROCESS_KEYS]:
        assert f"`{k}`" in page, k
    assert "background_labels" in page and "normal" in page
