"""finetune: the unpruned baseline, then one crypto-aware candidate per grid point, for any task.

The baseline (the task's ``baseline``) is trained once per identity (model, data, seed, budget,
code: ``pipeline.tasks.common.shared_baseline``) and reused by every later launch and sweep job.
The grid is ``finetune.lambdas × temperatures × theta_quantiles``; each point is a nested run (tag
``kind=candidate``, ``method`` = ``finetune.candidate_method``, ``baseline_run``, ``upstream_prepare``
and the point's ``lambda``, ``temperature``, ``theta_quantile``) where the task trains a copy of the
baseline's starting point (``train_candidate``) and logs its checkpoint, ``thresholds.json`` and
metrics on the validation split, ``acc/val`` and ``tokens_kept/mean`` among them. A job training
one candidate also logs them as ``objective/val_metric`` and ``objective/tokens_kept`` on the stage
run: what a sweeper (``hydra/sweeper=pareto``) optimises.
"""
from __future__ import annotations

import copy
from typing import Any

from models import methods
from pipeline.config import FinetuneConfig, PipelineConfig, Stage
from pipeline.context import StageContext
from pipeline.tasks import GridPoint, task_of
from pipeline.tasks.common import DatasetManifest, curated_params


def params(cfg: PipelineConfig) -> dict[str, Any]:
    return {**curated_params(cfg), **task_of(cfg.data.task).params(Stage.finetune, cfg)}


def grid(f: FinetuneConfig) -> list[GridPoint]:
    """The candidates' grid points, in launch order."""
    return [GridPoint(lam, t, q) for lam in f.lambdas for t in f.temperatures for q in f.theta_quantiles]


def run(ctx: StageContext) -> None:
    import torch

    f = ctx.cfg.finetune
    torch.set_num_threads(f.torch_threads)
    task = task_of(ctx.cfg.data.task)
    manifest = DatasetManifest.from_run(ctx.tracker, ctx.upstream["prepare"])
    baseline = task.baseline(ctx, manifest)
    ctx.run.set_tags({"baseline_run": baseline.run_id})
    ctx.run.log_metrics(baseline.summary)
    if baseline.start is None:
        return
    method = methods.trainable(f.candidate_method).name
    points = grid(f)
    for point in points:
        tags = {"kind": "candidate", "method": method, **point.as_dict(), "seed": f.seed,
                "baseline_run": baseline.run_id, "upstream_prepare": ctx.upstream["prepare"]}
        with ctx.run.child(point.name, tags) as child:
            child.log_params({**point.as_dict(), "method": method})
            metrics = task.train_candidate(ctx, child, copy.deepcopy(baseline.start), manifest, point)
        ctx.run.log_metrics({f"acc/{point.name}": metrics["acc/val"]})
    if len(points) == 1:
        ctx.run.log_metrics({"objective/val_metric": metrics["acc/val"], "objective/tokens_kept": metrics["tokens_kept/mean"]})
