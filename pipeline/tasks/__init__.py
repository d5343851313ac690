"""What the task-dependent stages do, per task: one module per kind of task.

``pipeline.tasks.glue`` (synthetic and GLUE classification with a BERT) and
``pipeline.tasks.lm`` (causal language modelling on WikiText-2 with a GPT-2) each define
``params(stage, cfg)`` (the stage's own MLflow params) and one function per stage in
``TASK_STAGES``, taking a ``pipeline.context.StageContext``. The stages never branch on the
task: ``pipeline.stages`` calls the module ``task_module(cfg.data.task)`` names.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from pipeline.config import Stage, Task

TASK_STAGES = (Stage.prepare, Stage.finetune, Stage.search, Stage.secure_eval)
LM_TASKS = (Task.wikitext2,)


def task_module(task: Task) -> ModuleType:
    """The implementation of ``TASK_STAGES`` for ``task`` (imported on first use)."""
    return importlib.import_module("pipeline.tasks.lm" if task in LM_TASKS else "pipeline.tasks.glue")
