"""The accuracy gate: FP32 vs INT8 on the labelled validation set, with the task's clinical metrics.

Outputs are decoded by the device's own task code (`edge.inference.tasks`: the same activation, per-label
thresholds, minimum areas and non-maximum suppression, through each kind's ``model_space``), so the gate
judges the decisions the device will make, not raw tensors. This module holds no decoding of its own.

Two checks sit beside the FP32-vs-INT8 budget. `sanity`: FP32 itself must beat the task kind's floor
(``TaskKind.min_fp32``) on labelled data, because a model at chance level agrees with its own INT8 copy
perfectly and would pass any drop budget. Subgroups: the same metrics (the kind's own ``score``, on
subsets) per column=value of the validation folder's subgroup columns, since a mean over all images can
hide a collapse on one manufacturer or site; a subgroup large enough to measure fails the gate as the
overall drop does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.inference import metrics as M
from edge.inference.tasks import Task, TaskKind, task_kind

from .datasets import ValidationSet
from .report import drop_text

DEFAULT_MIN_SUBGROUP_SAMPLES = 20  # below this a subgroup's metric is too noisy to refuse a model on


@dataclass
class Predictions:
    """Per validation sample, the task kind's gate prediction (the device's positive decisions)."""

    items: list[Any] = field(default_factory=list)


def make_session(path: Path | str, threads: int = 2, optimize: bool = True, exact_int8: bool = True):
    """A CPU session configured exactly as the device configures its own."""
    from edge.inference.backends.onnxruntime import cpu_session

    return cpu_session(path, threads, exact_int8=exact_int8, optimize=optimize)


def run_outputs(model_path: Path, vs: ValidationSet, exact_int8: bool = True,
                runtime: str = "onnxruntime") -> list[dict[str, np.ndarray]]:
    """Raw outputs, by name, for every validation sample, on one CPU runtime (`export.runtimes`)."""
    from .runtimes import runner

    run = runner(runtime, model_path, 2, exact_int8)
    return [run(s.tensor) for s in vs.samples]


def predictions(task: Task, vs: ValidationSet, outputs: list[dict[str, np.ndarray]]) -> Predictions:
    kind = task_kind(task.m.task).load()
    return Predictions([kind.gate_prediction(task, res, s.geometry, s.spacing_mm)
                        for res, s in zip(outputs, vs.samples, strict=True)])


def predict(model_path: Path, vs: ValidationSet, task: Task, exact_int8: bool = True,
            runtime: str = "onnxruntime") -> Predictions:
    return predictions(task, vs, run_outputs(model_path, vs, exact_int8, runtime))


def score(vs: ValidationSet, pred: Predictions, task: Task) -> dict[str, float | None]:
    return task_kind(task.m.task).load().score(vs.truth, pred.items, task)


def decisions(pred: Predictions, task: Task) -> np.ndarray:
    kind = task_kind(task.m.task).load()
    return np.array([kind.decision(task, p) for p in pred.items], bool)


def _primary_drop(kind: TaskKind, a: dict[str, float | None], b: dict[str, float | None]) -> tuple[str, float | None]:
    """The budgeted metric and INT8's drop in it (positive = worse; None when undefined)."""
    primary = kind.primary_metric
    if a.get(primary) is None:  # e.g. AUROC with one class only: fall back to accuracy
        primary = "accuracy" if "accuracy" in a else primary
    if a.get(primary) is None or b.get(primary) is None:
        return primary, None
    delta = b[primary] - a[primary]
    return primary, (delta if primary in M.LOWER_IS_BETTER else -delta)


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 5)


@dataclass(frozen=True)
class SubgroupResult:
    """One column=value subgroup of the validation set, FP32 vs INT8 on its samples only."""

    column: str
    value: str
    n: int
    primary: str
    fp32: dict[str, float | None]
    int8: dict[str, float | None]
    drop: float | None  # None: the primary metric is undefined in this subgroup
    budget: float
    min_samples: int

    @property
    def gated(self) -> bool:
        return self.n >= self.min_samples and self.drop is not None

    @property
    def passed(self) -> bool:
        return not self.gated or self.drop <= self.budget + 1e-12  # type: ignore[operator]

    @property
    def note(self) -> str:
        if self.n < self.min_samples:
            return f"too few samples, not gated (< {self.min_samples})"
        if self.drop is None:
            return f"{self.primary} undefined, not gated"
        return "pass" if self.passed else "fail"

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "value": self.value, "n": self.n, "primary_metric": self.primary,
                "fp32": {k: _r(v) for k, v in self.fp32.items()}, "int8": {k: _r(v) for k, v in self.int8.items()},
                "delta": None if self.drop is None else _r(self.int8[self.primary] - self.fp32[self.primary]),  # type: ignore[operator]
                "drop": _r(self.drop), "gated": self.gated, "passed": self.passed, "note": self.note}


