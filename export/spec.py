"""The model spec: what a bundle needs beyond the ONNX graph, and where each value came from.

A spec turns a graph into something a device can run: the task kind, labels and thresholds, and the
preprocessing the model was trained with. Nobody should have to write one by hand for an ordinary image
model, so `SpecResolver` builds it from, in order of precedence: command-line flags, a spec file
(``--spec``, or ``model.yaml`` next to the model), what the graph says (input name, channels and size, output
shape, a final Sigmoid/Softmax), the validation folder's class folders, and defaults. The complete result
is printed, stored in the bundle as ``model_spec.yaml`` (with where each value came from) and, with
``--write-spec``, saved so the next export is reproducible without the flags.

It is resolved in two steps because the graph only tells the output shapes once its input is pinned:
`SpecResolver.preprocess` (input size and colour), then `SpecResolver.complete` (task, outputs, labels).

`SPEC_KEYS` is the one table of top-level keys: a spec file with any other key is refused, and
docs/MODEL_SPEC.md is generated from it together with `PreprocessSpec`'s fields and `POSTPROCESS_KEYS`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import yaml

from edge.errors import BundleError, InputError
from edge.inference.bundle import label_codes
from edge.inference.preprocess import PreprocessSpec
from edge.inference.tasks import TASK_KINDS
from edge.inference.tasks.base import POSTPROCESS_KEYS, background_set

from .intended_use import InferredUse
from .intended_use import infer as infer_intended_use

ACTIVATIONS = ("sigmoid", "softmax", "none")
# ops that move or reshape values without changing them: a Sigmoid before a Flatten still ends the graph
PASSTHROUGH_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose", "Resize", "Upsample",
                             "Cast"})
SPEC_FILE = "model_spec.yaml"  # the resolved spec, inside the bundle


@dataclass(frozen=True)
class SpecKey:
    name: str
    kind: str  # how the value is written
    default: str  # how the value is chosen when neither a flag nor the spec file gives it
    flag: str  # the `medge export quantize` option that sets it ("" if none)
    doc: str


SPEC_KEYS: dict[str, SpecKey] = {k.name: k for k in (
    SpecKey("name", "text", "the model file's name (its folder's name for model.onnx)", "--name",
            "model name on every finding and in the bundle"),
    SpecKey("version", "text", "the ONNX model_version if set, else 0.1.0", "--model-version",
            "model version on every finding; a new export of a changed model needs a new version"),
    SpecKey("task", "classify | segment | detect", "from the first output's shape: (1, K) or (1, K, 1, 1) classify, "
            "(1, K, H, W) segment; anything else (detect included) must be given", "--task",
            "how outputs become findings (edge.inference.tasks)"),
    SpecKey("description", "text", "the ONNX doc_string, else empty", "", "what the model finds, for people"),
    SpecKey("labels", "list of text", "classify with a folder-per-class --val (no labels.csv): the class folders' "
            "names in sorted order (as torchvision's ImageFolder numbers them); else placeholder names (finding; "
            "negative, finding; class_0 ...); detect with more than one class must be given", "--labels",
            "one name per output channel, in the model's order. A single-logit classifier reports the probability "
            "of the last label. Labels in postprocess.background_labels never produce a finding"),
    SpecKey("threshold", "number 0..1", "0.5", "--threshold", "confidence at or above which a finding is positive"),
    SpecKey("review_band", "[low, high], 0..1", "[0.4, 0.6]", "--review-band",
            "confidences inside the band are flagged needs_review, on either side of the threshold"),
    SpecKey("urgent_labels", "list of labels", "[]", "--urgent",
            "positive findings of these labels outside the review band get priority urgent"),
    SpecKey("codes", "mapping label -> {scheme, value, meaning}", "{} (the hospital's SR then names the label with "
            "a private code, scheme 99MEDGE)", "", "each label as a coded concept (e.g. {scheme: SCT, value: '27925004', "
            "meaning: Nodule}); every finding carries its label's code and the hospital's DICOM SR uses it"),
    SpecKey("input", "{name: text}", "the graph's only input", "", "checked against the graph"),
    SpecKey("outputs", "list of {name, activation}", "the first graph output (detect: all of them, boxes first); "
            "activation none when the graph ends in Sigmoid or Softmax (through reshapes), else sigmoid for one "
            "channel and softmax for several (detect: none)", "--activation",
            "which outputs the task reads, and the activation (sigmoid | softmax | none) that makes them "
            "probabilities"),
    SpecKey("preprocess", "mapping (below)", "size and colour from the graph's input; the rest as below",
            "--mean --std --color --resize --roi", "frame -> tensor, exactly as in training (the one code path: "
            "edge.inference.preprocess)"),
    SpecKey("postprocess", "mapping (below)", "{}", "", "task options (below); unknown keys are refused"),
    SpecKey("intended_use", "mapping (below)", "read off the calibration DICOMs (modalities, body parts, views, "
            "photometric, colour; spacing widened x1.5 and sizes x2 either way); without DICOM calibration inputs "
            "the modalities must be given", "--modality",
            "what the device lets the model read: any other input produces no finding, only a counted, logged "
            "out-of-scope event (edge.inference.intended_use)"),
)}


@dataclass
class SpecFlags:
    """Spec values given on the command line; None: not given."""

    name: str | None = None
    version: str | None = None
    task: str | None = None
    labels: list[str] | None = None
    threshold: float | None = None
    review_band: tuple[float, float] | None = None
    urgent_labels: list[str] | None = None
    activation: str | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)  # mean, std, color, resize, roi
    modalities: list[str] | None = None  # intended_use.modalities


@dataclass
class ResolvedSpec:
    spec: dict[str, Any]
    origin: dict[str, str]  # top-level key -> where its value came from
    file: Path | None  # the spec file read, if any
    notes: list[str] = field(default_factory=list)  # what the user should know (placeholder labels, ...)

    def text(self) -> str:
        """YAML of the whole spec, each top-level key followed by where it came from."""
        out = [f"# medge model spec (docs/MODEL_SPEC.md); precedence: flags > {self.file.name if self.file else 'spec file'}"
               " > ONNX graph > validation folders > defaults"]
        for k in SPEC_KEYS:
            if k not in self.spec:
                continue
            v = self.spec[k]
            flow = None if isinstance(v, (list, dict)) else False  # lists of scalars inline, everything else block
            # a scalar stays on one line: a comment after the first line of a wrapped scalar is not YAML
            width = 110 if isinstance(v, (list, dict)) else float("inf")
            chunk = yaml.safe_dump({k: v}, sort_keys=False, default_flow_style=flow, width=width).rstrip("\n")
            first, _, rest = chunk.partition("\n")
            out.append(f"{first}  # {self.origin.get(k, 'default')}" + (f"\n{rest}" if rest else ""))
        return "\n".join(out) + "\n"


def read_spec_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{path}: model spec not found")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise InputError(f"{path}: a model spec must be a mapping")
    unknown = set(spec) - set(SPEC_KEYS)
    if unknown:
        raise InputError(f"{path}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; allowed: {', '.join(SPEC_KEYS)} "
                         "(docs/MODEL_SPEC.md)")
    return spec


class SpecResolver:
    """Builds one export's spec (see the module docstring)."""

    def __init__(self, model_path: Path, model: onnx.ModelProto, spec_path: Path | None, flags: SpecFlags,
                 input_shape: tuple[int, ...] | None, val: Path | None) -> None:
        self.model_path, self.model, self.flags, self.input_shape, self.val = model_path, model, flags, input_shape, val
        default = Path(model_path).with_name("model.yaml")
        self.file = Path(spec_path) if spec_path else (default if default.is_file() else None)
        self.where = str(self.file) if self.file else f"{model_path} (no spec file)"
        self.given = read_spec_file(self.file) if self.file else {}
        self.spec: dict[str, Any] = {}
        self.origin: dict[str, str] = {}
        self.notes: list[str] = []

    def _take(self, key: str, flag_value: Any, inferred: Any = None, how: str = "default") -> Any:
        if flag_value is not None:
            value, src = flag_value, "flag " + SPEC_KEYS[key].flag.split()[0]
        elif key in self.given:
            value, src = self.given[key], self.file.name if self.file else "spec file"
        else:
            value, src = inferred, how
        self.spec[key], self.origin[key] = value, src
        return value

    def default_out(self, target: str) -> Path:
        """<name>-<version>-<target> next to the model, before the rest of the spec is resolved."""
        name = self.flags.name or self.given.get("name") or _default_name(self.model_path)
        version = self.flags.version or self.given.get("version") or self._graph_version()[0]
        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{name}-{version}-{target}")
        return Path(self.model_path).parent / safe

    def _graph_version(self) -> tuple[str, str]:
        v = self.model.model_version
        return (str(v), "ONNX model_version") if v > 0 else ("0.1.0", "default")

    # ------------------------------------------------------------------------------ step 1: the input
    def preprocess(self) -> PreprocessSpec:
        from .quantize import graph_input

        try:
            inp = graph_input(self.model)
        except InputError as e:
            raise InputError(f"{self.model_path}: {e}") from None
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in inp.type.tensor_type.shape.dim]
        if len(dims) != 4:
            raise InputError(f"{self.model_path}: input {inp.name!r} has rank {len(dims)}; expected N x C x H x W")
        if self.input_shape:
            dims = [v if v is not None else self.input_shape[i] for i, v in enumerate(dims)]
        given = self.given.get("preprocess") or {}
        if not isinstance(given, dict):
            raise InputError(f"{self.where}: preprocess must be a mapping of the keys in docs/MODEL_SPEC.md")
        given = dict(given)
        pre = {**given, **self.flags.preprocess}
        src = [s for s, used in ((self.file.name if self.file else "", bool(given)), ("flags", bool(self.flags.preprocess)))
               if used]
        channels = dims[1]
        if "color" not in pre:
            if channels not in (None, 1, 3):
                raise InputError(f"{self.model_path}: input {inp.name!r} has {channels} channels; medge feeds 1 (gray) "
                                 "or 3 (rgb)")
            pre["color"] = "rgb" if channels == 3 else "gray"
            src.append("graph" if channels else "default")
        if "size" not in pre:
            if dims[2] is None or dims[3] is None:
                c = 3 if pre["color"] == "rgb" else 1
                raise InputError(f"{self.model_path}: input {inp.name!r} has a dynamic height or width; pass "
                                 f"--input-shape 1x{c}xHxW (e.g. 1x{c}x256x256) or set preprocess.size in the spec")
            pre["size"] = [dims[2], dims[3]]
            src.append("graph")
        try:
            spec = PreprocessSpec.from_dict(pre)
        except (ValueError, TypeError) as e:
            raise InputError(f"{self.where}: preprocess: {e}") from None
        self.spec["preprocess"] = spec.to_dict()
        self.origin["preprocess"] = " + ".join(dict.fromkeys(src)) + " + defaults"
        return spec

    # ------------------------------------------------------------------------------ step 2: the rest
    def complete(self, prepared: onnx.ModelProto, io: dict[str, Any]) -> ResolvedSpec:
        """``prepared``/``io``: the pinned, shape-inferred graph and its I/O description (quantize.prepare_model)."""
        f, w = self.flags, self.where
        name = self._take("name", f.name, _default_name(self.model_path), "model file name")
        version = self._take("version", f.version, *self._graph_version())
        self._take("description", None, (self.model.doc_string or self.model.graph.doc_string or "").strip(),
                   "ONNX doc_string" if (self.model.doc_string or self.model.graph.doc_string) else "default")
        for k, v in (("name", name), ("version", version)):
            if not isinstance(v, (str, int, float)) or not str(v).strip():
                raise InputError(f"{w}: {k} must be non-empty text")
            self.spec[k] = str(v).strip()

        given_in = self.given.get("input") or {}
        if not isinstance(given_in, dict):
            raise InputError(f"{w}: input must be a mapping like {{name: input}}")
        want_in = given_in.get("name")
        if want_in and want_in != io["input"]["name"]:
            raise InputError(f"{w}: input name {want_in!r} is not the model's input {io['input']['name']!r}")
        self.spec["input"], self.origin["input"] = {"name": io["input"]["name"]}, "graph"

        shapes = {o["name"]: o["shape"] for o in io["outputs"]}
        declared = self.given.get("outputs")
        if declared is not None and not (isinstance(declared, list) and declared and isinstance(declared[0], dict)):
            raise InputError(f"{w}: outputs must be a list of {{name, activation}}")
        first = str(declared[0].get("name")) if declared else io["outputs"][0]["name"]
        shape = shapes.get(first, [])
        task = self._take("task", f.task, *_guess_task(shape))
        if task is None:
            raise InputError(f"{self.model_path}: cannot tell the task from output {first!r} shape {shape}; "
                             f"pass --task {' | '.join(TASK_KINDS)}")
        if task not in TASK_KINDS:
            raise InputError(f"{w}: task {task!r} is not one of {', '.join(TASK_KINDS)}")
        outputs = self._outputs(io, task)
        channels = _channels(task, [shapes[o["name"]] for o in outputs])
        if f.activation is None and "outputs" not in self.given:
            scores = outputs[-1]["name"] if task == "detect" else outputs[0]["name"]
            final = _final_op(prepared, scores)
            if final in ("Sigmoid", "Softmax"):
                outputs[0]["activation"], how = "none", f"graph (ends in {final})"
            elif task == "detect":
                outputs[0]["activation"], how = "none", "graph + default activation"
                self.notes.append("detect: scores are taken as probabilities already; pass --activation sigmoid if "
                                  "the model outputs logits")
            else:
                outputs[0]["activation"] = "softmax" if (channels or 1) > 1 else "sigmoid"
                how = "graph + default activation"
            self.origin["outputs"] = how
        self.spec["outputs"] = outputs

        labels = self._labels(task, channels)
        self._take("threshold", f.threshold, 0.5)
        self._take("review_band", list(f.review_band) if f.review_band else None, [0.4, 0.6])
        self._take("urgent_labels", f.urgent_labels, [])
        self._take("postprocess", None, {})
        self._take("codes", None, {})
        self._check(task, labels, channels)
        return ResolvedSpec(self.spec, self.origin, self.file, self.notes)

    def intended_use(self, calib_files: list[Path]) -> InferredUse:
        """Step 3, once the calibration set is known: what the device will let the model read."""
        inferred = infer_intended_use(calib_files, self.given.get("intended_use"), self.flags.modalities, self.where)
        self.spec["intended_use"] = inferred.use.to_dict()
        origins = sorted(set(inferred.origin.values()))
        self.origin["intended_use"] = " + ".join(origins) if origins else "default"
        return inferred

    def _outputs(self, io: dict[str, Any], task: str) -> list[dict[str, Any]]:
        by_name = {o["name"]: o for o in io["outputs"]}
        graph = [{"name": o["name"]} for o in io["outputs"]]
        declared = self.given.get("outputs") or (graph if task == "detect" else graph[:1])
        self.origin["outputs"] = self.file.name if "outputs" in self.given and self.file else "graph"
        if not isinstance(declared, list):
            raise InputError(f"{self.where}: outputs must be a list of {{name, activation}}")
        out = []
        for o in declared:
            if not isinstance(o, dict) or o.get("name") not in by_name:
                raise InputError(f"{self.where}: output {o.get('name') if isinstance(o, dict) else o!r} is not an output "
                                 f"of the model ({', '.join(by_name)})")
            act = str(o.get("activation", "none"))
            out.append({"name": o["name"], "activation": act})
        if self.flags.activation is not None:
            out[0]["activation"] = self.flags.activation
            self.origin["outputs"] += " + flag --activation"
        for o in out:
            if o["activation"] not in ACTIVATIONS:
                raise InputError(f"{self.where}: output {o['name']!r} activation {o['activation']!r} is not one of "
                                 f"{', '.join(ACTIVATIONS)}")
        return out

    def _labels(self, task: str, channels: int | None) -> list[str]:
        from .datasets import class_folders

        folders = class_folders(self.val) if self.val is not None and task == "classify" else []
        if self.flags.labels is not None or "labels" in self.given or folders:
            labels = self._take("labels", self.flags.labels, folders, "validation class folders")
        else:
            k = channels or 1
            if task == "classify":
                labels = ["finding"] if k == 1 else ["negative", "finding"] if k == 2 else [f"class_{i}" for i in range(k)]
            elif task == "segment":
                labels = ["region"] if k == 1 else ["background", *(f"class_{i}" for i in range(1, k))]
            elif channels == 1:
                labels = ["finding"]
            else:
                what = f"{channels} score columns" if channels else "score columns medge cannot count from the graph"
                raise InputError(f"{self.model_path}: a detector with {what} needs its class names: pass --labels "
                                 "(one per score column, in order)")
            self._take("labels", None, labels, "placeholder names")
            self.notes.append(f"labels not given: findings will be called {', '.join(labels)}; pass --labels "
                              "(one per output channel, in the model's order) or use folder-per-class validation")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, (str, int)) and str(x).strip() for x in labels):
            raise InputError(f"{self.where}: labels must be a non-empty list of names")
        labels = [str(x).strip() for x in labels]
        if len(set(labels)) != len(labels):
            raise InputError(f"{self.where}: labels {labels} name a class twice")
        self.spec["labels"] = labels
        return labels

    def _check(self, task: str, labels: list[str], channels: int | None) -> None:
        s, w = self.spec, self.where
        try:
            thr = float(s["threshold"])
            lo, hi = (float(v) for v in s["review_band"])
        except (TypeError, ValueError):
            raise InputError(f"{w}: threshold must be a number and review_band two numbers [low, high]") from None
        if not 0.0 <= thr <= 1.0:
            raise InputError(f"{w}: threshold {thr} is outside 0..1")
        if not 0.0 <= lo <= hi <= 1.0:
            raise InputError(f"{w}: review_band [{lo}, {hi}] must be 0 <= low <= high <= 1")
        s["threshold"], s["review_band"] = thr, [lo, hi]
        if not isinstance(s["urgent_labels"], list):
            raise InputError(f"{w}: urgent_labels must be a list of labels")
        s["urgent_labels"] = [str(x) for x in s["urgent_labels"]]
        stray = [x for x in s["urgent_labels"] if x not in labels]
        if stray:
            raise InputError(f"{w}: urgent label(s) {', '.join(stray)} not among the labels {labels}")
        try:
            s["codes"] = label_codes(s["codes"], tuple(labels), w)
        except BundleError as e:
            raise InputError(str(e)) from None
        pp = s["postprocess"]
        if not isinstance(pp, dict):
            raise InputError(f"{w}: postprocess must be a mapping")
        for k in pp:
            spec_key = POSTPROCESS_KEYS.get(k)
            if spec_key is None:
                raise InputError(f"{w}: postprocess key {k!r} is unknown; allowed: {', '.join(POSTPROCESS_KEYS)}")
            if task not in spec_key.tasks:
                raise InputError(f"{w}: postprocess.{k} is for {'/'.join(spec_key.tasks)} models, not {task}")
        if channels is not None and channels > 1 and len(labels) != channels:
            raise InputError(f"{w}: the model's output has {channels} channels but {len(labels)} label(s) are given "
                             f"({', '.join(labels)}); give one label per channel, in order")
        if channels == 1 and task == "classify" and len(labels) > 2:
            raise InputError(f"{w}: the model has one output but {len(labels)} labels; a single logit is the "
                             "probability of the last label ([negative, positive] or [positive])")
        background = background_set(pp)
        reported = labels[-1:] if channels == 1 and task == "classify" else labels
        if all(lb.casefold() in background for lb in reported):
            what = (f"the model's single output is the probability of {labels[-1]!r}" if len(reported) == 1 else
                    f"every label ({', '.join(reported)})")
            raise InputError(f"{w}: {what} is a background label (postprocess.background_labels), so no finding could "
                             "ever be produced; order the labels [negative, positive] or set background_labels")
        quiet = [lb for lb in labels if lb.casefold() in background]
        if quiet:
            self.notes.append(f"label(s) {', '.join(quiet)} never produce a finding (background_labels)")


