"""`medge export ...`: the workstation toolchain's commands (quantize, sign, keygen, verify, build-engine).

Thin wrappers like edge.cli: parse, call one function; a MedgeError becomes one line and exit 2 in
`edge.cli.Commands`, whether this app runs as `medge export` or on its own.
Progress goes to stderr so stdout stays the one-line result a script can read.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

import typer

from edge.cli import Commands
from edge.errors import InputError

app = typer.Typer(cls=Commands, help="Workstation toolchain: quantize, sign, verify, build TensorRT engines.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


def _log(msg: str) -> None:
    typer.echo(msg, err=True)


def _floats(text: str | None, flag: str, n: int | None = None) -> list[float] | None:
    if text is None:
        return None
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise InputError(f"{flag} {text!r}: expected comma-separated numbers, e.g. 0.485,0.456,0.406") from None
    if not vals or (n is not None and len(vals) != n):
        raise InputError(f"{flag} {text!r}: expected {n or 'one or more'} comma-separated numbers")
    return vals


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [v.strip() for v in text.split(",") if v.strip()]


@app.command("quantize")
def quantize_cmd(
    model: Path = typer.Argument(..., help="trained FP32 ONNX model (one NCHW image input)", metavar="MODEL.onnx"),
    calib: Path = typer.Option(..., "--calib", help="calibration images: PNG/JPEG/DICOM/video, flat or in class folders",
                               metavar="DIR"),
    out: Path | None = typer.Option(None, "--out", help="bundle folder to create (default: <name>-<version>-<target> "
                             "next to the model)", metavar="DIR"),
    val: Path | None = typer.Option(None, "--val", help="labelled validation folder (labels.csv or class folders, "
                                    "masks/, boxes.json); without it the gate measures agreement with FP32",
                                    metavar="DIR"),
    target: str = typer.Option("cpu", "--target", help="cpu | tensorrt"),
    spec: Path | None = typer.Option(None, "--spec", help="model spec YAML (default: model.yaml next to the model if "
                                     "present; docs/MODEL_SPEC.md)", metavar="FILE"),
    write_spec: Path | None = typer.Option(None, "--write-spec", help="save the spec this export used", metavar="FILE"),
    task: str | None = typer.Option(None, "--task", help="classify | segment | detect (default: from the output shape)"),
    name: str | None = typer.Option(None, "--name", help="model name (default: the model file's name)"),
    model_version: str | None = typer.Option(None, "--model-version", help="model version (default: ONNX "
                                             "model_version, else 0.1.0)", metavar="TEXT"),
    labels: str | None = typer.Option(None, "--labels", help="comma-separated, one per output channel in order "
                                      "(default: class folder names of --val, else placeholders)", metavar="A,B,..."),
    threshold: float | None = typer.Option(None, "--threshold", help="positive at or above (default 0.5)"),
    review_band: str | None = typer.Option(None, "--review-band", help="needs-review band (default 0.4,0.6)",
                                           metavar="LOW,HIGH"),
    urgent: str | None = typer.Option(None, "--urgent", help="labels whose positive findings are urgent",
                                      metavar="A,B,..."),
    activation: str | None = typer.Option(None, "--activation", help="sigmoid | softmax | none (default: none if "
                                          "the graph ends in Sigmoid/Softmax, else by channel count)"),
    mean: str | None = typer.Option(None, "--mean", help="per-channel mean on 0..1 pixels (default 0)", metavar="M[,M,M]"),
    std: str | None = typer.Option(None, "--std", help="per-channel std on 0..1 pixels (default 1)", metavar="S[,S,S]"),
    color: str | None = typer.Option(None, "--color", help="gray | rgb (default: from the input's channels)"),
    resize: str | None = typer.Option(None, "--resize", help="letterbox | stretch (default letterbox)"),
    roi: str | None = typer.Option(None, "--roi", help="full | us_region (default full)"),
    modality: str | None = typer.Option(None, "--modality", help="DICOM modalities the model is for, e.g. CR,DX "
                                        "(intended use; default: those of the calibration DICOMs)", metavar="A,B,..."),
    method: str = typer.Option("minmax", "--method", help="calibration: minmax | entropy | percentile"),
    max_drop: float | None = typer.Option(None, "--max-drop", help="allowed drop of the primary metric "
                                          "(default: AUROC 0.01, Dice 0.02, detection recall 0.02)"),
    input_shape: str | None = typer.Option(None, "--input-shape", help="pin dynamic dims (default: the spec's size)",
                                           metavar="NxCxHxW"),
    max_fallback: int = typer.Option(8, "--max-fallback", help="max nodes the accuracy gate may keep in float"),
    allow_weak_model: bool = typer.Option(False, "--allow-weak-model", help="export even if the FP32 model is at chance "
                                          "level on --val (AUROC < 0.6, Dice < 0.1, detection recall < 0.1); recorded "
                                          "as weak_model_allowed in the manifest and report"),
    min_subgroup_samples: int = typer.Option(20, "--min-subgroup-samples", help="subgroups (extra labels.csv columns "
                                             "or subgroups.csv in --val) with at least N samples must keep INT8 within "
                                             "--max-drop too; smaller ones are reported, not gated", metavar="N"),
    video_step: int = typer.Option(10, "--video-step", help="use every k-th frame of videos / multi-frame DICOM"),
    latency_runs: int = typer.Option(30, "--latency-runs", help="runs per variant for the latency table"),
    fp16: bool | None = typer.Option(None, "--fp16/--no-fp16", help="add an FP16 variant (default: GPU targets only)"),
    key: Path | None = typer.Option(None, "--key", help="sign the bundle with this Ed25519 private key", metavar="FILE"),
    force: bool = typer.Option(False, "--force", help="replace an existing output folder"),
) -> None:
    """Quantize MODEL for a target, gate it against FP32 and write a bundle; no spec file needed."""
    from .make_bundle import ExportOptions, run_export
    from .report import drop_text, speed_phrase
    from .spec import SpecFlags

    rb = _floats(review_band, "--review-band", 2)
    if min_subgroup_samples < 1:
        raise InputError(f"--min-subgroup-samples {min_subgroup_samples}: expected a whole number of at least 1")
    pre = {k: v for k, v in (("mean", _floats(mean, "--mean")), ("std", _floats(std, "--std")), ("color", color),
                             ("resize", resize), ("roi", roi)) if v is not None}
    flags = SpecFlags(name=name, version=model_version, task=task, labels=_names(labels), threshold=threshold,
                      review_band=(rb[0], rb[1]) if rb else None, urgent_labels=_names(urgent), activation=activation,
                      preprocess=pre, modalities=[m.upper() for m in _names(modality) or []] or None)
    opts = ExportOptions(model=model, calib=calib, val=val, out=out, target=target, spec=spec, spec_flags=flags,
                         write_spec=write_spec, method=method, max_drop=max_drop, input_shape=input_shape,
                         max_fallback=max_fallback, video_step=video_step, latency_runs=latency_runs, fp16=fp16,
                         sign_key=key, force=force, allow_weak_model=allow_weak_model,
                         min_subgroup_samples=min_subgroup_samples)
    with ExitStack() as stack:
        def progress(label: str, total: int):
            """One bar per folder, finished as soon as its last file is read so bars never overlap."""
            bar = stack.enter_context(typer.progressbar(length=total, label=f"reading {label} ({total} files)",
                                                        file=sys.stderr))
            done = [0]

            def update(n: int) -> None:
                bar.update(n)
                done[0] += n
                if done[0] >= total:
                    bar.render_finish()

            return update

        res = run_export(opts, log=_log, progress=progress)
    g = res.gate
    ref = "vs its labels" if g["reference"] == "labels" else "vs FP32's own decisions (no --val)"
    typer.echo(f"{res.out}: {g['primary_metric']} {drop_text(g['drop'])} {ref} (budget {g['budget']}), INT8 "
               f"{speed_phrase(res.latency['speedup_int8'])} on this machine; {len(res.float_nodes)} node(s) kept in float"
               + ("; WEAK MODEL allowed (--allow-weak-model)" if g.get("weak_model_allowed") else ""))


@app.command("keygen")
def keygen_cmd(
    private: Path = typer.Argument(..., help="private key file to create (keep it off devices and out of git)"),
    public: Path | None = typer.Option(None, "--public", help="public key file (default: <name>.pub.pem)"),
    force: bool = typer.Option(False, "--force", help="overwrite existing key files"),
) -> None:
    """Create an Ed25519 signing key pair (PEM)."""
    from .sign import keygen

    priv, pub, fp = keygen(private, public, force)
    typer.echo(f"private key {priv}, public key {pub} (fingerprint {fp})")


@app.command("sign")
def sign_cmd(
    bundle: Path = typer.Argument(..., help="bundle folder"),
    key: Path = typer.Option(..., "--key", help="Ed25519 private key (PEM)"),
) -> None:
    """Verify a bundle's hashes, then sign its manifest (writes manifest.sig)."""
    from .sign import sign_bundle

    fp = sign_bundle(bundle, key)
    typer.echo(f"{bundle}: signed by key {fp}")


