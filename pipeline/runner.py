"""Runs a chain of stages, each in its own MLflow run, wiring upstream run ids."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from pipeline.config import CHAIN, STAGE_INPUTS, PipelineConfig, Stage
from pipeline.context import StageContext
from pipeline.identity import identity_key
from pipeline.stages import STAGES
from pipeline.tracking import PARENT_RUN_FILE, Tracker
from pipeline.validate import validate

log = logging.getLogger(__name__)

def _hydra_context() -> tuple[list[str], Optional[str]]:
    """Task overrides and, inside a multirun, the parent run id the callback wrote."""
    if not HydraConfig.initialized():
        return [], None
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    parent = None
    if hc.mode == RunMode.MULTIRUN:
        marker = Path(hc.sweep.dir) / PARENT_RUN_FILE
        parent = marker.read_text().strip() if marker.exists() else None
    return overrides, parent


def _resolve_upstream(cfg: PipelineConfig, tracker: Tracker, stage: Stage, produced: dict[Stage, str]) -> dict[str, str]:
    """Run ids of the stages ``stage`` reads, checked before any expensive work."""
    ids: dict[str, str] = {}
    for up in STAGE_INPUTS[stage].upstream:
        given = getattr(cfg.upstream, up.value)
        if up in produced:
            ids[up.value] = produced[up]
        elif given:
            tracker.check_run(given, up)
            ids[up.value] = given
        else:
            ids[up.value] = tracker.latest_finished(up, {"sections_hash": identity_key(cfg, up)})
    return ids


def run_stages(cfg: PipelineConfig, tracker: Tracker, stages: tuple[Stage, ...], overrides: list[str]) -> dict[Stage, str]:
    """Run ``stages`` in order; returns the run id each produced (or reused)."""
    produced: dict[Stage, str] = {}
    for stage in stages:
        upstream = _resolve_upstream(cfg, tracker, stage, produced)
        reused = tracker.reusable(stage, upstream)
        if reused:
            log.warning(f"{stage.value}: identical run {reused} already FINISHED, reusing it "
                          "(tracking.resume=false to re-run)")
            produced[stage] = reused
            continue
        log.info(f"stage {stage.value}")
        module = STAGES[stage]
        with tracker.stage_run(stage, upstream, module.params(cfg), overrides) as run:
            module.run(StageContext(cfg=cfg, run=run, tracker=tracker, upstream=upstream))
            produced[stage] = run.run_id
    return produced


def run_pipeline(cfg: PipelineConfig, echo: Callable[[str], None] = log.info) -> dict[Stage, str]:
    """Entry for ``python -m pipeline``: one stage, or the whole chain under a parent run."""
    validate(cfg)
    overrides, multirun_parent = _hydra_context()
    tracker = Tracker(cfg, parent_run_id=multirun_parent)
    for record in cfg.tracking.records:
        from pipeline.record import import_record

        echo(f"brought {len(import_record(tracker.client, Path(record)))} runs of the record {record} into the store")
    if cfg.stage is Stage.all:
        with tracker.parent("chain", {"kind": "chain", "overrides": " ".join(overrides)}) as parent_id:
            produced = run_stages(cfg, tracker, CHAIN, overrides)
        echo(f"chain finished: parent run {parent_id}")
    else:
        produced = run_stages(cfg, tracker, (cfg.stage,), overrides)
    echo(f"MLflow: experiment '{cfg.tracking.experiment}' at {tracker.uri}")
    if tracker.uri.startswith("sqlite:"):
        echo(f"see the runs with: mlflow ui --backend-store-uri {tracker.uri}")
    return produced
