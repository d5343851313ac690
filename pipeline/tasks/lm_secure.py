"""The causal-LM task's secure evaluation (``secure_evaluator``): in each method's run (tag
``kind=method``, made by ``pipeline.stages.secure_eval``), the next-token prediction of the first
``secure_eval.num_examples`` WikiText-2 *test* contexts (``block[:seq_len]``, target
``block[seq_len]``; ``seq_len`` defaults to ``data.max_length − 1``, the length the thresholds were
learned at) as a two-party computation, and checks it against an independent reference: the torch
model (``models.gpt2.GPT2LM.pruned``, emulated ops, hard masks) on the same context. Logged per
method: the cost meter's figures per context, ``agree/secure`` (same argmax as the reference, %),
``acc/secure_next_token`` (argmax = target, %), ``logits/max_abs_err`` (per context ``logits/abs_err``,
step = context index; beside the logits' magnitude ``logits/max_abs``), ``tokens_entering/layer_{l}``
(tokens entering layer l, secure) and ``tokens_entering/secure_vs_reference_max_abs_diff``, and the
leakage record. ``none``/``bolt_we`` run the search's baseline, ``prune`` and ``prune_reduce`` its pick
(``prune_reduce`` only a pick trained with it, whose β was learned). As for the
classification tasks (``pipeline.stages.secure_inputs``), the server's party loads the checkpoint and
the client's party its own test contexts (the prepared ``.npy`` blocks, ``ContextRequest``), each
context is its own resumable input run, and the torch reference runs after the two-party run.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from models import methods
from pipeline.context import StageContext
from pipeline.stages.secure_inputs import method_session, run_method
from pipeline.tasks.common import DatasetManifest, Selection
from pipeline.tracking import StageRun

log = logging.getLogger(__name__)


def _reference(model: Any, context: np.ndarray, method: str) -> tuple[np.ndarray, list[float]]:
    """The torch model's last-position logits ``[V]`` and tokens entering each layer ``[L]``."""
    import torch

    from models.token_pruning import PruneSettings

    with torch.no_grad():
        out = model.pruned(torch.as_tensor(context)[None], PruneSettings(method))
    kept = out.kept_tokens[0].tolist()
    return out.logits[0].double().numpy(), [float(len(context)), *kept[:-1]]


def _reference_model(ckpt: Any) -> Any:
    """The independent reference: the torch model of checkpoint ``ckpt`` with the emulated ops, in eval mode."""
    from models.config import OpsConfig
    from models.weights import load_hf_gpt2

    model, _ = load_hf_gpt2(ckpt, OpsConfig("emulated"))
    return model.eval()


def _evaluate(ctx: StageContext, method_run: StageRun, method: str, ckpt: Any, model: Any, blocks: str, test: Any,
              n: int, seq_len: int) -> tuple[dict[str, float], dict[str, Any]]:
    """One method's secure run, input by input (``secure_inputs.run_method``: the server's party
    loads the checkpoint, the client's party its test contexts, ``ContextRequest``), then the
    reference step in this process after the two-party run (it needs both parties' data): the torch
    model on the same contexts. Returns metrics and leakage."""
    from protocols.provision import ContextRequest

    sums, records, leakage = run_method(ctx, method_run, method, ckpt, n,
                                        lambda chunk, release: ContextRequest(blocks, chunk, seq_len, release),
                                        last_only=True, heads_per_program=ctx.cfg.secure_eval.heads_per_program)
    agree = hits = 0                                               # reference step from here on
    max_err = gap = scale = 0.0
    entering = [row for r in records for row in r.entering]
    for i, (got, target, secure_entering) in enumerate(zip((np.asarray(x, dtype=np.float64) for r in records for x in r.logits),
                                                           (t for r in records for t in r.labels), entering)):
        ref, ref_entering = _reference(model, test[i, :seq_len].numpy(), method)
        err = float(np.abs(got - ref).max())
        method_run.log_metrics({"logits/abs_err": err}, step=i)
        max_err, scale = max(max_err, err), max(scale, float(np.abs(ref).max()))
        agree += int(np.argmax(got) == np.argmax(ref))
        hits += int(np.argmax(got) == int(target))
        gap = max(gap, float(np.abs(np.asarray(secure_entering) - ref_entering).max()))
    mean_entering = np.mean(np.asarray(entering, dtype=float), axis=0)
    metrics = {**sums, "agree/secure": 100.0 * agree / n, "acc/secure_next_token": 100.0 * hits / n,
               "logits/max_abs_err": max_err, "logits/max_abs": scale,
               "examples/secure": float(n), "batch_size": float(ctx.cfg.secure_eval.batch_size),
               "seq_len": float(seq_len), "tokens_entering/secure_vs_reference_max_abs_diff": gap}
    metrics |= {f"tokens_entering/layer_{l}": float(k) for l, k in enumerate(mean_entering)}
    if gap > 0:
        log.warning(f"secure_eval {method}: secure schedule differs from the torch reference by up to {gap:g} tokens")
    declared = f"{methods.get(method).reveals} (the logits: of the last position, to the client)"
    return metrics, {"declared": declared, **leakage}


