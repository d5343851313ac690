"""secure_eval: two-party secure inference of dev examples for each method, with costs.

For every method a nested run (tag ``kind=method``) logs the plaintext-emulated dev
metric of that method on the whole dev set (torch, hard masks, the secure path's
approximations), the secure run's agreement with the JAX plaintext reference on the
first ``secure_eval.num_examples`` dev inputs, the cost meter's figures per inference,
the kept tokens per layer and the leakage record (every value revealed).
"""
from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import numpy as np
from rich.progress import track

from pipeline.config import Method, PipelineConfig, Task
from pipeline.stages import StageContext
from pipeline.stages.common import DatasetManifest, curated_params

BASELINE_METHODS = (Method.none, Method.bolt_we)


def params(cfg: PipelineConfig) -> dict[str, Any]:
    s = cfg.secure_eval
    return {**curated_params(cfg), "methods": [m.value for m in s.methods], "num_examples": s.num_examples,
            **({"seq_len": s.seq_len} if cfg.data.task is Task.wikitext2 else {})}


def _session_spec(cfg: PipelineConfig) -> Any:
    from protocols.session import SessionSpec

    p = cfg.protocol
    return SessionSpec(protocol=p.protocol.value, field=p.field, fraction_bits=p.fraction_bits,
                       transport=p.transport.value, connect_timeout_s=p.connect_timeout_s,
                       recv_timeout_s=p.recv_timeout_s)


def _load(ctx: StageContext, run_id: str) -> tuple[Any, Any, dict[str, np.ndarray]]:
    """Torch model, its transformer spec and its numpy weights from a candidate run."""
    from models.weights import load_checkpoint, to_numpy_weights
    from protocols.model_spec import TransformerSpec

    ckpt = ctx.tracker.download(run_id, "checkpoint")
    model, _ = load_checkpoint(ckpt)
    spec = TransformerSpec.from_hf_config(json.loads((ckpt / "config.json").read_text()))
    return model, spec, to_numpy_weights(model)


def _evaluate_method(ctx: StageContext, method: Method, run_id: str, thresholds: dict, manifest: DatasetManifest,
                     dev: Any) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Dev metric of the torch emulation, and the secure runs' cost, agreement, schedule, reveals."""
    from models.config import OpsConfig
    from models.training import evaluate
    from protocols.model_spec import PruningSpec
    from protocols.secure_model import plaintext_forward, secure_forward
    from protocols.session import TwoPartySession

    model, spec, weights = _load(ctx, run_id)
    emulated = evaluate(model, dev, manifest.task, method.value, ops_cfg=OpsConfig("emulated"))
    pruning = PruningSpec(method=method.value, theta=tuple(thresholds["theta"]), beta=tuple(thresholds["beta"]))
    n = min(ctx.cfg.secure_eval.num_examples, len(dev))
    sums: dict[str, float] = defaultdict(float)
    kept: list[list[int]] = []
    correct = agree = 0
    reveals: list[dict[str, Any]] = []
    with TwoPartySession(_session_spec(ctx.cfg)) as session:
        for i in track(range(n), description=f"secure {method.value}"):
            ex = dev[i]
            inputs = [np.asarray(ex[k]) for k in ("input_ids", "attention_mask", "token_type_ids")]
            before = session.meter.report()
            result = secure_forward(session, spec, weights, *inputs, pruning)
            reference = plaintext_forward(spec, weights, *inputs, pruning)
            cost = session.meter.report().since(before)
            for name, value in cost.to_metrics().items():
                sums[name] += value / n
            pred = int(np.argmax(result.logits))
            agree += pred == int(np.argmax(reference.logits))
            correct += pred == int(ex["label"])
            kept.append(list(result.entering_per_layer))
            reveals.extend({"example": i, **r.to_dict()} for r in session.reveals[len(reveals):])
    metrics = dict(sums)
    metrics.update({"acc/dev": emulated.metrics["metric"], "acc/secure": 100.0 * correct / n,
                    "agree/secure": 100.0 * agree / n, "examples/secure": n})
    mean_kept = np.mean(np.asarray(kept, dtype=float), axis=0)
    metrics.update({f"kept_tokens/layer_{i}": float(k) for i, k in enumerate(mean_kept)})
    entering_emulated = [float(emulated.n0), *emulated.kept_tokens[:-1]]  # tokens entering each layer
    metrics.update({f"kept_tokens_emulated/layer_{i}": k for i, k in enumerate(entering_emulated)})
    return metrics, reveals


def run(ctx: StageContext) -> None:
    if ctx.cfg.data.task is Task.wikitext2:
        from pipeline.stages import lm_task

        return lm_task.secure_eval(ctx)
    search_id = ctx.upstream["search"]
    selection = json.loads(ctx.tracker.download(search_id, "selection.json").read_text())
    thresholds = json.loads(ctx.tracker.download(search_id, "thresholds.json").read_text())
    manifest = DatasetManifest.from_run(ctx.tracker, ctx.upstream["prepare"])
    dev = manifest.load("dev")
    for method in ctx.cfg.secure_eval.methods:
        run_id = selection["baseline_run_id"] if method in BASELINE_METHODS else selection["selected_run_id"]
        tags = {"kind": "method", "method": method.value, "checkpoint_run": run_id}
        with ctx.run.child(method.value, tags) as child:
            child.log_params({**curated_params(ctx.cfg), "method": method.value})
            metrics, reveals = _evaluate_method(ctx, method, run_id, thresholds, manifest, dev)
            child.log_metrics(metrics)
            child.log_dict({"declared": "per layer: kept token count (and high-group size for prune_reduce); "
                                        "final logits to the client", "reveals": reveals}, "leakage.json")
        ctx.run.log_metrics({f"time_s/lan/{method.value}": metrics["time_s/lan"],
                             f"comm_mb/{method.value}": metrics["comm_mb/total"]})
