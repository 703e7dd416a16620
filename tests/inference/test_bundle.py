"""Device-side bundle verification: hashes, signature, schema. Independent of the export toolchain."""

from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.errors import BundleError
from edge.inference.bundle import load_bundle
from edge.inference.preprocess import PreprocessSpec
from export.bundle_writer import finalize_manifest


def _make_bundle(root: Path, key: Ed25519PrivateKey | None = None) -> Path:
    root.mkdir()
    (root / "model.fp32.onnx").write_bytes(b"not really onnx, the loader only hashes it")
    spec = PreprocessSpec(size=(32, 32))
    manifest = {
        "schema_version": 1,
        "name": "toy",
        "version": "1.2.3",
        "task": "classify",
        "labels": ["finding"],
        "input": {"name": "input", "shape": [1, 1, 32, 32]},
        "outputs": [{"name": "logits", "shape": [1, 1], "activation": "sigmoid"}],
        "preprocess": spec.to_dict(),
        "preprocess_sha256": spec.sha256(),
        "variants": {"fp32": {"file": "model.fp32.onnx", "precision": "fp32"}},
        "default_variant": "fp32",
    }
    data = finalize_manifest(root, manifest)  # export's manifest writer: hashes every file
    if key is not None:
        (root / "manifest.sig").write_bytes(key.sign(data))
    return root


def _pub(tmp_path: Path, key: Ed25519PrivateKey, name="pub.pem") -> Path:
    p = tmp_path / name
    p.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return p


def test_valid_signed_bundle_loads(tmp_path):
    key = Ed25519PrivateKey.generate()
    b = load_bundle(_make_bundle(tmp_path / "b", key), [_pub(tmp_path, key)], require_signature=True)
    assert b.manifest.name == "toy" and b.signed_by
    assert b.model_sha256() == b.manifest.files["model.fp32.onnx"]


def test_tampered_model_is_refused(tmp_path):
    key = Ed25519PrivateKey.generate()
    root = _make_bundle(tmp_path / "b", key)
    with open(root / "model.fp32.onnx", "ab") as f:
        f.write(b"\x00")
    with pytest.raises(BundleError, match=r"model.fp32.onnx: SHA-256 mismatch .* refusing to load it"):
        load_bundle(root, [_pub(tmp_path, key)], require_signature=True)


def test_edited_manifest_fails_signature(tmp_path):
    key = Ed25519PrivateKey.generate()
    root = _make_bundle(tmp_path / "b", key)
    text = (root / "manifest.yaml").read_text().replace("version: 1.2.3", "version: 9.9.9")
    (root / "manifest.yaml").write_text(text)
    with pytest.raises(BundleError, match="signature does not verify"):
        load_bundle(root, [_pub(tmp_path, key)], require_signature=True)


def test_untrusted_signer_and_unsigned_bundle_refused(tmp_path):
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    root = _make_bundle(tmp_path / "b", key)
    with pytest.raises(BundleError, match="signature does not verify"):
        load_bundle(root, [_pub(tmp_path, other)], require_signature=True)
    unsigned = _make_bundle(tmp_path / "u")
    with pytest.raises(BundleError, match="not signed"):
        load_bundle(unsigned, [_pub(tmp_path, key)], require_signature=True)
    assert load_bundle(unsigned).signed_by is None  # allowed only where the profile says so


def test_extra_file_and_missing_file_refused_but_engine_cache_allowed(tmp_path):
    root = _make_bundle(tmp_path / "b")
    (root / "engines").mkdir()
    (root / "engines" / "orin-sm87-trt10-int8.plan").write_bytes(b"cache")
    load_bundle(root)
    (root / "extra.onnx").write_bytes(b"x")
    with pytest.raises(BundleError, match="extra.onnx: file is not listed"):
        load_bundle(root)
    (root / "extra.onnx").unlink()
    (root / "model.fp32.onnx").unlink()
    with pytest.raises(BundleError, match="model.fp32.onnx listed in the manifest is missing"):
        load_bundle(root)


def test_hand_edited_preprocess_and_schema_version_refused(tmp_path):
    root = _make_bundle(tmp_path / "b")
    m = yaml.safe_load((root / "manifest.yaml").read_text())
    m["preprocess"]["resize"] = "stretch"
    (root / "manifest.yaml").write_text(yaml.safe_dump(m))
    with pytest.raises(BundleError, match="preprocess_sha256 does not match"):
        load_bundle(root)
    m["preprocess"]["resize"] = "letterbox"
    m["schema_version"] = 3
    (root / "manifest.yaml").write_text(yaml.safe_dump(m))
    with pytest.raises(BundleError, match="schema_version 3 is not supported"):
        load_bundle(root)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="bundle folder not found"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="manifest missing"):
        load_bundle(tmp_path / "empty")
