"""The classification tasks' search stage: select on val, report on dev once.

The candidates are every FINISHED pruned candidate trained from the upstream finetune run's
baseline (tag ``baseline_run``; a Hydra multirun over λ/T/θ-init accumulates them, and so does a
sweeper such as ``hydra/sweeper=pareto``). Their validation metric (``acc/val``, on the split
carved from train) against mean kept tokens gives the Pareto front; the pick is the cheapest
within ``search.max_drop`` points of the baseline's validation metric (none within: the most
accurate, with a warning and ``selection/within_max_drop = 0``). The pick's β is then calibrated
on val too: scaled toward θ (``search.beta_scales``, largest first) until Π_reduce costs at most
``search.reduce_max_drop`` points against Π_prune of the same model (none: β = θ, nothing
reduced); ``thresholds.json`` carries the calibrated β to secure_eval. Only then is the GLUE dev
set (IMDB: the fixed test subset) evaluated, once per selected model and method, with the secure
run's approximations (``OpsConfig("emulated")``): ``none`` and ``bolt_we`` on the baseline,
``prune`` and ``prune_reduce`` on the pick, plus the pick under fixed-point rounding
(``prune_reduce_fixed_point``: whether SPU's 18-bit fixed point changes the result).

Logged: ``pareto.csv``, ``pareto.png``, ``selection.json``, ``thresholds.json``; metrics
``val/baseline``, ``val/selected``, ``val/prune``, ``val/prune_reduce/scale_<s>``,
``val/high_ratio/scale_<s>``, ``reduce/beta_scale``, ``reduce/within_max_drop``,
``dev/{method}/{metric}`` (the task's metrics: accuracy, F1, Pearson, ...),
``dev/{method}/entering/layer_{i}`` (mean tokens entering layer i), ``dev/{method}/high_ratio/mean``
(share of kept tokens on the exact forms; 0 unless ``prune_reduce``).
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from models import methods
from pipeline.context import StageContext
from pipeline.tasks.common import SELECTION, THRESHOLDS, DatasetManifest, Selection, checkpoint_plan, thresholds_of

log = logging.getLogger(__name__)


def _candidates(ctx: StageContext) -> tuple[str, pd.Series, pd.DataFrame, str]:
    """(baseline run id, its metrics row, the pruned candidates trained from it, prepare run id)."""
    finetune_tags = ctx.tracker.run_tags(ctx.upstream["finetune"])
    prepare_id = finetune_tags["upstream_prepare"]
    baseline_id = finetune_tags.get("baseline_run")
    if baseline_id is None:
        raise RuntimeError(f"finetune run {ctx.upstream['finetune']} names no baseline_run; re-run stage=finetune")
    runs = ctx.tracker.candidate_runs(prepare_id)
    pruned = runs[(runs["tags.method"] != methods.UNPRUNED) & (runs.get("tags.baseline_run") == baseline_id)]
    if pruned.empty:
        raise RuntimeError(f"no FINISHED pruned candidate trained from baseline {baseline_id}; run stage=finetune")
    return baseline_id, pd.Series(ctx.tracker.run_metrics(baseline_id)), pruned, prepare_id


def _calibrated_thresholds(ctx: StageContext, model: Any, val: Any, task: str, thresholds: Any) -> tuple[Any, dict[str, float]]:
    """The pick's thresholds with β scaled (``search.beta_scales``) so that Π_reduce costs at most
    ``search.reduce_max_drop`` validation points against Π_prune of the same model, and the
    metrics of the calibration: ``val/prune``, ``val/prune_reduce/scale_<s>`` per scale tried
    (with ``val/high_ratio/scale_<s>``, the share of kept tokens that keep the exact forms),
    ``reduce/beta_scale`` (the scale taken) and ``reduce/within_max_drop``. Cost: one plaintext
    validation pass per scale tried, plus one for Π_prune."""
    from models.config import OpsConfig
    from models.thresholds import calibrate_beta_scale, with_beta_scale
    from models.training import evaluate
    from models.weights import set_thresholds

    emulated = OpsConfig("emulated")
    pruning = next(m.name for m in methods.registered() if m.thresholds and not m.reduce)
    reducing = next(m.name for m in methods.registered() if m.reduce)
    reference = evaluate(model, val, task, pruning, ops_cfg=emulated).metrics["metric"]
    high: dict[float, float] = {}

    def metric_at(scale: float) -> float:
        set_thresholds(model, with_beta_scale(thresholds, scale))
        ev = evaluate(model, val, task, reducing, ops_cfg=emulated)
        high[scale] = sum(ev.high_ratio) / len(ev.high_ratio)
        return ev.metrics["metric"]

    scale, tried = calibrate_beta_scale(metric_at, reference, ctx.cfg.search.beta_scales, ctx.cfg.search.reduce_max_drop)
    calibrated = with_beta_scale(thresholds, scale)
    set_thresholds(model, calibrated)
    if scale == 0:
        log.warning(f"search: Π_reduce cost more than search.reduce_max_drop={ctx.cfg.search.reduce_max_drop} val points "
                    f"at every beta scale tried ({tried}; Π_prune {reference:.2f}): β = θ, no token gets the cheap forms")
    metrics = {f"val/{pruning}": reference, "reduce/beta_scale": scale, "reduce/within_max_drop": float(scale > 0)}
    metrics.update({f"val/{reducing}/scale_{s:g}": m for s, m in tried.items()})
    metrics.update({f"val/high_ratio/scale_{s:g}": h for s, h in high.items()})
    return calibrated, metrics


def _dev_metrics(models: dict[str, Any], dev: Any, task: str, baseline_id: str, selected_id: str) -> dict[str, float]:
    """The dev evaluation of the picked models (see the module docstring), as metrics."""
    from models.config import OpsConfig
    from models.training import evaluate

    emulated = OpsConfig("emulated")
    learned = next(m.name for m in methods.registered() if m.reduce)         # β calibrated: the pick serves all
    plan = [(m, run, m, emulated) for m, run in checkpoint_plan(methods.names(), baseline_id, selected_id, learned)]
    plan += [(f"{m.name}_fixed_point", selected_id, m.name, OpsConfig("emulated", fixed_point=True))
             for m in methods.registered() if m.reduce]
    out: dict[str, float] = {"dev/examples": float(len(dev))}
    for name, run, method, ops in plan:
        ev = evaluate(models[run], dev, task, method, ops_cfg=ops)
        out.update({f"dev/{name}/{k}": v for k, v in ev.metrics.items()})
        entering = [float(ev.n0), *ev.kept_tokens[:-1]]
        out.update({f"dev/{name}/entering/layer_{i}": k for i, k in enumerate(entering)})
        out[f"dev/{name}/entering/mean"] = sum(entering) / len(entering)
        out[f"dev/{name}/high_ratio/mean"] = sum(ev.high_ratio) / len(ev.high_ratio)
    return out


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


def search(ctx: StageContext) -> None:
    """Pareto front and pick on val, then the picked models on dev (see the module docstring)."""
    from models.thresholds import Candidate, pareto_front, select_thresholds

    baseline_id, baseline, pruned, prepare_id = _candidates(ctx)
    points = [Candidate(metric=float(r["metrics.acc/val"]), cost=float(r["metrics.tokens_kept/mean"]), name=r["run_id"])
              for _, r in pruned.iterrows()]
    front = {c.name for c in pareto_front(points)}
    chosen, within = select_thresholds(points, float(baseline["acc/val"]), ctx.cfg.search.max_drop)
    if not within:
        log.warning(f"search: no candidate within search.max_drop={ctx.cfg.search.max_drop} points of the baseline's "
                    f"validation metric {float(baseline['acc/val']):.2f}; picked the most accurate, {chosen.metric:.2f} "
                    "(metric selection/within_max_drop = 0)")
    table = pd.DataFrame({
        "run_id": pruned["run_id"], "lambda": pruned["tags.lambda"].astype(float),
        "temperature": pruned["tags.temperature"].astype(float),
        "theta_quantile": pd.to_numeric(pruned.get("tags.theta_quantile"), errors="coerce"),
        "val_metric": pruned["metrics.acc/val"], "kept_tokens_mean": pruned["metrics.tokens_kept/mean"],
    })
    table["on_front"] = table["run_id"].isin(front)
    table["selected"] = table["run_id"] == chosen.name
    with tempfile.TemporaryDirectory() as tmp:
        table.to_csv(Path(tmp) / "pareto.csv", index=False)
        ctx.run.log_artifact(Path(tmp) / "pareto.csv")
        ctx.run.log_artifact(_pareto_figure(table, float(baseline["acc/val"]), Path(tmp) / "pareto.png"))
    from models.weights import load_checkpoint

    manifest = DatasetManifest.from_run(ctx.tracker, prepare_id)
    models = {run: load_checkpoint(ctx.tracker.artifact_location(run, "checkpoint"))[0] for run in (baseline_id, chosen.name)}
    thresholds, reduce_metrics = _calibrated_thresholds(
        ctx, models[chosen.name], manifest.load("val"), manifest.task, thresholds_of(ctx.tracker, chosen.name))
    ctx.run.log_dict(thresholds.to_dict(), THRESHOLDS)
    selection = Selection(baseline_id, chosen.name, prepare_id)
    ctx.run.log_dict(selection.to_dict(), SELECTION)
    from models.data import get_task

    ctx.run.set_tags({**selection.to_dict(), "seed": ctx.cfg.finetune.seed, "criterion": thresholds.criterion,
                      "reduce_forms": thresholds.reduce_forms, "dev_metrics": ",".join(get_task(manifest.task).dev_metrics)})
    metrics: dict[str, Any] = {"val/baseline": float(baseline["acc/val"]), "val/selected": chosen.metric,
                               "tokens_kept/selected": chosen.cost, "candidates": len(points), "pareto_size": len(front),
                               "selection/within_max_drop": float(within)}
    dev = _dev_metrics(models, manifest.load("dev"), manifest.task, baseline_id, chosen.name)
    ctx.run.log_metrics({**metrics, **reduce_metrics, **dev})
