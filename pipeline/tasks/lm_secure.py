"""The causal-LM task's secure_eval stage: for every method (``none``, ``bolt_we``, ``prune``) a
nested run (tag ``kind=method``) runs the next-token prediction of the first
``secure_eval.num_examples`` WikiText-2 *test* contexts (``block[:seq_len]``, target
``block[seq_len]``; ``seq_len`` defaults to ``data.max_length − 1``, the length the thresholds were
learned at) as a two-party computation, and checks it against an independent reference: the torch
model (``models.gpt2.GPT2LM.pruned``, emulated ops, hard masks) on the same context. Logged per
method: the cost meter's figures per context, ``agree/secure`` (same argmax as the reference, %),
``acc/secure_next_token`` (argmax = target, %), ``logits/max_abs_err``, ``kept_tokens/layer_{l}``
(tokens entering layer l, secure) and ``kept_tokens/secure_vs_reference_max_abs_diff``, and the
leakage record. ``none``/``bolt_we`` run the search's baseline, ``prune`` its pick.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pipeline.config import Method
from pipeline.context import StageContext
from pipeline.tasks.common import DatasetManifest, Selection, curated_params, session_spec

log = logging.getLogger(__name__)
DECLARED = {"none": "final (last-position) logits to the client",
            "bolt_we": "the kept count after layer 0 (n/2 + the forced last position, public); final logits to the client",
            "prune": "per layer: the kept token count; final (last-position) logits to the client"}


def _reference(model: Any, context: np.ndarray, method: str) -> tuple[np.ndarray, list[float]]:
    """The torch model's last-position logits ``[V]`` and tokens entering each layer ``[L]``."""
    import torch

    from models.token_pruning import PruneSettings

    with torch.no_grad():
        out = model.pruned(torch.as_tensor(context)[None], PruneSettings(method))
    kept = out.kept_tokens[0].tolist()
    return out.logits[0].double().numpy(), [float(len(context)), *kept[:-1]]


def _evaluate(ctx: StageContext, method: Method, run_id: str, test: Any, n: int, seq_len: int) -> tuple[dict[str, float], dict[str, Any]]:
    """One method's secure run and reference check (module docstring); returns metrics and leakage."""
    from models.config import OpsConfig
    from models.weights import load_hf_gpt2, to_numpy_weights
    from protocols.model_spec import PruningSpec, TransformerSpec
    from protocols.secure_model import evaluate_batches
    from protocols.session import TwoPartySession

    ckpt = ctx.tracker.artifact_location(run_id, "checkpoint")
    model, _ = load_hf_gpt2(ckpt, OpsConfig("emulated"))
    model.eval()
    spec = TransformerSpec.from_hf_config(json.loads((ckpt / "config.json").read_text()))
    th = model.pruning
    pruning = PruningSpec(method=method.value, theta=tuple(th.theta.tolist()), beta=tuple(th.beta.tolist()))
    examples = [(test[i, :seq_len].numpy(), np.ones(seq_len), None) for i in range(n)]
    batch = ctx.cfg.secure_eval.batch_size
    sums: dict[str, float] = {}
    agree = hits = 0
    max_err = gap = 0.0
    entering = []
    with TwoPartySession(session_spec(ctx.cfg)) as session:
        batches = evaluate_batches(session, spec, to_numpy_weights(model), examples, pruning, batch_size=batch,
                                   last_only=True)
        for chunk, results, cost in tqdm(batches, total=-(-n // batch), desc=f"secure gpt2 {method.value}"):
            for k, v in cost.to_metrics().items():
                sums[k] = sums.get(k, 0.0) + v / n      # the batch's cost spread over its contexts
            for i, result in zip(chunk, results):
                ref, ref_entering = _reference(model, examples[i][0], method.value)
                got = np.asarray(result.logits, dtype=np.float64).reshape(-1)
                max_err = max(max_err, float(np.abs(got - ref).max()))
                agree += int(np.argmax(got) == np.argmax(ref))
                hits += int(np.argmax(got) == int(test[i, seq_len]))
                entering.append(result.entering_per_layer)
                gap = max(gap, float(np.abs(np.asarray(result.entering_per_layer) - ref_entering).max()))
        leakage = {"declared": DECLARED[method.value], "reveals": [r.to_dict() for r in session.reveals],
                   "ownership": dict(session.ownership)}
    mean_entering = np.mean(np.asarray(entering, dtype=float), axis=0)
    metrics = {**sums, "agree/secure": 100.0 * agree / n, "acc/secure_next_token": 100.0 * hits / n,
               "logits/max_abs_err": max_err, "examples/secure": float(n), "batch_size": float(batch),
               "seq_len": float(seq_len), "kept_tokens/secure_vs_reference_max_abs_diff": gap}
    metrics |= {f"kept_tokens/layer_{l}": float(k) for l, k in enumerate(mean_entering)}
    if gap > 0:
        log.warning(f"secure_eval {method.value}: secure schedule differs from the torch reference by up to {gap:g} tokens")
    return metrics, leakage


def secure_eval(ctx: StageContext) -> None:
    """Two-party next-token prediction of test contexts for each method (module docstring)."""
    cfg = ctx.cfg
    selection = Selection.from_run(ctx.tracker, ctx.upstream["search"])
    manifest = DatasetManifest.from_run(ctx.tracker, ctx.upstream["prepare"])
    import torch

    test = torch.load(manifest.splits["test"])
    seq_len = cfg.secure_eval.seq_len or manifest.max_length - 1
    n = min(cfg.secure_eval.num_examples, test.shape[0])
    for method in cfg.secure_eval.methods:
        run_id = selection.selected_run_id if method is Method.prune else selection.baseline_run_id
        if method is Method.prune and run_id == selection.baseline_run_id:
            raise RuntimeError("secure_eval: method prune needs a pruned candidate; the search selected the "
                               "baseline (finetune.lambdas=[]): set finetune.lambdas or drop prune from the methods")
        with ctx.run.child(method.value, {"kind": "method", "method": method.value, "checkpoint_run": run_id}) as child:
            child.log_params({**curated_params(cfg), "method": method.value, "seq_len": seq_len})
            metrics, leakage = _evaluate(ctx, method, run_id, test, n, seq_len)
            child.log_metrics(metrics)
            child.log_dict(leakage, "leakage.json")
        ctx.run.log_metrics({f"time_s/lan/{method.value}": metrics.get("time_s/lan", 0.0),
                             f"comm_mb/{method.value}": metrics.get("comm_mb/total", 0.0)})
        log.info(f"secure_eval {method.value}: {n} test context(s) of {seq_len} tokens under "
                 f"{cfg.protocol.protocol.value}: argmax agrees with the torch reference on {metrics['agree/secure']:.0f} %, "
                 f"max |Δlogit| {metrics['logits/max_abs_err']:.3g}, tokens entering each layer "
                 f"{[round(v, 1) for k, v in metrics.items() if k.startswith('kept_tokens/layer_')]}")
