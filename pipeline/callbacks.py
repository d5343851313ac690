"""Hydra callback: one MLflow parent run per multirun, its id written into the sweep dir.

Jobs (also those started by the joblib launcher in other processes) read the id from
``<sweep dir>/mlflow_parent_run_id`` and nest their runs under it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline.config import PipelineConfig
from pipeline.tracking import PARENT_RUN_FILE, Tracker, process_tags


def _pipeline_config(config: DictConfig) -> PipelineConfig:
    """The typed config without Hydra's own node (which is not part of the schema)."""
    plain = OmegaConf.masked_copy(config, [k for k in config.keys() if k != "hydra"])
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PipelineConfig), plain))


class MlflowMultirunCallback(Callback):
    """Creates the parent run on multirun start and closes it on multirun end."""

    def __init__(self) -> None:
        self._tracker: Optional[Tracker] = None
        self._run_id: Optional[str] = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        cfg = _pipeline_config(config)
        self._tracker = Tracker(cfg)
        overrides = " ".join(config.hydra.overrides.task)
        run = self._tracker.client.create_run(
            self._tracker.experiment_id, run_name="multirun",
            tags={"kind": "multirun", "overrides": overrides, **self._tracker.code.tags, **process_tags()},
        )
        self._run_id = run.info.run_id
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_RUN_FILE).write_text(self._run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._tracker is None or self._run_id is None:
            return
        children = self._tracker.client.search_runs(
            [self._tracker.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{self._run_id}'"
        )
        failed = any(r.info.status != "FINISHED" for r in children)
        self._tracker.client.set_terminated(self._run_id, "FAILED" if failed else "FINISHED")
