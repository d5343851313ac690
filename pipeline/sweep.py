"""What one sweep trial returns to its sweeper: objective metrics of one of its stage runs.

A sweeper that optimises (``hydra/sweeper=pareto``, Optuna) reads the return value of each
job; ``python -m pipeline`` returns ``objective_values`` of the job's config: the metrics
named in ``sweep.objectives`` as logged on the MLflow run of ``sweep.stage`` that the job
produced or reused. Hydra's basic sweeper ignores return values (``sweep.objectives`` empty).
"""
from __future__ import annotations

from typing import Mapping, Optional, Union

from pipeline.config import PipelineConfig, Stage
from pipeline.tracking import Tracker

# one objective: a float; several: a list in the order of ``sweep.objectives``
Objective = Union[float, list[float]]


def objective_values(cfg: PipelineConfig, produced: Mapping[Stage, str],
                     tracker: Optional[Tracker] = None) -> Optional[Objective]:
    """The values of ``cfg.sweep.objectives`` on the run ``produced[cfg.sweep.stage]``.

    ``produced`` is what ``pipeline.runner.run_pipeline`` returns ({stage: run id}); the
    metrics are read through ``tracker`` (default: a new ``Tracker(cfg)``, the same store).
    Returns None when no objectives are configured, a float for one objective, else a list.
    Raises ``ValueError`` naming the stage when this job ran no run of it, and naming each
    missing metric, the stage and the run id, with the metrics the run has, when one is not
    logged.
    """
    names = list(cfg.sweep.objectives)
    if not names:
        return None
    stage = cfg.sweep.stage
    if stage not in produced:
        ran = ", ".join(s.value for s in produced) or "none"
        raise ValueError(f"sweep.stage={stage.value}: this job produced no {stage.value} run "
                         f"(its stage runs: {ran}); the objectives {names} are read from that run")
    run_id = produced[stage]
    metrics = (tracker or Tracker(cfg)).run_metrics(run_id)
    missing = [name for name in names if name not in metrics]
    if missing:
        raise ValueError(
            f"sweep.objectives: metric(s) {missing} not logged on the {stage.value} run {run_id} "
            f"(sweep.stage={stage.value}); that run has the metrics {sorted(metrics)}")
    values = [float(metrics[name]) for name in names]
    return values[0] if len(values) == 1 else values
