"""The stages, one module each, every one with ``params(cfg) -> dict`` (the run's curated MLflow
params) and ``run(ctx) -> None``: ``prepare``, ``finetune``, ``search``, ``secure_eval`` (what a task
supplies for them: ``pipeline.tasks.Task``), ``report`` and ``benchmark``. Computation lives in
``models/`` and ``protocols/``."""
from __future__ import annotations

import importlib
from typing import Any, Protocol

from pipeline.config import PipelineConfig, Stage
from pipeline.context import StageContext


class StageModule(Protocol):
    def params(self, cfg: PipelineConfig) -> dict[str, Any]: ...

    def run(self, ctx: StageContext) -> None: ...


class _Registry(dict):
    """``pipeline.stages.<stage>`` by stage, each imported on first use (keeps config tests and
    ``--help`` fast)."""

    def __missing__(self, stage: Stage) -> StageModule:
        module: StageModule = importlib.import_module(f"pipeline.stages.{stage.value}")  # type: ignore[assignment]
        self[stage] = module
        return module


STAGES: dict[Stage, StageModule] = _Registry()
