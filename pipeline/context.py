"""What every stage function receives."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import PipelineConfig
from pipeline.tracking import StageRun, Tracker


@dataclass
class StageContext:
    """What a stage gets: its typed config, its MLflow run, the tracker, upstream run ids."""

    cfg: PipelineConfig
    run: StageRun
    tracker: Tracker
    upstream: dict[str, str]