def _default_name(model_path: Path) -> str:
    p = Path(model_path)
    stem = p.parent.name if p.stem.lower() == "model" and p.parent.name else p.stem
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._") or "model"


def _guess_task(shape: list[Any]) -> tuple[str | None, str]:
    """Only shapes that cannot mean anything else: batch 1 and a known channel count."""
    dims = [d if isinstance(d, int) else None for d in shape]
    if len(dims) < 2 or dims[0] != 1 or dims[1] is None:
        return None, "graph"
    if len(dims) == 2 or (len(dims) == 4 and dims[2] == 1 and dims[3] == 1):
        return "classify", f"graph: output shape {shape}"
    if len(dims) == 4 and all(d is None or d > 1 for d in dims[2:]):
        return "segment", f"graph: output shape {shape}"
    return None, "graph"


def _channels(task: str, shapes: list[list[Any]]) -> int | None:
    """Output channels the labels name: classes (classify, segment) or score columns (detect), if known."""
    shape = shapes[0] if shapes else []
    if task in ("classify", "segment"):
        return shape[1] if len(shape) >= 2 and isinstance(shape[1], int) else None
    last = shapes[-1][-1] if shapes and shapes[-1] and isinstance(shapes[-1][-1], int) else None
    if last is None:
        return None
    return last if len(shapes) >= 2 else (last - 4 if last > 4 else None)  # one output: x0 y0 x1 y1 + scores


def _final_op(model: onnx.ModelProto, output: str) -> str:
    """The op that last changes ``output``'s values, looking back through reshapes and copies."""
    producer = {o: n for n in model.graph.node for o in n.output}
    name, seen = output, set()
    while name in producer and name not in seen:
        seen.add(name)
        n = producer[name]
        if n.op_type not in PASSTHROUGH_OPS or not n.input:
            return n.op_type
        name = n.input[0]
    return "?"
