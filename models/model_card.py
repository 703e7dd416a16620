"""MODEL_CARD.md rendered from model.yaml and the metrics the training run measured.

The card is written by the training script itself, so its numbers can never drift from the committed
model: retraining rewrites model.onnx, metrics.json and the card together.
"""

from __future__ import annotations

from typing import Any

INTENDED_USE = (
    "**DEMONSTRATION ONLY, NOT FOR CLINICAL USE.** This model exists to exercise the medge toolchain "
    "(quantization, accuracy gate, bundles, on-device inference, findings) end to end. It was trained and "
    "evaluated on synthetic images only; its behaviour on real patient images is unknown and must not be "
    "relied on for any purpose."
)


def _fmt(v: Any) -> str:
    return "n/a" if v is None else str(v)


def render(meta: dict[str, Any], result: dict[str, Any], task_text: str, data_text: str) -> str:
    pre = meta["preprocess"]
    tr, ex, ho = result["training"], result["export"], result["held_out"]
    lines = [
        f"# Model card: {meta['name']} {meta['version']}",
        "",
        INTENDED_USE,
        "",
        "## Task",
        task_text,
        "",
        f"- task: `{meta['task']}`; labels: {', '.join(f'`{x}`' for x in meta['labels'])}; "
        f"urgent labels: {', '.join(f'`{x}`' for x in meta['urgent_labels']) or 'none'}",
        f"- decision threshold on the sigmoid output: {meta['threshold']}; "
        f"review band (finding gets `needs_review`): {meta['review_band']}",
    ]
    if meta.get("postprocess"):
        lines.append(f"- postprocess: {meta['postprocess']}")
    lines += [
        "",
        "## Input and preprocessing",
        f"- ONNX input `{meta['input']['name']}` float32 {result['input_shape']} (NCHW, batch 1, static); "
        f"output `logits` (apply sigmoid)",
        f"- `edge.inference.preprocess` spec: size {pre['size']}, {pre['color']}, {pre['resize']}, roi `{pre['roi']}`, "
        f"{pre['interpolation']} interpolation, window {pre['window']}, mean {pre['mean']}, std {pre['std']}, "
        f"pad {pre['pad_value']}",
        "- frames are display values (after modality/VOI LUT and MONOCHROME1 inversion) in [0, 1] or uint8",
        "",
        "## Architecture and export",
        f"- {ex['params']:,} parameters; ONNX opset {ex['opset']}, FP32, {ex['bytes']:,} bytes; BatchNorm folded "
        f"into convolutions; ops: {', '.join(ex['ops'])}",
        f"- onnxruntime vs torch max abs difference on real inputs: {ex['ort_vs_torch_max_abs']:.1e}",
        "",
        "## Training",
        data_text,
        f"- {tr['steps']} steps, batch {tr['batch']}, AdamW lr {tr['lr']} (cosine), torch {tr['torch']} CPU, "
        f"{tr['threads']} threads, seed {tr['seed']}, data seed {tr['data_seed']}",
        f"- time on the 2-core build machine (shared with other jobs): data {tr['data_seconds']} s, training "
        f"{tr['train_seconds']} s, total {tr['total_seconds']} s wall / {_fmt(tr.get('total_cpu_seconds'))} s CPU",
        "",
        "## Held-out metrics (FP32 ONNX through edge.inference.preprocess, onnxruntime CPU)",
        "| metric | value |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in ho.items()]
    lines += [
        "",
        "## Limitations",
        "- Synthetic data: anatomy, noise and artefacts are simplified; no real-world validation exists.",
        "- Fixed input size; images are letterboxed, so very small findings lose detail.",
        "",
        "Regenerate: see the command in the training script's docstring; the run rewrites this card.",
        "",
    ]
    return "\n".join(lines)
