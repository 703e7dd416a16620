"""Model bundles: the contract between the export toolchain and the device.

A bundle is a folder::

    manifest.yaml        schema-versioned description; lists every other file with its SHA-256
    manifest.sig         optional Ed25519 signature over the exact bytes of manifest.yaml
    model.fp32.onnx      reference-precision model (always present)
    model.int8.onnx      ... and the variants export produced (int8, fp16)
    report.json/.md      export's accuracy and latency report
    engines/             device-built TensorRT engines (a cache: not hashed, rebuilt on mismatch)

The device loads a bundle only after every listed hash matches and, when the profile requires it, the
signature verifies against a trusted public key. Export writes bundles with `export.bundle_writer`
(never imported here); this module only reads and verifies.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edge.errors import BundleError
from edge.inference.intended_use import IntendedUse
from edge.inference.preprocess import PreprocessSpec
from edge.inference.reference import ReferenceStats
from edge.inference.tasks import TASK_KINDS, Output, TaskConfig

# 2: intended_use (what the model may read) and reference (statistics drift is measured against)
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)  # 1 loads with a warning: no intended use, no drift reference
MANIFEST = "manifest.yaml"
SIGNATURE = "manifest.sig"
CACHE_DIRS = ("engines",)  # device-side caches, deliberately outside the hashed file set


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"
    activation: str = "none"  # outputs only: sigmoid | softmax | none (already probabilities/logits)


@dataclass(frozen=True)
class Variant:
    """One precision of the model inside the bundle."""

    name: str  # fp32 | int8 | fp16
    file: str
    precision: str
    recipe: dict[str, Any] = field(default_factory=dict)
    # a runtime (edge.inference.backends LOADERS key) that runs its own file of this variant, measured faster
    # there and gated there: OpenVINO's int8 kernels pay on the narrow convs the ONNX Runtime recipe keeps float
    runtime_files: dict[str, str] = field(default_factory=dict)

    def file_for(self, runtime: str | None) -> str:
        return self.runtime_files.get(runtime or "", self.file)


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    task: str
    labels: tuple[str, ...]
    input: TensorSpec
    outputs: tuple[TensorSpec, ...]
    preprocess: PreprocessSpec
    variants: dict[str, Variant]
    default_variant: str
    files: dict[str, str]
    threshold: float = 0.5
    review_band: tuple[float, float] = (0.4, 0.6)
    urgent_labels: tuple[str, ...] = ()
    postprocess: dict[str, Any] = field(default_factory=dict)
    target: str = "cpu"
    description: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    intended_use: IntendedUse | None = None  # None: a schema-1 bundle, which declares none
    reference: ReferenceStats | None = None  # None: no drift monitoring for this bundle
    # CPU runtimes the accuracy gate passed on (edge.inference.backends LOADERS keys); a bundle is run only
    # on those. Older bundles were gated on ONNX Runtime alone.
    runtimes: tuple[str, ...] = ("onnxruntime",)
    codes: dict[str, dict[str, str]] = field(default_factory=dict)  # label -> coded concept (label_codes)
    # which explanation the bundle provides: {kind: cam, output, shape, gate, ...} (export/explain.py), or
    # {kind: none | mask | boxes, reason}; older bundles say nothing (read as none)
    explanation: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def legacy_warning(self) -> str | None:
        """What to tell the operator about a bundle from before intended use existed."""
        if self.intended_use is not None:
            return None
        return (f"bundle {self.name} {self.version} (manifest schema {self.schema_version}) declares no intended use: "
                "it will run on any modality and image, and its inputs are not watched for drift; re-export it "
                "with this medge")

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = MANIFEST) -> Manifest:
        try:
            sv = int(d.get("schema_version", -1))
            if sv not in READABLE_SCHEMAS:
                raise BundleError(
                    f"{where}: schema_version {d.get('schema_version')!r} is not supported by this medge "
                    f"(reads {', '.join(map(str, READABLE_SCHEMAS))}); re-export the bundle or update medge"
                )
            if sv >= 2 and "intended_use" not in d:
                raise BundleError(f"{where}: required key 'intended_use' is missing; re-export the bundle")
            task = str(d["task"])
            if task not in TASK_KINDS:
                raise BundleError(f"{where}: task {task!r} is not one of {', '.join(TASK_KINDS)}")
            pre = PreprocessSpec.from_dict(d["preprocess"])
            want = d.get("preprocess_sha256")
            if want and want != pre.sha256():
                raise BundleError(
                    f"{where}: preprocess_sha256 does not match the preprocess section; the manifest was "
                    "edited by hand after export - re-export the bundle"
                )
            variants = {
                k: Variant(name=k, file=str(v["file"]), precision=str(v.get("precision", k)),
                           recipe=dict(v.get("recipe") or {}),
                           runtime_files={str(r): str(f) for r, f in dict(v.get("runtime_files") or {}).items()})
                for k, v in dict(d["variants"]).items()
            }
            default = str(d.get("default_variant", "fp32"))
            if default not in variants:
                raise BundleError(f"{where}: default_variant {default!r} is not among variants {list(variants)}")
            inp = d["input"]
            rb = d.get("review_band", [0.4, 0.6])
            return cls(
                name=str(d["name"]),
                version=str(d["version"]),
                task=task,
                labels=tuple(str(x) for x in d["labels"]),
                input=TensorSpec(name=str(inp["name"]), shape=tuple(inp["shape"]), dtype=str(inp.get("dtype", "float32"))),
                outputs=tuple(
                    TensorSpec(name=str(o["name"]), shape=tuple(o.get("shape") or ()), dtype=str(o.get("dtype", "float32")),
                               activation=str(o.get("activation", "none")))
                    for o in d["outputs"]
                ),
                preprocess=pre,
                variants=variants,
                default_variant=default,
                files={str(k): str(v) for k, v in dict(d["files"]).items()},
                threshold=float(d.get("threshold", 0.5)),
                review_band=(float(rb[0]), float(rb[1])),
                urgent_labels=tuple(str(x) for x in d.get("urgent_labels") or ()),
                postprocess=dict(d.get("postprocess") or {}),
                target=str(d.get("target", "cpu")),
                description=str(d.get("description", "")),
                metrics=dict(d.get("metrics") or {}),
                calibration=dict(d.get("calibration") or {}),
                provenance=dict(d.get("provenance") or {}),
                intended_use=_intended_use(d["intended_use"], where) if sv >= 2 else None,
                reference=ReferenceStats.from_dict(d["reference"], where) if d.get("reference") else None,
                runtimes=tuple(str(r) for r in d.get("runtimes") or ("onnxruntime",)),
                codes=label_codes(d.get("codes"), tuple(str(x) for x in d["labels"]), where),
                explanation=_explanation(d.get("explanation"), d, where),
                schema_version=sv,
                raw=d,
            )
        except BundleError:
            raise
        except KeyError as e:
            raise BundleError(f"{where}: required key {e.args[0]!r} is missing; re-export the bundle") from None
        except (TypeError, ValueError) as e:
            raise BundleError(f"{where}: {e}") from None

    def task_config(self) -> TaskConfig:
        return TaskConfig(task=self.task, labels=self.labels,
                          outputs=tuple(Output(o.name, o.activation) for o in self.outputs), threshold=self.threshold,
                          review_band=self.review_band, urgent_labels=self.urgent_labels,
                          postprocess=dict(self.postprocess),
                          explanation_output=self.explanation.get("output") if self.explanation.get("kind") == "cam"
                          else None)


def _explanation(raw: Any, d: dict[str, Any], where: str) -> dict[str, Any]:
    if raw is None:
        return {"kind": "none", "reason": "the bundle predates explanation maps"}
    if not isinstance(raw, dict) or raw.get("kind") not in ("cam", "none", "mask", "boxes"):
        raise BundleError(f"{where}: explanation must be a mapping with kind cam, none, mask or boxes")
    if raw["kind"] == "cam" and d.get("task") != "classify":
        raise BundleError(f"{where}: explanation kind cam is for classify models, not {d.get('task')}")
    if raw["kind"] == "cam" and not raw.get("output"):
        raise BundleError(f"{where}: explanation kind cam names no output")
    return dict(raw)


def label_codes(raw: Any, labels: tuple[str, ...], where: str) -> dict[str, dict[str, str]]:
    """The manifest's ``codes``: each label as a coded concept ({scheme, value, meaning}, e.g. SCT 27925004
    Nodule), so the hospital's DICOM SR names the finding in a terminology a PACS and a registry understand.
    Findings carry their label's code; a label without one gets a private code at the hospital."""
    if raw in (None, {}):
        return {}
    if not isinstance(raw, dict):
        raise BundleError(f"{where}: codes must be a mapping label -> {{scheme, value, meaning}}")
    out = {}
    for label, c in raw.items():
        if str(label) not in labels:
            raise BundleError(f"{where}: codes.{label}: not one of the labels {list(labels)}")
        if not isinstance(c, dict) or set(c) != {"scheme", "value", "meaning"} or not all(
                isinstance(v, (str, int)) and str(v).strip() and len(str(v)) <= 64 for v in c.values()):
            raise BundleError(f"{where}: codes.{label} must be {{scheme: SCT, value: '27925004', meaning: Nodule}} "
                              "(three non-empty texts of at most 64 characters)")
        out[str(label)] = {k: str(c[k]).strip() for k in ("scheme", "value", "meaning")}
    return out


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk. Construct with `load_bundle`."""

    root: Path
    manifest: Manifest
    signed_by: str | None  # fingerprint of the key that verified the signature, or None if not verified

    @property
    def signature_state(self) -> str:
        """'signed by <fp>', 'signature not verified (no trusted key given)' or 'unsigned': a bundle loaded
        without trusted keys may well be signed, and calling it unsigned sends people hunting a problem."""
        if self.signed_by:
            return f"signed by {self.signed_by}"
        if (self.root / SIGNATURE).is_file():
            return "signature not verified (no trusted key given)"
        return "unsigned"

    def variant(self, name: str | None = None) -> Variant:
        name = name or self.manifest.default_variant
        try:
            return self.manifest.variants[name]
        except KeyError:
            raise BundleError(
                f"{self.root}: bundle has no {name!r} variant (has {', '.join(self.manifest.variants)})"
            ) from None

    def model_path(self, variant: str | None = None, runtime: str | None = None) -> Path:
        return self.root / self.variant(variant).file_for(runtime)

    def model_sha256(self, variant: str | None = None, runtime: str | None = None) -> str:
        """Of the file that runs: findings name exactly that file."""
        return self.manifest.files[self.variant(variant).file_for(runtime)]

    @property
    def engines_dir(self) -> Path:
        return self.root / "engines"


def key_fingerprint(public_key_bytes: bytes) -> str:
    return hashlib.sha256(public_key_bytes).hexdigest()[:16]


def load_public_key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except FileNotFoundError:
        raise BundleError(f"{path}: trusted public key file not found") from None
    except ValueError as e:
        raise BundleError(f"{path}: not a PEM public key ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{path}: trusted key must be an Ed25519 public key")
    return key


def verify_signature(root: Path, manifest_bytes: bytes, trusted_keys: list[Path]) -> str:
    """Return the fingerprint of the trusted key that signed manifest.yaml, or raise BundleError."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    sig_path = root / SIGNATURE
    if not sig_path.exists():
        raise BundleError(f"{root}: bundle is not signed ({SIGNATURE} missing) and this profile requires signatures")
    if not trusted_keys:
        raise BundleError(f"{root}: bundle is signed but the profile lists no trusted_keys to verify it with")
    sig = sig_path.read_bytes()
    for kp in trusted_keys:
        key = load_public_key(kp)
        try:
            key.verify(sig, manifest_bytes)
        except InvalidSignature:
            continue
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return key_fingerprint(raw)
    raise BundleError(
        f"{root}: signature does not verify against any trusted key; the bundle was modified after signing "
        "or signed by an untrusted key - do not use it"
    )


