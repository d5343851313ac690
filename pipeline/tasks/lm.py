"""The causal-LM task (``data.task=wikitext2`` with a GPT-2): what the stages need from it
(``pipeline.tasks.Task``). Computation lives in ``models.lm`` / ``models.lm_pruning``; this maps the
config onto it.

- prepare: WikiText-2 (``data.wikitext_dir`` or the hub) → GPT-2 token blocks of
  ``data.max_length`` tokens (``[N, max_length]`` int64 ``.npy``, which the client's party reads
  itself in secure_eval), manifest as for GLUE.
  A block is a context (its first ``max_length − 1`` tokens) and the next token.
- baseline / train_candidate: the baseline LM (the checkpoint ``model.checkpoint`` or a random GPT-2
  of the model config's shape, trained ``finetune.max_steps`` steps or ``finetune.epochs``), then
  causal candidates (``finetune.candidate_method``: ``prune``, or ``prune_reduce``, which learns β too
  and whose model serves ``prune`` as well) learned on the next-token loss; both scored on the
  WikiText-2 dev contexts (``acc/val``: next-token accuracy).
- after_selection: the picks scored on test once.
- secure_evaluator (``pipeline.tasks.lm_secure``): a method on test contexts as a two-party
  computation, checked against the torch model.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from models import methods
from pipeline.config import PipelineConfig, Stage
from pipeline.context import StageContext
from pipeline.identity import identity_key
from pipeline.tasks import Baseline, GridPoint, Selected
from pipeline.tasks.common import (
    MANIFEST,
    DatasetManifest,
    Selection,
    checkpoint_dir,
    checkpoint_plan,
    save_model,
    shared_baseline,
    training_config,
)
from pipeline.tasks.lm_secure import secure_evaluator
from pipeline.tracking import StageRun

__all__ = ["params", "prepare", "baseline", "train_candidate", "after_selection", "secure_evaluator",
           "next_token_flat"]

log = logging.getLogger(__name__)


def params(stage: Stage, cfg: PipelineConfig) -> dict[str, Any]:
    """The stage's own params (beside ``curated_params``)."""
    d, f, s = cfg.data, cfg.finetune, cfg.secure_eval
    return {
        Stage.prepare: lambda: {"wikitext_dir": d.wikitext_dir, "tokenizer_dir": d.tokenizer_dir,
                                "train_limit": d.train_limit, "dev_limit": d.dev_limit, "test_limit": d.test_limit},
        Stage.finetune: lambda: {"epochs": f.epochs, "lr": f.lr, "ops": f.ops.value, "seed": f.seed,
                                 "batch_size": f.batch_size, "max_steps": f.max_steps, "max_minutes": f.max_minutes,
                                 "warmup_ratio": f.warmup_ratio, "eval_blocks": f.eval_blocks, "lambdas": f.lambdas,
                                 "temperatures": f.temperatures, "theta_quantiles": f.theta_quantiles,
                                 "prune_epochs": f.prune_epochs, "hard_epochs": f.hard_epochs, "prune_lr": f.prune_lr,
                                 "threshold_lr": f.threshold_lr, "candidate_method": f.candidate_method,
                                 "beta_factor": f.beta_factor, "beta_lambda": f.beta_lambda},
        Stage.search: lambda: {"max_drop": cfg.search.max_drop, "eval_blocks": f.eval_blocks},
        Stage.secure_eval: lambda: {"methods": list(s.methods), "num_examples": s.num_examples,
                                    "batch_size": s.batch_size, "seq_len": s.seq_len, "generate_tokens": s.generate_tokens,
                                    "heads_per_program": s.heads_per_program,
                                    "private_owners": list(cfg.protocol.private_owners), "split": "test"},
    }[stage]()


def _tokenizer_dir(cfg: PipelineConfig) -> Path:
    """The checkpoint's directory when it holds a GPT-2 tokenizer, else ``data.tokenizer_dir``."""
    ckpt = checkpoint_dir(cfg)
    if ckpt is not None and ((ckpt / "vocab.json").is_file() or (ckpt / "tokenizer.json").is_file()):
        return ckpt
    if not cfg.data.tokenizer_dir:
        raise FileNotFoundError(f"model.checkpoint={cfg.model.checkpoint!r} has no tokenizer files; "
                                "set data.tokenizer_dir=<GPT-2 tokenizer dir> (`make lm-data`)")
    return Path(cfg.data.tokenizer_dir).expanduser().resolve()


