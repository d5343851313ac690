"""The five stages, each with ``params(cfg) -> dict`` (curated MLflow params) and
``run(ctx) -> None``. ``prepare``, ``finetune``, ``search`` and ``secure_eval`` are what
the task's module in ``pipeline.tasks`` does for them; ``report`` is ``pipeline.stages.report``.
Computation lives in ``models/`` and ``protocols/``."""
from __future__ import annotations

import importlib
from typing import Any, Protocol

from pipeline.config import PipelineConfig, Stage
from pipeline.context import StageContext


class StageModule(Protocol):
    def params(self, cfg: PipelineConfig) -> dict[str, Any]: ...

    def run(self, ctx: StageContext) -> None: ...


class TaskStage:
    """A task-dependent stage: curated params plus the task's own, and the task's function."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage

    def params(self, cfg: PipelineConfig) -> dict[str, Any]:
        from pipeline.tasks import task_module
        from pipeline.tasks.common import curated_params

        return {**curated_params(cfg), **task_module(cfg.data.task).params(self.stage, cfg)}

    def run(self, ctx: StageContext) -> None:
        from pipeline.tasks import task_module

        getattr(task_module(ctx.cfg.data.task), self.stage.value)(ctx)


class _Registry(dict):
    """Stages, each resolved on first use (keeps config tests and ``--help`` fast)."""

    def __missing__(self, stage: Stage) -> StageModule:
        from pipeline.tasks import TASK_STAGES

        module: StageModule = TaskStage(stage) if stage in TASK_STAGES else importlib.import_module(
            f"pipeline.stages.{stage.value}")
        self[stage] = module
        return module


STAGES: dict[Stage, StageModule] = _Registry()
