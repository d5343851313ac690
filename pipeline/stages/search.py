"""search: the accuracy / kept-token Pareto front over fine-tuned candidates, and the pick.

Candidates are every FINISHED ``kind=candidate`` run trained on the same prepared data
(so a Hydra multirun over λ/T accumulates), the pick is the cheapest candidate within
``search.max_drop`` points of the best unpruned baseline.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import PipelineConfig, Task
from pipeline.stages import StageContext
from pipeline.stages.common import curated_params


def params(cfg: PipelineConfig) -> dict[str, Any]:
    return {**curated_params(cfg), "max_drop": cfg.search.max_drop}


def _candidates(ctx: StageContext, prepare_id: str) -> pd.DataFrame:
    """Candidate runs of every FINISHED finetune run on ``prepare_id`` (a multirun accumulates)."""
    import mlflow

    experiment = [ctx.tracker.experiment_id]
    parents = mlflow.search_runs(experiment, filter_string=(
        f"tags.stage = 'finetune' and tags.upstream_prepare = '{prepare_id}' and attributes.status = 'FINISHED'"))
    runs = mlflow.search_runs(experiment, filter_string="tags.kind = 'candidate' and attributes.status = 'FINISHED'")
    if not runs.empty:
        runs = runs[runs["tags.mlflow.parentRunId"].isin(set(parents["run_id"]))]
    if runs.empty:
        raise RuntimeError(f"no FINISHED fine-tuning candidates on prepare run {prepare_id}; run stage=finetune first")
    return runs


def run(ctx: StageContext) -> None:
    from models.thresholds import Candidate, pareto_front, select_thresholds

    finetune_tags = ctx.tracker.run_tags(ctx.upstream["finetune"])
    runs = _candidates(ctx, finetune_tags["upstream_prepare"])
    if ctx.cfg.data.task is Task.wikitext2:
        from pipeline.stages import lm_task

        return lm_task.search(ctx, runs)
    baselines = runs[runs["tags.method"] == "none"]
    pruned = runs[runs["tags.method"] != "none"]
    if baselines.empty or pruned.empty:
        raise RuntimeError("search needs an unpruned baseline and at least one pruned candidate; "
                           f"found methods {sorted(runs['tags.method'].unique())}")
    baseline = baselines.loc[baselines["metrics.acc/dev"].idxmax()]
    points = [Candidate(metric=float(r["metrics.acc/dev"]), cost=float(r["metrics.kept_tokens/mean"]), name=r["run_id"])
              for _, r in pruned.iterrows()]
    front = {c.name for c in pareto_front(points)}
    chosen = select_thresholds(points, float(baseline["metrics.acc/dev"]), ctx.cfg.search.max_drop)
    table = pd.DataFrame({
        "run_id": pruned["run_id"], "lambda": pruned["tags.lambda"].astype(float),
        "temperature": pruned["tags.temperature"].astype(float), "acc": pruned["metrics.acc/dev"],
        "kept_tokens_mean": pruned["metrics.kept_tokens/mean"],
    })
    table["on_front"] = table["run_id"].isin(front)
    table["selected"] = table["run_id"] == chosen.name
    with tempfile.TemporaryDirectory() as tmp:
        table.to_csv(Path(tmp) / "pareto.csv", index=False)
        ctx.run.log_artifact(Path(tmp) / "pareto.csv")
    thresholds = json.loads(ctx.tracker.download(chosen.name, "thresholds.json").read_text())
    ctx.run.log_dict(thresholds, "thresholds.json")
    selection = {"baseline_run_id": baseline["run_id"], "selected_run_id": chosen.name,
                 "prepare_run_id": finetune_tags["upstream_prepare"]}
    ctx.run.log_dict(selection, "selection.json")
    ctx.run.set_tags(selection)
    ctx.run.log_metrics({"acc/baseline": float(baseline["metrics.acc/dev"]), "acc/selected": chosen.metric,
                         "kept_tokens/selected": chosen.cost, "candidates": len(points), "pareto_size": len(front)})