def prepare(ctx: StageContext) -> None:
    """WikiText-2 → token blocks cached under ``outputs/cache/prepare/<hash>/{split}.npy``."""
    import numpy as np
    from transformers import GPT2TokenizerFast

    from models.lm import load_lm_blocks

    cfg, d = ctx.cfg, ctx.cfg.data
    cache = Path(cfg.paths.outputs) / "cache" / "prepare" / identity_key(cfg, Stage.prepare, local=True)
    cache.mkdir(parents=True, exist_ok=True)
    tok_dir = _tokenizer_dir(cfg)
    tokenizer = GPT2TokenizerFast.from_pretrained(str(tok_dir))   # the task is GPT-2 only (validate)
    source = Path(d.wikitext_dir).expanduser().resolve() if d.wikitext_dir else None
    blocks = load_lm_blocks(source, tokenizer, d.max_length,
                            {"train": d.train_limit, "dev": d.dev_limit, "test": d.test_limit})
    splits: dict[str, str] = {}
    for split, b in blocks.items():
        if b.shape[0] == 0:
            raise ValueError(f"WikiText-2 {split}: fewer than data.max_length={d.max_length} tokens")
        np.save(cache / f"{split}.npy", b.numpy())
        splits[split] = str(cache / f"{split}.npy")
    manifest = DatasetManifest(task=d.task, splits=splits, tokenizer_dir=str(tok_dir), num_labels=0,
                               max_length=d.max_length, vocab_size=len(tokenizer),
                               checkpoint=str(checkpoint_dir(cfg)) if cfg.model.checkpoint else None)
    (cache / MANIFEST).write_text(json.dumps(manifest.__dict__, indent=2))
    ctx.run.log_artifact(cache / MANIFEST)
    ctx.run.log_metrics({f"blocks/{s}": float(b.shape[0]) for s, b in blocks.items()}
                        | {f"tokens/{s}": float(b.numel()) for s, b in blocks.items()})


def _initial_model(cfg: PipelineConfig, manifest: DatasetManifest) -> tuple[Any, str]:
    from models.config import GPT2Config
    from models.lm import new_gpt2
    from models.weights import load_hf_gpt2

    if manifest.checkpoint:
        model, report = load_hf_gpt2(manifest.checkpoint)
        return model, str(report)
    m = cfg.model
    shape = GPT2Config(vocab_size=m.vocab_size or manifest.vocab_size, hidden=m.hidden, layers=m.layers,
                       heads=m.heads, intermediate=m.intermediate, max_positions=m.max_positions)
    return new_gpt2(shape, cfg.finetune.seed), "random initialisation"


def _prune_config(cfg: PipelineConfig, train_blocks: int, method: str, **overrides: Any) -> Any:
    """``models.lm_pruning.LMPruneConfig`` of the pruning phase: ``finetune.prune_epochs`` soft and
    ``finetune.hard_epochs`` hard epochs of ``train_blocks`` blocks (at least one step each)."""
    from models.lm_pruning import LMPruneConfig

    f = cfg.finetune
    steps = {name: max(1, math.ceil(epochs * train_blocks / f.batch_size))
             for name, epochs in (("soft_steps", f.prune_epochs), ("hard_steps", f.hard_epochs))}
    return LMPruneConfig(lr=f.prune_lr, threshold_lr=f.threshold_lr, batch_size=f.batch_size, seed=f.seed,
                         method=method, beta_factor=f.beta_factor, beta_lambda=f.beta_lambda, **steps, **overrides)


def next_token_flat(model: Any, blocks: Any, method: str, prefix: str, batch_size: int) -> dict[str, float]:
    """``{prefix}{method}/next_token_ppl``, ``…/next_token_acc``, ``…/kept/layer_{l}`` (tokens left
    after layer l's pruning, mean over blocks) and ``…/kept_mean`` of ``method`` on ``blocks``."""
    from models.lm_pruning import next_token_metrics

    m = next_token_metrics(model, blocks, method, batch_size)
    key = f"{prefix}{method}/"
    return ({key + "next_token_ppl": m.perplexity, key + "next_token_acc": m.accuracy,
             key + "kept_mean": sum(m.kept) / len(m.kept), key + "blocks": float(m.blocks)}
            | {f"{key}kept/layer_{l}": k for l, k in enumerate(m.kept)})