@dataclass
class GateResult:
    fp32: dict[str, float | None]
    int8: dict[str, float | None]
    deltas: dict[str, float | None]
    agreement: float
    primary: str
    drop: float
    budget: float
    subgroups: list[SubgroupResult] = field(default_factory=list)
    min_subgroup_samples: int = DEFAULT_MIN_SUBGROUP_SAMPLES

    @property
    def passed(self) -> bool:
        return self.drop <= self.budget + 1e-12 and all(s.passed for s in self.subgroups)

    @property
    def deciding_drop(self) -> float:
        """The largest drop the gate judges (overall or a gated subgroup): what the float fallback must shrink."""
        return max([self.drop, *(s.drop for s in self.subgroups if s.gated and s.drop is not None)])

    def failures(self) -> str:
        """What is over the budget, for the refusal line."""
        parts = [f"{self.primary} {drop_text(self.drop)}"] if self.drop > self.budget + 1e-12 else []
        bad = [s for s in self.subgroups if not s.passed]
        parts += [f"subgroup {s.column}={s.value} (n {s.n}) {s.primary} {drop_text(s.drop or 0.0)}" for s in bad[:3]]
        if len(bad) > 3:
            parts.append(f"{len(bad) - 3} more subgroup(s)")
        return "; ".join(parts) or f"{self.primary} {drop_text(self.drop)}"

    def subgroup_summary(self) -> str:
        if not self.subgroups:
            return ""
        gated = [s for s in self.subgroups if s.gated]
        bad = [f"{s.column}={s.value} {drop_text(s.drop or 0.0)}" for s in self.subgroups if not s.passed]
        return (f"; subgroups: {len(self.subgroups)} ({len(gated)} with >= {self.min_subgroup_samples} samples gated)"
                + (f", over budget: {', '.join(bad)}" if bad else ", all gated within budget"))

    def to_dict(self) -> dict[str, Any]:
        return {"primary_metric": self.primary, "budget": _r(self.budget), "drop": _r(self.drop), "passed": self.passed,
                "fp32": {k: _r(v) for k, v in self.fp32.items()}, "int8": {k: _r(v) for k, v in self.int8.items()},
                "delta_int8_minus_fp32": {k: _r(v) for k, v in self.deltas.items()}, "agreement": _r(self.agreement),
                "min_subgroup_samples": self.min_subgroup_samples, "subgroups": [s.to_dict() for s in self.subgroups]}


def gate(vs: ValidationSet, task: Task, ref: Predictions, cand: Predictions, budget: float,
         min_subgroup_samples: int = DEFAULT_MIN_SUBGROUP_SAMPLES) -> GateResult:
    a, b = score(vs, ref, task), score(vs, cand, task)
    deltas = {k: (None if a[k] is None or b.get(k) is None else b[k] - a[k]) for k in a}
    kind = task_kind(task.m.task)
    primary, drop = _primary_drop(kind, a, b)
    mod = kind.load()
    subgroups = []
    for (col, val), idx in vs.subgroup_members().items():
        truth = [vs.truth[i] for i in idx]
        fa = mod.score(truth, [ref.items[i] for i in idx], task)
        fb = mod.score(truth, [cand.items[i] for i in idx], task)
        sp, sd = _primary_drop(kind, fa, fb)
        subgroups.append(SubgroupResult(col, val, len(idx), sp, fa, fb, sd, budget, min_subgroup_samples))
    return GateResult(a, b, deltas, M.agreement(decisions(ref, task), decisions(cand, task)), primary,
                      0.0 if drop is None else drop, budget, subgroups, min_subgroup_samples)


@dataclass(frozen=True)
class Sanity:
    """FP32's primary metric against the task kind's floor (``TaskKind.min_fp32``) on labelled validation data."""

    task: str
    metric: str
    floor: float
    fp32: float | None  # None: not measured (no labels) or undefined (e.g. AUROC with one class)
    labelled: bool

    @property
    def weak(self) -> bool:
        return self.labelled and self.fp32 is not None and self.fp32 < self.floor

    def text(self) -> str:
        if not self.labelled:
            return ("not applicable without --val: the agreement gate takes FP32's own decisions as the truth, so it "
                    "cannot tell a model at chance level")
        if self.fp32 is None:
            return f"not checked: FP32 {self.metric} is undefined on the validation set (one class only?)"
        rel = "below" if self.weak else "at or above"
        return f"FP32 {self.metric} {self.fp32:.4f} {rel} the floor {self.floor} for {self.task}"

    def warnings(self) -> list[str]:
        """What a reviewer must hear when export goes on anyway: a weak model let through, or no check possible."""
        if self.weak:
            return [f"weak model exported with --allow-weak-model: {self.text()}"]
        if self.labelled and self.fp32 is None:
            return [f"gate sanity {self.text()}"]
        return []

    def refusal(self, model: Path | str) -> str:
        return (f"{model}: FP32 model is at chance level on the labelled validation set: {self.metric} {self.fp32:.4f} "
                f"is below the floor {self.floor} for {self.task}; check the model and the labels, or pass "
                "--allow-weak-model to export it anyway")

    def to_dict(self) -> dict[str, Any]:
        return {"applies": self.labelled, "metric": self.metric, "floor": self.floor, "fp32": _r(self.fp32),
                "passed": None if not self.labelled or self.fp32 is None else not self.weak, "note": self.text()}


def sanity(vs: ValidationSet, task: Task, ref: Predictions, labelled: bool) -> Sanity:
    """Scores FP32 on its own: without labels (truth = FP32's decisions) there is nothing to check."""
    kind = task_kind(task.m.task)
    value = score(vs, ref, task).get(kind.primary_metric) if labelled else None
    return Sanity(kind.name, kind.primary_metric, kind.min_fp32, value, labelled)


def truth_from(ref: Predictions, task: Task) -> list[Any]:
    """FP32's own decisions as ground truth: the gate then measures what quantization changes (agreement)."""
    kind = task_kind(task.m.task).load()
    return [kind.truth_from_prediction(task, p) for p in ref.items]
