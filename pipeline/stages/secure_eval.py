"""secure_eval: two-party secure inference of dev examples for each method, with costs.

For every method a nested run (tag ``kind=method``) logs the plaintext-emulated dev
metric of that method on the whole dev set (torch, hard masks, the secure path's
approximations), the secure run's agreement with the JAX plaintext reference (run one input
at a time) on the first ``secure_eval.num_examples`` dev inputs, the cost meter's figures
per input (with ``secure_eval.batch_size`` > 1, inputs run ``batch_size`` to a program and
each batch's cost is spread over its inputs), SPU's matmul kernel counts, the kept tokens
per layer and the leakage record (every value revealed, and who holds each input).
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
            "batch_size": s.batch_size, "private_owners": list(cfg.protocol.private_owners),
            **({"seq_len": s.seq_len} if cfg.data.task is Task.wikitext2 else {})}


def _session_spec(cfg: PipelineConfig) -> Any:
    from protocols.session import SessionSpec

    p = cfg.protocol
    return SessionSpec(protocol=p.protocol.value, field=p.field, fraction_bits=p.fraction_bits,
                       transport=p.transport.value, connect_timeout_s=p.connect_timeout_s,
                       recv_timeout_s=p.recv_timeout_s, private_owners=tuple(p.private_owners))


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
    from protocols.secure_model import plaintext_forward, run_batch
    from protocols.session import TwoPartySession

    model, spec, weights = _load(ctx, run_id)
    emulated = evaluate(model, dev, manifest.task, method.value, ops_cfg=OpsConfig("emulated"))
    pruning = PruningSpec(method=method.value, theta=tuple(thresholds["theta"]), beta=tuple(thresholds["beta"]))
    n = min(ctx.cfg.secure_eval.num_examples, len(dev))
    batch = ctx.cfg.secure_eval.batch_size
    sums: dict[str, float] = defaultdict(float)
    kept: list[list[int]] = []
    correct = agree = 0
    reveals: list[dict[str, Any]] = []
    ownership: dict[str, str] = {}
    with TwoPartySession(_session_spec(ctx.cfg)) as session:
        for start in track(range(0, n, batch), description=f"secure {method.value} (batches of {batch})"):
            chunk = list(range(start, min(start + batch, n)))
            examples = [tuple(np.asarray(dev[i][k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
                        for i in chunk]
            before = session.meter.report()
            results = run_batch(session, spec, weights, examples, pruning)
            cost = session.meter.report().since(before)
            for name, value in {**cost.to_metrics(), **_kernel_metrics(cost)}.items():
                sums[name] += value / n          # the batch's cost, spread over its inputs
            for i, ex, result in zip(chunk, examples, results):
                reference = plaintext_forward(spec, weights, *ex, pruning)    # one input at a time
                pred = int(np.argmax(result.logits))
                agree += pred == int(np.argmax(reference.logits))
                correct += pred == int(dev[i]["label"])
                kept.append(list(result.entering_per_layer))
            reveals.extend({"examples": chunk, **r.to_dict()} for r in session.reveals[len(reveals):])
            ownership.update(session.ownership)
    metrics = dict(sums)
    metrics.update({"acc/dev": emulated.metrics["metric"], "acc/secure": 100.0 * correct / n,
                    "agree/secure": 100.0 * agree / n, "examples/secure": n, "batch_size": float(batch)})
    mean_kept = np.mean(np.asarray(kept, dtype=float), axis=0)
    metrics.update({f"kept_tokens/layer_{i}": float(k) for i, k in enumerate(mean_kept)})
    entering_emulated = [float(emulated.n0), *emulated.kept_tokens[:-1]]  # tokens entering each layer
    metrics.update({f"kept_tokens_emulated/layer_{i}": k for i, k in enumerate(entering_emulated)})
    return metrics, {"reveals": reveals, "ownership": ownership}


def _kernel_metrics(cost: Any) -> dict[str, float]:
    """Executions of SPU's matmul kernels: ``mpc/mmul_sv`` (secret × private), ``mpc/mmul_aa`` (secret × secret)."""
    return {f"mpc/{name}": float(count) for name, count in cost.kernel_counts().items() if name.startswith("mmul")}


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
            metrics, leakage = _evaluate_method(ctx, method, run_id, thresholds, manifest, dev)
            child.log_metrics(metrics)
            child.log_dict({"declared": "per layer: kept token count per input (and high-group size for "
                                        "prune_reduce); final logits to the client", **leakage}, "leakage.json")
        ctx.run.log_metrics({f"time_s/lan/{method.value}": metrics["time_s/lan"],
                             f"comm_mb/{method.value}": metrics["comm_mb/total"]})
