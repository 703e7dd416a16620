"""The accuracy gate: FP32 vs INT8 on the labelled validation set, with the task's clinical metrics.

Outputs are decoded by the device's own task code (`edge.inference.tasks`: the same activation, per-label
thresholds, minimum areas and non-maximum suppression, through each kind's ``model_space``), so the gate
judges the decisions the device will make, not raw tensors. This module holds no decoding of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.inference import metrics as M
from edge.inference.tasks import Task, task_kind

from .datasets import ValidationSet


@dataclass
class Predictions:
    """Per validation sample, the task kind's gate prediction (the device's positive decisions)."""

    items: list[Any] = field(default_factory=list)


def make_session(path: Path | str, threads: int = 2, optimize: bool = True, exact_int8: bool = True):
    """A CPU session configured exactly as the device configures its own."""
    from edge.inference.backends.onnxruntime import cpu_session

    return cpu_session(path, threads, exact_int8=exact_int8, optimize=optimize)


def run_outputs(model_path: Path, vs: ValidationSet, exact_int8: bool = True) -> list[dict[str, np.ndarray]]:
    """Raw outputs, by name, for every validation sample."""
    sess = make_session(model_path, exact_int8=exact_int8)
    name = sess.get_inputs()[0].name
    outs = [o.name for o in sess.get_outputs()]
    return [dict(zip(outs, sess.run(None, {name: s.tensor}), strict=True)) for s in vs.samples]


def predictions(task: Task, vs: ValidationSet, outputs: list[dict[str, np.ndarray]]) -> Predictions:
    kind = task_kind(task.m.task).load()
    return Predictions([kind.gate_prediction(task, res, s.geometry, s.spacing_mm)
                        for res, s in zip(outputs, vs.samples, strict=True)])


def predict(model_path: Path, vs: ValidationSet, task: Task, exact_int8: bool = True) -> Predictions:
    return predictions(task, vs, run_outputs(model_path, vs, exact_int8))


def score(vs: ValidationSet, pred: Predictions, task: Task) -> dict[str, float | None]:
    return task_kind(task.m.task).load().score(vs.truth, pred.items, task)


def decisions(pred: Predictions, task: Task) -> np.ndarray:
    kind = task_kind(task.m.task).load()
    return np.array([kind.decision(task, p) for p in pred.items], bool)


@dataclass
class GateResult:
    fp32: dict[str, float | None]
    int8: dict[str, float | None]
    deltas: dict[str, float | None]
    agreement: float
    primary: str
    drop: float
    budget: float

    @property
    def passed(self) -> bool:
        return self.drop <= self.budget + 1e-12

    def to_dict(self) -> dict[str, Any]:
        r = lambda v: None if v is None else round(float(v), 5)  # noqa: E731
        return {"primary_metric": self.primary, "budget": r(self.budget), "drop": r(self.drop), "passed": self.passed,
                "fp32": {k: r(v) for k, v in self.fp32.items()}, "int8": {k: r(v) for k, v in self.int8.items()},
                "delta_int8_minus_fp32": {k: r(v) for k, v in self.deltas.items()}, "agreement": r(self.agreement)}


def gate(vs: ValidationSet, task: Task, ref: Predictions, cand: Predictions, budget: float) -> GateResult:
    a, b = score(vs, ref, task), score(vs, cand, task)
    deltas = {k: (None if a[k] is None or b.get(k) is None else b[k] - a[k]) for k in a}
    kind = task_kind(task.m.task)
    primary = kind.primary_metric
    if a[primary] is None:  # e.g. AUROC with one class only: fall back to accuracy
        primary = "accuracy" if "accuracy" in a else primary
    drop = 0.0 if deltas.get(primary) is None else -deltas[primary]
    if primary in M.LOWER_IS_BETTER:
        drop = -drop
    return GateResult(a, b, deltas, M.agreement(decisions(ref, task), decisions(cand, task)), primary, drop, budget)


def truth_from(ref: Predictions, task: Task) -> list[Any]:
    """FP32's own decisions as ground truth: the gate then measures what quantization changes (agreement)."""
    kind = task_kind(task.m.task).load()
    return [kind.truth_from_prediction(task, p) for p in ref.items]