def generate(ctx: StageContext, method_run: StageRun, method: str, ckpt: Any, model: Any, blocks: str,
             first: np.ndarray, seq_len: int, tokens: int) -> dict[str, float]:
    """Greedy generation of ``tokens`` tokens after the first test context ``first[:seq_len]``,
    securely: every token is one full two-party forward over the last ``seq_len`` tokens (no KV
    cache; the client appends the argmax of its revealed logits, ``ContextRequest.appended``), so its
    cost is the latency per generated token. Each step's cost is logged with MLflow ``step`` = the
    token's index (``generate/time_s_lan``, ``generate/time_s_wan``, ``generate/comm_mb``); the
    reference step after the two-party run: the torch model's argmax on each step's context.
    Returns ``generate/tokens``, the means per token ``generate/time_s/{lan,wan}_per_token`` and
    ``generate/comm_mb_per_token``, ``generate/agree`` (% of steps with the torch model's token) and
    ``generate/kept_mean`` (tokens entering a layer, mean over steps and layers); artifact
    ``generation.json`` (tokens, text, per-step cost and tokens entering each layer).
    Revealed, per token: what the method reveals for one context."""
    from transformers import AutoTokenizer

    from protocols.provision import ContextRequest
    from protocols.secure_model import evaluate_request

    generated: list[int] = []
    steps: list[dict[str, Any]] = []
    with method_session(ctx, method, ckpt, "generate") as (session, spec, release):
        for step in range(tokens):
            request = ContextRequest(blocks, (0,), seq_len, str(release), tuple(generated))
            results, cost, _ = evaluate_request(session, spec, request, method, last_only=True,
                                                heads_per_program=ctx.cfg.secure_eval.heads_per_program)
            generated.append(int(np.argmax(results[0].logits)))
            figures = cost.to_metrics()
            row = {"generate/time_s_lan": figures["time_s/lan"], "generate/time_s_wan": figures["time_s/wan"],
                   "generate/comm_mb": figures["comm_mb/total"]}
            method_run.log_metrics(row, step=step)
            steps.append({**row, "token": generated[-1], "context": request.context(first).tolist(),
                          "entering": list(results[0].entering_per_layer)})
    agree = [int(np.argmax(_reference(model, np.asarray(s["context"]), method)[0]) == s["token"]) for s in steps]
    tokenizer = AutoTokenizer.from_pretrained(str(ckpt))
    method_run.log_dict({"context_tail": tokenizer.decode(first[max(0, seq_len - 32):seq_len].tolist()),
                         "generated": generated, "text": tokenizer.decode(generated), "agree": agree,
                         "steps": [{k: v for k, v in s.items() if k != "context"} for s in steps]}, "generation.json")
    per_token = {name: float(np.mean([s[f"generate/{key}"] for s in steps]))
                 for name, key in (("time_s/lan_per_token", "time_s_lan"), ("time_s/wan_per_token", "time_s_wan"),
                                   ("comm_mb_per_token", "comm_mb"))}
    return {"generate/tokens": float(tokens), **{f"generate/{k}": v for k, v in per_token.items()},
            "generate/agree": 100.0 * float(np.mean(agree)),
            "generate/kept_mean": float(np.mean([np.mean(s["entering"]) for s in steps]))}


class LMEvaluator:
    """``pipeline.tasks.SecureEvaluator`` for GPT-2: next-token prediction of the first
    ``secure_eval.num_examples`` test contexts of ``seq_len`` tokens (and, with
    ``secure_eval.generate_tokens``, greedy generation after the first)."""

    reference_step = "torch model, in the coordinator after the two-party run (it needs both parties' data)"

    def __init__(self, ctx: StageContext, manifest: DatasetManifest) -> None:
        self.ctx, self.blocks = ctx, manifest.splits["test"]
        self.test = manifest.load_blocks("test")
        self.seq_len = ctx.cfg.secure_eval.seq_len or manifest.max_length - 1
        self.n = min(ctx.cfg.secure_eval.num_examples, self.test.shape[0])
        self.params: dict[str, Any] = {"seq_len": self.seq_len}

    def evaluate(self, run: StageRun, method: str, checkpoint_run: str) -> tuple[dict[str, float], dict[str, Any]]:
        ckpt = self.ctx.tracker.artifact_location(checkpoint_run, "checkpoint")
        model = _reference_model(ckpt)          # used after the two-party runs only
        metrics, leakage = _evaluate(self.ctx, run, method, ckpt, model, self.blocks, self.test, self.n, self.seq_len)
        tokens = self.ctx.cfg.secure_eval.generate_tokens
        if tokens:
            metrics |= generate(self.ctx, run, method, ckpt, model, self.blocks, self.test[0].numpy(), self.seq_len, tokens)
        return metrics, leakage

    def summary(self, method: str, metrics: dict[str, float]) -> str:
        return (f"secure_eval {method}: {self.n} test context(s) of {self.seq_len} tokens under "
                f"{self.ctx.cfg.protocol.protocol.value}: argmax agrees with the torch reference on "
                f"{metrics['agree/secure']:.0f} %, max |Δlogit| {metrics['logits/max_abs_err']:.3g}, tokens entering "
                f"each layer {[round(v, 1) for k, v in metrics.items() if k.startswith('tokens_entering/layer_')]}")


def secure_evaluator(ctx: StageContext, selection: Selection, manifest: DatasetManifest) -> LMEvaluator:
    """The evaluator of every method on ``manifest``'s test contexts (``selection`` names the checkpoints)."""
    return LMEvaluator(ctx, manifest)