def _offset(log_fn: Any, step0: int) -> Any:
    return lambda metrics, step: log_fn(metrics, step=step0 + step)


def _perplexities(model: Any, dev: Any, test: Any, batch_size: int, n: int | None) -> dict[str, float]:
    """Whole-block perplexity (every position predicted) with exact and emulated ops."""
    from models.lm import perplexity

    return {f"{split}/perplexity{suffix}": perplexity(model, blocks[:n], batch_size, ops_mode=mode)
            for split, blocks in (("dev", dev), ("test", test))
            for suffix, mode in (("", "exact"), ("_emulated", "emulated"))}


def _train_baseline(ctx: StageContext, manifest: DatasetManifest, key: str) -> tuple[str, dict[str, float], Any]:
    """Train the baseline LM in a nested run ``baseline`` (tag ``baseline_key``); returns its run id,
    its metrics and, with candidates, the model where they start (see ``baseline``)."""
    import copy

    from models.config import OpsConfig
    from models.lm import LMTrainConfig, train_lm
    from models.lm_pruning import train_lm_thresholds

    cfg, f = ctx.cfg, ctx.cfg.finetune
    train, dev, test = (manifest.load_blocks(s) for s in ("train", "dev", "test"))
    n_eval, bs = f.eval_blocks, f.batch_size
    model, port_report = _initial_model(cfg, manifest)
    steps = f.max_steps or max(1, math.ceil(f.epochs * train.shape[0] / bs))
    tags = {"kind": "candidate", "method": methods.UNPRUNED, "lambda": 0.0, "temperature": 0.0, "baseline_key": key,
            "seed": f.seed, "upstream_prepare": ctx.upstream["prepare"], "weights": port_report[:250]}
    with ctx.run.child("baseline", tags) as child:
        child.log_params({"method": methods.UNPRUNED, "steps": steps, "ops": f.ops.value, "warmup_ratio": f.warmup_ratio})
        result = train_lm(model, train, training_config(f, LMTrainConfig, steps=steps), log=child.log_metrics)
        metrics = {"train/steps": float(result.steps), "train/seconds": result.seconds,
                   "train/tokens": float(result.steps * bs * train.shape[1])}
        start = None
        if f.lambdas:
            save_model(child, model, "checkpoint_start", manifest.tokenizer_dir)
            start = copy.deepcopy(model)
            model.ops_cfg = OpsConfig("emulated")
            seconds = train_lm_thresholds(model, train, _prune_config(cfg, train.shape[0], methods.UNPRUNED),
                                          log=_offset(child.log_metrics, result.steps))
            metrics |= {"train/continue_seconds": seconds}
        for spec in methods.registered():
            if spec.checkpoint == "baseline":
                metrics |= next_token_flat(model, dev[:n_eval], spec.name, "dev/", bs)
        metrics |= _selection_metrics(metrics, methods.UNPRUNED)
        t0 = time.time()
        metrics |= _perplexities(model, dev, test, bs, n_eval) | {"eval/seconds": time.time() - t0}
        child.log_metrics(metrics, step=result.steps)
        save_model(child, model, "checkpoint", manifest.tokenizer_dir)
    return child.run_id, metrics, start


def _selection_metrics(metrics: dict[str, float], method: str) -> dict[str, float]:
    """What the search's one rule reads: ``acc/val`` (next-token accuracy of ``method`` on the dev
    contexts) and ``tokens_kept/mean``."""
    return {"acc/val": metrics[f"dev/{method}/next_token_acc"], "tokens_kept/mean": metrics[f"dev/{method}/kept_mean"]}


