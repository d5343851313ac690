"""The classification tasks' secure evaluation (``secure_evaluator``): each method's run (tag
``kind=method``, made by ``pipeline.stages.secure_eval``) logs the plaintext-emulated dev metric of that method on the whole dev set
(torch, hard masks, the secure path's approximations; evaluated once, by the search stage, and
copied from its run), the secure run's agreement with the JAX plaintext reference (run one
input at a time) on the first ``secure_eval.num_examples`` dev inputs (with
``secure_eval.unpruned_layers``, ``none`` runs that many layers, its cost is composed and its
agreement is with the model cut there; no ``acc/secure``), how far the secure logits are from the
twin's (``logits/max_abs_err``, per input ``logits/abs_err`` at step = input index, beside the
logits' own magnitude ``logits/max_abs``), the cost meter's figures per input
(with ``secure_eval.batch_size`` > 1, inputs run ``batch_size`` to a program and each batch's
cost is spread over its inputs), SPU's matmul kernel counts, the kept tokens per layer and the
leakage record (every value revealed, and who holds each input). The unpruned methods run the
search's baseline, the pruned ones its pick.
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from models import methods
from pipeline.context import StageContext
from pipeline.stages.secure_inputs import InputRecord, run_method
from pipeline.tasks.common import DatasetManifest, Selection, emulated_ops, thresholds_of
from pipeline.tracking import StageRun

log = logging.getLogger(__name__)


def _load(ctx: StageContext, run_id: str) -> tuple[Any, Any, dict[str, np.ndarray]]:
    """Torch model, its transformer spec and its numpy weights from a candidate run."""
    from models.weights import load_checkpoint, to_numpy_weights
    from protocols.model_spec import TransformerSpec

    ckpt = ctx.tracker.artifact_location(run_id, "checkpoint")   # read in place from a local store
    model, _ = load_checkpoint(ckpt)
    spec = TransformerSpec.from_hf_config(json.loads((ckpt / "config.json").read_text()))
    return model, spec, to_numpy_weights(model)


def _secure_step(ctx: StageContext, method_run: StageRun, method: str, checkpoint: Path,
                 manifest: DatasetManifest, n: int, thresholds: Any) -> tuple[dict[str, float], list[InputRecord], dict[str, Any]]:
    """The two-party run of the first ``n`` dev inputs, input by input (``secure_inputs.run_method``):
    the server's party loads the checkpoint, the client's party the tokenised dev rows (with the
    transports ``processes`` and ``remote`` this process opens neither; with ``threads`` it loads
    both, as the one process holding both parties); ``thresholds``' public criterion, reduce forms
    and non-linearity family fix the programs (the family's SPU options come with the session);
    ``none`` runs ``secure_eval.unpruned_layers`` layers when set (its cost composed). Returns the
    cost per input, the batches' records (in dev order) and the leakage."""
    from protocols.provision import ClientRequest

    layers = ctx.cfg.secure_eval.unpruned_layers if methods.get(method).sizes == "unpruned" else None
    return run_method(ctx, method_run, method, checkpoint, n,
                      lambda chunk, release: ClientRequest(manifest.splits["dev"], chunk, release),
                      criterion=thresholds.criterion, reduce_forms=thresholds.reduce_forms,
                      nonlinear=thresholds.nonlinear, layers=layers,
                      heads_per_program=ctx.cfg.secure_eval.heads_per_program)


def _evaluate_method(ctx: StageContext, method_run: StageRun, method: str, run_id: str, thresholds: Any, manifest: DatasetManifest,
                     dev: Any, searched: dict[str, float]) -> tuple[dict[str, float], dict[str, Any]]:
    """The secure run's cost, accuracy and schedule (``_secure_step``), then the plaintext reference
    step, outside the two-party run and in this process (it needs both parties' data): the JAX
    plaintext twin's agreement one input at a time and the torch emulation's schedule on the same
    inputs; the emulation's whole-dev metric and schedule come from the search run (``dev``).
    Returns the metrics and the leakage record."""
    from models.training import evaluate
    from protocols.model_spec import PruningSpec
    from protocols.secure_model import plaintext_forward

    n = min(ctx.cfg.secure_eval.num_examples, len(dev))
    metrics, records, leakage = _secure_step(ctx, method_run, method, ctx.tracker.artifact_location(run_id, "checkpoint"),
                                             manifest, n, thresholds)
    logits = [np.asarray(row) for r in records for row in r.logits]
    labels = [label for r in records for label in r.labels]
    entering = [row for r in records for row in r.entering]
    model, spec, weights = _load(ctx, run_id)          # reference step from here on
    ran = int(metrics.get("layers/measured", spec.layers))
    cut = replace(spec, layers=ran)                    # the model the secure run ran (all of it unless composed)
    pruning = PruningSpec(method=method, theta=tuple(thresholds.theta), beta=tuple(thresholds.beta),
                          criterion=thresholds.criterion, reduce_forms=thresholds.reduce_forms,
                          nonlinear=thresholds.nonlinear)
    agree = correct = 0
    errors, scale = [], 0.0
    for i, (result, label) in enumerate(zip(logits, labels)):
        example = tuple(np.asarray(dev[i][k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
        reference = plaintext_forward(cut, weights, *example, pruning).logits
        errors.append(float(np.max(np.abs(np.asarray(result, np.float64) - reference))))
        scale = max(scale, float(np.max(np.abs(reference))))
        method_run.log_metrics({"logits/abs_err": errors[-1]}, step=i)
        pred = int(np.argmax(result))
        agree += pred == int(np.argmax(reference))
        correct += pred == int(label)
    metrics.update({"acc/dev": searched[f"dev/{method}/metric"], "agree/secure": 100.0 * agree / n,
                    "logits/max_abs_err": max(errors), "logits/max_abs": scale,
                    "examples/secure": n, "batch_size": float(ctx.cfg.secure_eval.batch_size)})
    if ran == spec.layers:                             # a truncated model's predictions are not the model's
        metrics["acc/secure"] = 100.0 * correct / n
    mean_kept = np.mean(np.asarray(entering, dtype=float), axis=0)
    metrics.update({f"tokens_entering/layer_{i}": float(k) for i, k in enumerate(mean_kept)})
    prefix = f"dev/{method}/entering/layer_"                  # tokens entering each layer, whole dev
    metrics.update({f"tokens_entering_emulated/layer_{k[len(prefix):]}": v for k, v in searched.items() if k.startswith(prefix)})
    # the torch emulation (hard masks) on the very inputs run securely: its schedule must be the secure one
    same = evaluate(model, dev.select(range(n)), manifest.task, method, ops_cfg=emulated_ops(ctx.cfg))
    same_entering = [float(same.n0), *same.kept_tokens[:-1]]
    gap = float(np.max(np.abs(mean_kept - np.asarray(same_entering))))
    metrics["tokens_entering/secure_vs_emulated_max_abs_diff"] = gap
    if gap > 0:
        log.warning(f"secure_eval {method}: secure schedule {mean_kept.tolist()} differs from the torch "
                    f"emulation's {same_entering} on the same {n} inputs (max |Δ| {gap:g} tokens)")
    return metrics, leakage


class GlueEvaluator:
    """``pipeline.tasks.SecureEvaluator`` for the classification tasks: the first
    ``secure_eval.num_examples`` dev inputs, the search's thresholds and dev metrics."""

    reference_step = ("plaintext twin and torch emulation, in the coordinator after the two-party run "
                      "(they need both parties' data)")

    def __init__(self, ctx: StageContext, manifest: DatasetManifest) -> None:
        search_id = ctx.upstream["search"]
        self.ctx, self.manifest = ctx, manifest
        self.thresholds = thresholds_of(ctx.tracker, search_id)
        if self.thresholds.nonlinear != ctx.cfg.nonlinear.family.value:
            raise RuntimeError(f"search run {search_id} selected a model trained with nonlinear={self.thresholds.nonlinear}; "
                               f"this launch runs nonlinear={ctx.cfg.nonlinear.family.value}: launch secure_eval with the "
                               f"search's family")
        self.dev = manifest.load("dev")
        self.searched = ctx.tracker.run_metrics(search_id)
        if "dev/none/metric" not in self.searched:
            raise RuntimeError(f"search run {search_id} has no dev metrics; re-run stage=search")
        self.params: dict[str, Any] = {"nonlinear": ctx.cfg.nonlinear.family.value}   # on every method run

    def evaluate(self, run: StageRun, method: str, checkpoint_run: str) -> tuple[dict[str, float], dict[str, Any]]:
        metrics, leakage = _evaluate_method(self.ctx, run, method, checkpoint_run, self.thresholds, self.manifest,
                                            self.dev, self.searched)
        return metrics, {"declared": f"{methods.get(method).reveals} (per input)", **leakage}

    def summary(self, method: str, metrics: dict[str, float]) -> str:
        return (f"secure_eval {method}: {metrics['examples/secure']:.0f} dev input(s), argmax agrees with the "
                f"plaintext twin on {metrics['agree/secure']:.0f} %, max |Δlogit| {metrics['logits/max_abs_err']:.3g}, "
                f"LAN {metrics.get('time_s/lan', float('nan')):.1f} s per input")


def secure_evaluator(ctx: StageContext, selection: Selection, manifest: DatasetManifest) -> GlueEvaluator:
    """The evaluator of every method on ``manifest``'s dev inputs (``selection`` names the checkpoints)."""
    return GlueEvaluator(ctx, manifest)
