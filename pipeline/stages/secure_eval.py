"""secure_eval: every configured method as a two-party computation, for any task.

The search run's selection (its tags: baseline, pick, prepare run, what the pick serves) says which
checkpoint each method runs (``Selection.plan``) and which data it was scored on. Each method is a
nested run (tag ``kind=method``, ``method``, ``checkpoint_run``; ``data_held_by``: who loads what
under ``protocol.transport``; ``reference_step``: what the result is checked against) in which the
task's evaluator runs the inputs securely, one input run each (``pipeline.stages.secure_inputs``:
resumable), then the reference step outside the two-party run, and logs cost, agreement, error and
the tokens entering each layer, and ``leakage.json`` (what was declared revealed and what was). The
stage run repeats each method's ``time_s/lan/{method}`` and ``comm_mb/{method}``.
"""
from __future__ import annotations

import logging
from typing import Any

from models import methods
from pipeline.config import PipelineConfig, Stage
from pipeline.context import StageContext
from pipeline.tasks import task_of
from pipeline.tasks.common import DATA_HELD_BY, Selection, curated_params

log = logging.getLogger(__name__)


def params(cfg: PipelineConfig) -> dict[str, Any]:
    return {**curated_params(cfg), **task_of(cfg.data.task).params(Stage.secure_eval, cfg)}


def run(ctx: StageContext) -> None:
    cfg = ctx.cfg
    selection = Selection.from_run(ctx.tracker, ctx.upstream["search"])
    manifest = selection.manifest(ctx.tracker, ctx.upstream.get("prepare"))
    plan = selection.plan(cfg.secure_eval.methods)
    evaluator = task_of(cfg.data.task).secure_evaluator(ctx, selection, manifest)
    for method, checkpoint_run in plan:
        with ctx.run.child(method, {"kind": "method", "method": method, "checkpoint_run": checkpoint_run}) as child:
            child.log_params({**curated_params(cfg), "method": method, **evaluator.params})
            child.set_tags({"data_held_by": DATA_HELD_BY[cfg.protocol.transport.value],
                            "reference_step": evaluator.reference_step})
            metrics, leakage = evaluator.evaluate(child, method, checkpoint_run)
            child.log_metrics(metrics)
            child.log_dict({"declared": methods.get(method).reveals, **leakage}, "leakage.json")
        ctx.run.log_metrics({f"time_s/lan/{method}": metrics.get("time_s/lan", 0.0),
                             f"comm_mb/{method}": metrics.get("comm_mb/total", 0.0)})
        log.info(evaluator.summary(method, metrics))
