"""The five stages. Each module has ``params(cfg) -> dict`` (curated MLflow params) and
``run(ctx) -> None``; computation lives in ``models/`` and ``protocols/``."""
from __future__ import annotations

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


def _load() -> dict[Stage, ModuleType]:
    from pipeline.stages import finetune, prepare, report, search, secure_eval

    return {
        Stage.prepare: prepare,
        Stage.finetune: finetune,
        Stage.search: search,
        Stage.secure_eval: secure_eval,
        Stage.report: report,
    }


class _Registry(dict):
    """Stage modules, imported on first use (keeps ``--help`` and config tests fast)."""

    def __missing__(self, stage: Stage) -> ModuleType:
        self.update(_load())
        return dict.__getitem__(self, stage)


STAGES: dict[Stage, ModuleType] = _Registry()
