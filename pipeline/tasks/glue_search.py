"""The classification tasks after the search's pick: β calibrated on val, then dev scored once.

The pick's β is calibrated on val: scaled toward θ (``search.beta_scales``, largest first) until
Π_reduce costs at most ``search.reduce_max_drop`` points against Π_prune of the same model (none:
β = θ, nothing reduced); ``thresholds.json`` carries the calibrated β to secure_eval, so the pick
serves every selected-checkpoint method whatever it was trained as. Only then is the GLUE dev set
(IMDB: the fixed test subset) evaluated, once per selected model and method, with the secure run's
approximations (``common.emulated_ops``: the family of ``nonlinear``): ``none`` and ``bolt_we`` on the baseline, ``prune`` and
``prune_reduce`` on the pick, plus the pick under fixed-point rounding (``prune_reduce_fixed_point``:
whether SPU's 18-bit fixed point changes the result).

Logged on the search run: ``thresholds.json``; tags ``criterion``, ``reduce_forms``, ``dev_metrics``;
metrics ``val/prune``, ``val/prune_reduce/scale_<s>``, ``val/high_ratio/scale_<s>``,
``reduce/beta_scale``, ``reduce/within_max_drop``, ``dev/{method}/{metric}`` (the task's metrics:
accuracy, F1, Pearson, ...), ``dev/{method}/entering/layer_{i}`` (mean tokens entering layer i, padding included),
``dev/{method}/real_share/layer_{i}`` (the share of each input's real tokens entering layer i, %),
``dev/{method}/high_ratio/mean`` (share of kept tokens on the exact forms; 0 unless ``prune_reduce``).
"""
from __future__ import annotations

import logging
from typing import Any

from models import methods
from pipeline.context import StageContext
from pipeline.tasks import Selected
from pipeline.tasks.common import THRESHOLDS, DatasetManifest, Selection, checkpoint_plan, emulated_ops, thresholds_of

log = logging.getLogger(__name__)


def _calibrated_thresholds(ctx: StageContext, model: Any, val: Any, task: str, thresholds: Any) -> tuple[Any, dict[str, float]]:
    """The pick's thresholds with β scaled (``search.beta_scales``) so that Π_reduce costs at most
    ``search.reduce_max_drop`` validation points against Π_prune of the same model, and the
    metrics of the calibration: ``val/prune``, ``val/prune_reduce/scale_<s>`` per scale tried
    (with ``val/high_ratio/scale_<s>``, the share of kept tokens that keep the exact forms),
    ``reduce/beta_scale`` (the scale taken) and ``reduce/within_max_drop``. Cost: one plaintext
    validation pass per scale tried, plus one for Π_prune."""
    from models.thresholds import calibrate_beta_scale, with_beta_scale
    from models.training import evaluate
    from models.weights import set_thresholds

    emulated = emulated_ops(ctx.cfg)
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


def _dev_metrics(ctx: StageContext, models: dict[str, Any], dev: Any, task: str, baseline_id: str,
                 selected_id: str) -> dict[str, float]:
    """The dev evaluation of the picked models (see the module docstring), as metrics."""
    from models.training import evaluate

    emulated = emulated_ops(ctx.cfg)
    learned = next(m.name for m in methods.registered() if m.reduce)         # β calibrated: the pick serves all
    plan = [(m, run, m, emulated) for m, run in checkpoint_plan(methods.names(), baseline_id, selected_id, learned)]
    plan += [(f"{m.name}_fixed_point", selected_id, m.name, emulated_ops(ctx.cfg, fixed_point=True))
             for m in methods.registered() if m.reduce]
    out: dict[str, float] = {"dev/examples": float(len(dev))}
    for name, run, method, ops in plan:
        ev = evaluate(models[run], dev, task, method, ops_cfg=ops)
        out.update({f"dev/{name}/{k}": v for k, v in ev.metrics.items()})
        entering = [float(ev.n0), *ev.kept_tokens[:-1]]
        out.update({f"dev/{name}/entering/layer_{i}": k for i, k in enumerate(entering)})
        real = [100.0, *(100.0 * r for r in ev.keep_ratio[:-1])]     # % of each input's real tokens
        out.update({f"dev/{name}/real_share/layer_{i}": r for i, r in enumerate(real)})
        out[f"dev/{name}/entering/mean"] = sum(entering) / len(entering)
        out[f"dev/{name}/high_ratio/mean"] = sum(ev.high_ratio) / len(ev.high_ratio)
    return out


def after_selection(ctx: StageContext, selection: Selection, manifest: DatasetManifest) -> Selected:
    """β calibrated on val for the pick, then the picked models on dev (module docstring)."""
    from models.data import get_task
    from models.weights import load_checkpoint

    base, pick = selection.baseline_run_id, selection.selected_run_id
    if pick == base:
        raise RuntimeError(f"no FINISHED pruned candidate trained from baseline {base}; run stage=finetune "
                           "with finetune.lambdas")
    models = {run: load_checkpoint(ctx.tracker.artifact_location(run, "checkpoint"))[0] for run in (base, pick)}
    picked = thresholds_of(ctx.tracker, pick)
    if picked.nonlinear != ctx.cfg.nonlinear.family.value:
        raise RuntimeError(f"candidate {pick} trained with nonlinear={picked.nonlinear}, this search scores "
                           f"nonlinear={ctx.cfg.nonlinear.family.value}: launch the search with the candidate's family")
    thresholds, reduce_metrics = _calibrated_thresholds(ctx, models[pick], manifest.load("val"), manifest.task, picked)
    ctx.run.log_dict(thresholds.to_dict(), THRESHOLDS)
    dev = _dev_metrics(ctx, models, manifest.load("dev"), manifest.task, base, pick)
    tags = {"criterion": thresholds.criterion, "reduce_forms": thresholds.reduce_forms, "nonlinear": thresholds.nonlinear,
            "dev_metrics": ",".join(get_task(manifest.task).dev_metrics)}
    calibrated = next(m.name for m in methods.registered() if m.reduce)       # β calibrated: the pick serves all
    return Selected({**reduce_metrics, **dev}, tags, tuple(m.name for m in methods.served_by(calibrated)))