@app.command("verify")
def verify_cmd(
    bundle: Path = typer.Argument(..., help="bundle folder"),
    key: list[Path] = typer.Option([], "--key", help="trusted Ed25519 public key (PEM); repeatable", metavar="PEM"),
) -> None:
    """Check every hash and the signature exactly as the device does."""
    from .sign import verify_bundle

    b = verify_bundle(bundle, list(key))
    m = b.manifest
    typer.echo(f"{bundle}: OK - {m.name} {m.version} ({m.task}, target {m.target}, variants {', '.join(m.variants)}), "
               f"signed by key {b.signed_by}")


@app.command("build-engine")
def build_engine_cmd(
    bundle: Path = typer.Argument(..., help="bundle folder"),
    variant: str | None = typer.Option(None, "--variant", help="int8 | fp16 | fp32 (default: the bundle's)"),
    dla_core: int | None = typer.Option(None, "--dla-core", help="build for this DLA core (Jetson), GPU fallback on"),
    workspace_mb: int = typer.Option(1024, "--workspace-mb", help="TensorRT builder workspace"),
    rebuild: bool = typer.Option(False, "--rebuild", help="rebuild even if an engine for this key exists"),
) -> None:
    """Build a TensorRT engine for this GPU into BUNDLE/engines/ (keyed by GPU, SM, TensorRT version, precision)."""
    from .tensorrt import build_engine

    path = build_engine(bundle, variant=variant, dla_core=dla_core, workspace_mb=workspace_mb, rebuild=rebuild,
                        log=_log)
    typer.echo(f"{path}")


if __name__ == "__main__":
    app()
