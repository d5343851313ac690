"""What the task-dependent stages do, per task: one module per kind of task.

``pipeline.tasks.glue`` (synthetic and GLUE classification with a BERT) and
``pipeline.tasks.lm`` (causal language modelling on WikiText-2 with a GPT-2) each define
``params(stage, cfg)`` (the stage's own MLflow params) and one function per stage in
``TASK_STAGES``, taking a ``pipeline.context.StageContext``. The stages never branch on the
task: ``pipeline.stages`` calls the module ``task_module(cfg.data.task)`` names. A GLUE-style task
is data: a built-in ``models.data.TASKS`` entry, or a ``spec`` its data config declares
(``declared_task``).
"""
from __future__ import annotations

import importlib
from types import ModuleType

from pipeline.config import DataConfig, Stage

TASK_STAGES = (Stage.prepare, Stage.finetune, Stage.search, Stage.secure_eval)
LM_TASKS = ("wikitext2",)


def task_module(task: str) -> ModuleType:
    """The implementation of ``TASK_STAGES`` for ``task`` (imported on first use): ``lm`` for
    ``LM_TASKS``, ``glue`` for a task of ``models.data.TASKS``; ``ValueError`` naming any other."""
    if task in LM_TASKS:
        return importlib.import_module("pipeline.tasks.lm")
    from models.data import get_task

    get_task(task)
    return importlib.import_module("pipeline.tasks.glue")


def declared_task(data: DataConfig) -> None:
    """Register the task spec ``data.spec`` declares (``models.data.register_task``; ``ValueError`` when
    it does not parse, is named other than ``data.task`` or redefines a task)."""
    if data.spec is None:
        return
    from models.data import TaskSpec, register_task

    spec = TaskSpec.from_dict(dict(data.spec))
    if spec.name != data.task:
        raise ValueError(f"data.spec.name={spec.name!r} but data.task={data.task!r}: a declared task is named by both")
    register_task(spec)
