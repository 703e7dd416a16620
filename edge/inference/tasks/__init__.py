"""Task kinds: how a model's outputs become decisions, on the device and in export's accuracy gate alike.

One registration table, `TASK_KINDS`, in the manner of pydicom's decoder plugins: each entry names the
module that implements the kind (imported on first use) and the gate's defaults. A kind's module holds
its `Task` subclass (``TASK``) and what the gate needs from it:

    TASK                                    Task subclass: model_space() and decode()
    check_truth(folder, files)              fail fast when the validation folder lacks the labels
    read_truth(folder, samples, labels)     ground truth per validation sample, in model space
    gate_prediction(task, outputs, geom)    the device's positive decisions in model space
    score(truth, predictions, task)         the kind's clinical metrics
    decision(prediction)                    does the sample produce a positive finding?
    truth_from_prediction(task, pred)       FP32's decision as truth (the gate without labels: agreement)

The gate and the device both decode through ``Task.model_space``, so the gate's number is the device's
number for post-processing as much as for preprocessing. Adding a kind: one entry below and one module.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from edge.inference.tasks.base import Detection, Output, Task, TaskConfig, apply_activation

if TYPE_CHECKING:
    from edge.inference.bundle import Manifest


@dataclass(frozen=True)
class TaskKind:
    name: str
    module: str  # implements the kind (see the module docstring)
    primary_metric: str  # what the accuracy gate budgets
    default_max_drop: float  # the gate's default budget for that metric
    min_fp32: float  # the FP32 model's primary metric on labelled validation data must reach this (chance below)
    truth: str  # what a validation folder holds for this kind (messages, docs)

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    @property
    def task_class(self) -> type[Task]:
        return self.load().TASK


TASK_KINDS: dict[str, TaskKind] = {k.name: k for k in (
    TaskKind("classify", "edge.inference.tasks.classify", "auroc", 0.01, 0.6, "labels.csv (file,label)"),
    TaskKind("segment", "edge.inference.tasks.segment", "dice", 0.02, 0.1, "masks/<file name>.png"),
    TaskKind("detect", "edge.inference.tasks.detect", "recall", 0.02, 0.1, "boxes.json ({file: [[x0, y0, x1, y1, label]]})"),
)}


def task_kind(name: str) -> TaskKind:
    try:
        return TASK_KINDS[name]
    except KeyError:
        raise ValueError(f"task {name!r} is not one of {', '.join(TASK_KINDS)}") from None


def build_task(config: Manifest | TaskConfig, overlays: bool = False) -> Task:
    """The task for a bundle's manifest, or for a `TaskConfig` (export builds one from the model spec)."""
    return task_kind(config.task).task_class(config, overlays)


__all__ = ["TASK_KINDS", "Detection", "Output", "Task", "TaskConfig", "TaskKind", "apply_activation", "build_task",
           "task_kind"]
