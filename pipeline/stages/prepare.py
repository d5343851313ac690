"""prepare: the task's splits, tokenised and cached, with a ``dataset.json`` manifest (the task's
``prepare``: GLUE-style tsv or the hub, or WikiText-2 blocks)."""
from __future__ import annotations

from typing import Any

from pipeline.config import PipelineConfig, Stage
from pipeline.context import StageContext
from pipeline.tasks import task_of
from pipeline.tasks.common import curated_params


def params(cfg: PipelineConfig) -> dict[str, Any]:
    return {**curated_params(cfg), **task_of(cfg.data.task).params(Stage.prepare, cfg)}


def run(ctx: StageContext) -> None:
    task_of(ctx.cfg.data.task).prepare(ctx)