def baseline(ctx: StageContext, manifest: DatasetManifest) -> Baseline:
    """The baseline LM (nested run ``baseline``, ``method=none``): trained ``finetune.max_steps``
    (or ``epochs``), whole-block perplexities; with ``finetune.lambdas``, then trained on unpruned
    for the candidates' steps on their loss (same budget, artifact ``checkpoint_start`` = where every
    candidate starts); scored on the dev contexts for ``none`` and ``bolt_we``. Trained once per
    identity (``shared_baseline``) and reused by every later launch and sweep job."""
    from models.weights import load_hf_gpt2

    f = ctx.cfg.finetune
    key, baseline_id = shared_baseline(ctx, candidates=str(bool(f.lambdas)))
    if baseline_id is not None:
        log.warning(f"finetune: reusing the baseline LM {baseline_id} (same model, data, seed and budget)")
        metrics = ctx.tracker.run_metrics(baseline_id)
        start = load_hf_gpt2(ctx.tracker.artifact_location(baseline_id, "checkpoint_start"))[0] if f.lambdas else None
    else:
        baseline_id, metrics, start = _train_baseline(ctx, manifest, key)
    log.info(f"finetune: baseline {metrics['train/steps']:.0f} steps in {metrics['train/seconds']:.0f}s; perplexity dev "
             f"{metrics['dev/perplexity']:.2f} / test {metrics['test/perplexity']:.2f} (exact ops), "
             f"{metrics['dev/perplexity_emulated']:.2f} / {metrics['test/perplexity_emulated']:.2f} (emulated)")
    return Baseline(baseline_id, start, {k: metrics[k] for k in ("dev/perplexity", "test/perplexity")})


def train_candidate(ctx: StageContext, run: StageRun, model: Any, manifest: DatasetManifest,
                    point: GridPoint) -> dict[str, float]:
    """One crypto-aware causal candidate of ``finetune.candidate_method`` at ``point`` (``models.lm_pruning``,
    emulated ops) from ``model`` (a copy of the baseline's start): logs ``dev/prune/*`` (and, for
    ``prune_reduce``, ``dev/prune_reduce/*``) next-token metrics on the dev contexts, ``acc/val`` and
    ``tokens_kept/mean`` (its own method's), its checkpoint and ``thresholds.json``."""
    from models.config import OpsConfig
    from models.lm_pruning import train_lm_thresholds
    from models.weights import get_thresholds

    cfg, f = ctx.cfg, ctx.cfg.finetune
    method = methods.trainable(f.candidate_method).name
    train, dev = manifest.load_blocks("train"), manifest.load_blocks("dev")[:f.eval_blocks]
    model.ops_cfg = OpsConfig("emulated")
    prune_cfg = _prune_config(cfg, train.shape[0], method, lambda_=point.lambda_, temperature=point.temperature,
                              theta_quantile=point.theta_quantile)
    run.log_params({"soft_steps": prune_cfg.soft_steps, "hard_steps": prune_cfg.hard_steps})
    found = {"train/seconds": train_lm_thresholds(model, train, prune_cfg, log=run.log_metrics)}
    for scored in methods.served_by(method):
        found |= next_token_flat(model, dev, scored.name, "dev/", f.batch_size)
    found |= _selection_metrics(found, method)
    run.log_metrics(found)
    save_model(run, model, "checkpoint", manifest.tokenizer_dir, get_thresholds(model, point.temperature, point.lambda_))
    log.info(f"finetune: {method} {point.name}: dev next-token acc {found['acc/val']:.2f} %, "
             f"mean kept {found['tokens_kept/mean']:.1f} of {dev.shape[1] - 1}")
    return found


def after_selection(ctx: StageContext, selection: Selection, manifest: DatasetManifest) -> Selected:
    """Score the test contexts (``finetune.eval_blocks``) once: ``none`` and ``bolt_we`` on the
    baseline, the methods the pick serves on the pick (``test/{method}/next_token_ppl|acc``,
    ``…/kept/layer_{l}``)."""
    from models.config import OpsConfig
    from models.weights import load_hf_gpt2

    base, pick = selection.baseline_run_id, selection.selected_run_id
    trained = ctx.tracker.run_tags(pick)["method"] if pick != base else methods.UNPRUNED
    plan = checkpoint_plan(methods.names(), base, pick, trained)
    test = manifest.load_blocks("test")[: ctx.cfg.finetune.eval_blocks]
    metrics = {"test/blocks": float(test.shape[0])}
    for method, run_id in plan:
        model, _ = load_hf_gpt2(ctx.tracker.artifact_location(run_id, "checkpoint"), OpsConfig("emulated"))
        metrics |= next_token_flat(model, test, method, "test/", ctx.cfg.finetune.batch_size)
    log.info(f"search: selected {pick}; test next-token acc " + ", ".join(
        f"{m} {metrics[f'test/{m}/next_token_acc']:.2f} % (kept {metrics[f'test/{m}/kept_mean']:.1f})" for m, _ in plan))
    serves = tuple(m for m, _ in plan if methods.get(m).checkpoint == "selected")
    return Selected(metrics, {}, serves)
