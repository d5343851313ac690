"""search: one selection rule for every task, on the validation split; then the task's own step.

The candidates are every FINISHED pruned candidate trained from the upstream finetune run's
baseline (tag ``baseline_run``; a Hydra multirun over λ/T/θ-init accumulates them, and so does a
sweeper such as ``hydra/sweeper=pareto``). Their validation metric (``acc/val``: GLUE's task metric
on the split carved from train, GPT-2's next-token accuracy on WikiText-2 dev) against mean kept
tokens (``tokens_kept/mean``) gives the Pareto front; the pick is the cheapest within
``search.max_drop`` points of the baseline's ``acc/val`` (none within: the most accurate, with a
warning and ``selection/within_max_drop = 0``; no candidate at all: the baseline). Then the task
goes on from the pick (``after_selection``: GLUE calibrates β on val and scores dev once, GPT-2
scores test once).

Logged: ``pareto.csv`` and ``pareto.png`` (every candidate, the front and the pick), tags
``baseline_run_id``, ``selected_run_id``, ``prepare_run_id`` (the selection, read by secure_eval),
``selected_method``, ``serves`` (the selected-checkpoint methods the pick can run) and the task's;
metrics ``val/baseline``, ``val/selected``, ``tokens_kept/selected``, ``candidates``,
``pareto_size``, ``selection/within_max_drop`` and the task's.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from models import methods
from pipeline.config import PipelineConfig, Stage
from pipeline.context import StageContext
from pipeline.tasks import task_of
from pipeline.tasks.common import DatasetManifest, Selection, curated_params

log = logging.getLogger(__name__)


def params(cfg: PipelineConfig) -> dict[str, Any]:
    return {**curated_params(cfg), **task_of(cfg.data.task).params(Stage.search, cfg)}


def candidates(ctx: StageContext) -> tuple[str, float, pd.DataFrame, str]:
    """(baseline run id, its ``acc/val``, the pruned candidates trained from it, prepare run id)."""
    finetune_tags = ctx.tracker.run_tags(ctx.upstream["finetune"])
    prepare_id, baseline_id = finetune_tags["upstream_prepare"], finetune_tags.get("baseline_run")
    if baseline_id is None:
        raise RuntimeError(f"finetune run {ctx.upstream['finetune']} names no baseline_run; re-run stage=finetune")
    runs = ctx.tracker.candidate_runs(prepare_id)
    trained_from = runs["tags.baseline_run"] if "tags.baseline_run" in runs else pd.Series(None, index=runs.index)
    pruned = runs[(runs["tags.method"] != methods.UNPRUNED) & (trained_from == baseline_id)]
    return baseline_id, float(ctx.tracker.run_metrics(baseline_id)["acc/val"]), pruned, prepare_id


def front_table(pruned: pd.DataFrame, baseline: float, max_drop: float) -> tuple[pd.DataFrame, bool]:
    """Every candidate with ``on_front`` and ``selected`` (``models.thresholds``' rule), and whether
    the pick is within ``max_drop`` points of ``baseline``."""
    from models.thresholds import Candidate, pareto_front, select_thresholds

    points = [Candidate(metric=float(r["metrics.acc/val"]), cost=float(r["metrics.tokens_kept/mean"]), name=r["run_id"])
              for _, r in pruned.iterrows()]
    chosen, within = select_thresholds(points, baseline, max_drop)
    table = pd.DataFrame({
        "run_id": pruned["run_id"], "method": pruned["tags.method"], "lambda": pruned["tags.lambda"].astype(float),
        "temperature": pruned["tags.temperature"].astype(float),
        "theta_quantile": pd.to_numeric(pruned.get("tags.theta_quantile"), errors="coerce"),
        "val_metric": pruned["metrics.acc/val"], "kept_tokens_mean": pruned["metrics.tokens_kept/mean"],
    })
    table["on_front"] = table["run_id"].isin({c.name for c in pareto_front(points)})
    table["selected"] = table["run_id"] == chosen.name
    return table, within


def _pareto_figure(table: pd.DataFrame, baseline: float, path: Path) -> Path:
    """Val metric vs mean kept tokens of every candidate, the front and the pick marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter(table["kept_tokens_mean"], table["val_metric"], c="0.6", label="candidates")
    front = table[table["on_front"]].sort_values("kept_tokens_mean")
    ax.plot(front["kept_tokens_mean"], front["val_metric"], "o-", c="C0", label="Pareto front")
    pick = table[table["selected"]]
    ax.scatter(pick["kept_tokens_mean"], pick["val_metric"], marker="*", s=200, c="C3", label="selected", zorder=3)
    ax.axhline(baseline, ls="--", c="k", lw=1, label="unpruned (val)")
    ax.set_xlabel("mean tokens kept per layer (val)")
    ax.set_ylabel("validation metric (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _select(ctx: StageContext, baseline_id: str, baseline: float, pruned: pd.DataFrame) -> tuple[str, dict[str, float]]:
    """The pick's run id and the selection's metrics; logs ``pareto.csv`` / ``pareto.png``."""
    if pruned.empty:
        log.warning(f"search: no pruned candidate trained from baseline {baseline_id}; selecting the baseline")
        return baseline_id, {"val/baseline": baseline, "val/selected": baseline, "candidates": 0.0,
                             "selection/within_max_drop": 1.0}
    max_drop = ctx.cfg.search.max_drop
    table, within = front_table(pruned, baseline, max_drop)
    pick = table[table["selected"]].iloc[0]
    if not within:
        log.warning(f"search: no candidate within search.max_drop={max_drop} points of the baseline's validation "
                    f"metric {baseline:.2f}; picked the most accurate, {pick['val_metric']:.2f} "
                    "(metric selection/within_max_drop = 0)")
    with tempfile.TemporaryDirectory() as tmp:
        table.to_csv(Path(tmp) / "pareto.csv", index=False)
        ctx.run.log_artifact(Path(tmp) / "pareto.csv")
        ctx.run.log_artifact(_pareto_figure(table, baseline, Path(tmp) / "pareto.png"))
    return str(pick["run_id"]), {"val/baseline": baseline, "val/selected": float(pick["val_metric"]),
                                 "tokens_kept/selected": float(pick["kept_tokens_mean"]), "candidates": float(len(table)),
                                 "pareto_size": float(table["on_front"].sum()), "selection/within_max_drop": float(within)}


def run(ctx: StageContext) -> None:
    baseline_id, baseline, pruned, prepare_id = candidates(ctx)
    selected_id, metrics = _select(ctx, baseline_id, baseline, pruned)
    selection = Selection(baseline_id, selected_id, prepare_id)
    manifest = DatasetManifest.from_run(ctx.tracker, prepare_id)
    outcome = task_of(ctx.cfg.data.task).after_selection(ctx, selection, manifest)
    selected_method = methods.UNPRUNED if selected_id == baseline_id else ctx.tracker.run_tags(selected_id)["method"]
    ctx.run.set_tags({**replace(selection, serves=outcome.serves).to_dict(), "selected_method": selected_method,
                      "seed": ctx.cfg.finetune.seed, **outcome.tags})
    ctx.run.log_metrics({**metrics, **outcome.metrics})
