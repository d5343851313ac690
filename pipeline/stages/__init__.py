"""The five stages. Each module has ``params(cfg) -> dict`` (curated MLflow params) and
``run(ctx) -> None``; computation lives in ``models/`` and ``protocols/``."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from pipeline.config import PipelineConfig, Stage
from pipeline.tracking import StageRun, Tracker


@dataclass
class StageContext:
    """What a stage gets: its typed config, its MLflow run, the tracker, upstream run ids."""

    cfg: PipelineConfig
    run: StageRun
    tracker: Tracker
    upstream: dict[str, str]


class _Registry(dict):
    """Stage modules, each imported on first use (keeps config tests and ``--help`` fast)."""

    def __missing__(self, stage: Stage) -> ModuleType:
        module = importlib.import_module(f"pipeline.stages.{stage.value}")
        self[stage] = module
        return module


STAGES: dict[Stage, ModuleType] = _Registry()