def _intended_use(d: Any, where: str) -> IntendedUse:
    """Schema 2 must say which modalities the model reads: an empty section would read everything, silently."""
    use = IntendedUse.from_dict(d, where)
    if not use.modalities:
        raise BundleError(f"{where}: intended_use.modalities is empty; a bundle must say which modalities its model "
                          "reads (re-export with --modality)")
    return use


def not_a_bundle(path: Path, shown: str | None = None) -> str:
    """Why ``path`` is no bundle folder (``shown``: how the user wrote it); a bare ONNX model is the usual
    mix-up, so say how to make one."""
    name = shown or str(path)
    if path.is_file() and path.suffix.lower() == ".onnx":
        return (f"{name}: is an ONNX model, not a bundle; make a bundle from it first: "
                f"medge export quantize {name} --calib IMAGES_DIR")
    if path.is_file():
        return f"{name}: is a file; a bundle is a folder (made by medge export quantize)"
    return f"{name}: bundle folder not found"


def load_bundle(root: Path | str, trusted_keys: list[Path] | None = None, require_signature: bool = False) -> Bundle:
    """Read and verify a bundle: manifest schema, every file hash, and the signature when required.

    A bundle with any mismatch is refused as a whole: a device must never run a model that is not
    exactly what export validated.
    """
    root = Path(root)
    mpath = root / MANIFEST
    if not root.is_dir():
        raise BundleError(not_a_bundle(root))
    try:
        mbytes = mpath.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{mpath}: manifest missing; this folder is not a medge bundle") from None
    try:
        data = yaml.safe_load(mbytes)
    except yaml.YAMLError as e:
        raise BundleError(f"{mpath}: manifest is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{mpath}: manifest must be a mapping")
    manifest = Manifest.from_dict(data, where=str(mpath))

    signed_by = None
    if require_signature or (root / SIGNATURE).exists() and trusted_keys:
        signed_by = verify_signature(root, mbytes, list(trusted_keys or []))

    for v in manifest.variants.values():
        for f in (v.file, *v.runtime_files.values()):
            if f not in manifest.files:
                raise BundleError(f"{mpath}: variant file {f} is not listed with a hash under 'files'")
    for rel, want in manifest.files.items():
        p = root / rel
        if not p.is_file():
            raise BundleError(f"{root}: file {rel} listed in the manifest is missing; the bundle is incomplete")
        got = sha256_file(p)
        if got != want:
            raise BundleError(
                f"{p}: SHA-256 mismatch (manifest {want[:12]}..., file {got[:12]}...); the bundle was "
                "modified or corrupted - refusing to load it"
            )
    listed = set(manifest.files) | {MANIFEST, SIGNATURE}
    for p in root.rglob("*"):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            if rel.split("/", 1)[0] in CACHE_DIRS:
                continue
            if rel not in listed:
                raise BundleError(f"{p}: file is not listed in the manifest; the bundle was modified after export")
    return Bundle(root=root, manifest=manifest, signed_by=signed_by)
