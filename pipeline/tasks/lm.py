"""The causal-LM task (``data.task=wikitext2`` with a GPT-2): what prepare, finetune, search
and secure_eval do for it. Computation lives in ``models.lm`` / ``models.lm_pruning``; this maps
the config onto it.

- prepare: WikiText-2 (``data.wikitext_dir`` or the hub) → GPT-2 token blocks of
  ``data.max_length`` tokens (``[N, max_length]`` int64 ``.npy``, which the client's party reads
  itself in secure_eval), manifest as for GLUE.
  A block is a context (its first ``max_length − 1`` tokens) and the next token.
- finetune: the baseline LM (the checkpoint ``model.checkpoint`` or a random GPT-2 of the model
  config's shape, trained ``finetune.max_steps`` steps or ``finetune.epochs``), then, with
  ``finetune.lambdas``, causal candidates (``finetune.candidate_method``: ``prune``, or
  ``prune_reduce``, which learns β too and whose model serves ``prune`` as well) learned on the
  next-token loss (``finetune``).
- search: select on WikiText-2 dev, score the picks on test once (``search``).
- secure_eval (``pipeline.tasks.lm_secure``): ``none``, ``bolt_we``, ``prune`` and ``prune_reduce``
  as two-party computations on test contexts, checked against the torch model.
"""
from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from models import methods
from pipeline.config import PipelineConfig, Stage
from pipeline.context import StageContext
from pipeline.identity import identity_key
from pipeline.tasks.common import (
    MANIFEST,
    SELECTION,
    DatasetManifest,
    Selection,
    checkpoint_dir,
    checkpoint_plan,
    save_model,
    shared_baseline,
    training_config,
)
from pipeline.tasks.lm_secure import secure_eval

__all__ = ["params", "prepare", "finetune", "search", "secure_eval", "next_token_flat"]

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


def _train_baseline(ctx: StageContext, manifest: DatasetManifest, key: str, splits: tuple[Any, Any, Any]
                    ) -> tuple[str, dict[str, float], Any]:
    """Train the baseline LM in a nested run ``baseline`` (tag ``baseline_key``); returns its run id,
    its metrics and, with candidates, the model where they start (see ``finetune``)."""
    import copy

    from models.config import OpsConfig
    from models.lm import LMTrainConfig, train_lm
    from models.lm_pruning import train_lm_thresholds

    cfg, f = ctx.cfg, ctx.cfg.finetune
    train, dev, test = splits
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
        t0 = time.time()
        metrics |= _perplexities(model, dev, test, bs, n_eval) | {"eval/seconds": time.time() - t0}
        child.log_metrics(metrics, step=result.steps)
        save_model(child, model, "checkpoint", manifest.tokenizer_dir)
    return child.run_id, metrics, start


def finetune(ctx: StageContext) -> None:
    """The baseline LM (nested run ``baseline``, ``method=none``): trained ``finetune.max_steps``
    (or ``epochs``), whole-block perplexities; with ``finetune.lambdas``, then trained on unpruned
    for the candidates' steps on their loss (same budget, artifact ``checkpoint_start`` = where every
    candidate starts) and scored on the dev contexts for ``none`` and ``bolt_we``. Then one
    crypto-aware candidate per (λ, T, θ-init) (``models.lm_pruning``, emulated ops), nested runs with
    ``dev/prune/*`` next-token metrics, checkpoint and ``thresholds.json``. The baseline is trained
    once per identity (``shared_baseline``) and reused by every later launch and sweep job."""
    import torch

    from models.weights import load_hf_gpt2

    f = ctx.cfg.finetune
    torch.set_num_threads(f.torch_threads)
    manifest = DatasetManifest.from_run(ctx.tracker, ctx.upstream["prepare"])
    train, dev, test = (manifest.load_blocks(s) for s in ("train", "dev", "test"))
    key, baseline_id = shared_baseline(ctx, candidates=str(bool(f.lambdas)))
    if baseline_id is not None:
        log.warning(f"finetune: reusing the baseline LM {baseline_id} (same model, data, seed and budget)")
        metrics = ctx.tracker.run_metrics(baseline_id)
        start = load_hf_gpt2(ctx.tracker.artifact_location(baseline_id, "checkpoint_start"))[0] if f.lambdas else None
    else:
        baseline_id, metrics, start = _train_baseline(ctx, manifest, key, (train, dev, test))
    ctx.run.set_tags({"baseline_run": baseline_id})
    ctx.run.log_metrics({k: metrics[k] for k in ("dev/perplexity", "test/perplexity")})
    log.info(f"finetune: baseline {metrics['train/steps']:.0f} steps in {metrics['train/seconds']:.0f}s; perplexity dev "
             f"{metrics['dev/perplexity']:.2f} / test {metrics['test/perplexity']:.2f} (exact ops), "
             f"{metrics['dev/perplexity_emulated']:.2f} / {metrics['test/perplexity_emulated']:.2f} (emulated)")
    if start is not None:
        _candidates(ctx, start, train, dev[:f.eval_blocks], manifest, baseline_id, metrics["dev/none/next_token_acc"])


def _candidates(ctx: StageContext, start: Any, train: Any, dev: Any, manifest: DatasetManifest, baseline_id: str,
                baseline_acc: float) -> None:
    """One crypto-aware causal candidate of ``finetune.candidate_method`` per (λ, T, θ-init), each from
    ``start`` (the baseline before its continuation), a nested run with ``dev/prune/*`` (and, for
    ``prune_reduce``, ``dev/prune_reduce/*``) next-token metrics on the dev contexts ``dev``, its
    checkpoint and ``thresholds.json``."""
    import copy

    from models.config import OpsConfig
    from models.lm_pruning import train_lm_thresholds
    from models.weights import get_thresholds

    cfg, f = ctx.cfg, ctx.cfg.finetune
    method = methods.trainable(f.candidate_method).name
    grid = [(lam, t, q) for lam in f.lambdas for t in f.temperatures for q in f.theta_quantiles]
    for lam, temp, quantile in grid:
        candidate = copy.deepcopy(start)
        candidate.ops_cfg = OpsConfig("emulated")
        prune_cfg = _prune_config(cfg, train.shape[0], method, lambda_=lam, temperature=temp, theta_quantile=quantile)
        tags = {"kind": "candidate", "method": method, "lambda": lam, "temperature": temp, "theta_quantile": quantile,
                "seed": f.seed, "baseline_run": baseline_id, "upstream_prepare": ctx.upstream["prepare"]}
        with ctx.run.child(f"lambda_{lam:g}_T_{temp:g}_q_{quantile:g}", tags) as run:
            run.log_params({"lambda": lam, "temperature": temp, "theta_quantile": quantile, "method": method,
                            "soft_steps": prune_cfg.soft_steps, "hard_steps": prune_cfg.hard_steps})
            seconds = train_lm_thresholds(candidate, train, prune_cfg, log=run.log_metrics)
            found = {"train/seconds": seconds}
            for scored in methods.served_by(method):
                found |= next_token_flat(candidate, dev, scored.name, "dev/", f.batch_size)
            run.log_metrics(found)
            save_model(run, candidate, "checkpoint", manifest.tokenizer_dir, get_thresholds(candidate, temp, lam))
        log.info(f"finetune: {method} λ={lam:g} T={temp:g} q={quantile:g}: dev next-token acc "
                 f"{found[f'dev/{method}/next_token_acc']:.2f} % (unpruned {baseline_acc:.2f} %), "
                 f"mean kept {found[f'dev/{method}/kept_mean']:.1f} of {dev.shape[1] - 1}")


def search(ctx: StageContext) -> None:
    """Select on WikiText-2 dev, report on test once.

    The unpruned baseline of the upstream finetune run and its pruned candidates (``method`` prune or
    prune_reduce, tag ``baseline_run``), each judged by its own method's dev metrics; the pick is the
    one with the fewest mean kept tokens whose dev next-token accuracy is within ``search.max_drop``
    points of the baseline's (none within: the most accurate, ``selection/within_max_drop = 0``).
    Without candidates (``finetune.lambdas=[]``) the baseline is selected. Then the test contexts
    (``finetune.eval_blocks``) are scored once: ``none`` and ``bolt_we`` on the baseline, ``prune``
    (and ``prune_reduce`` for a prune_reduce pick) on the pick (``test/{method}/next_token_ppl|acc``,
    ``…/kept/layer_{l}``); ``front.csv`` lists every candidate."""
    import pandas as pd

    from models.config import OpsConfig
    from models.weights import load_hf_gpt2

    cfg = ctx.cfg
    finetune_tags = ctx.tracker.run_tags(ctx.upstream["finetune"])
    prepare_id, baseline_id = finetune_tags["upstream_prepare"], finetune_tags.get("baseline_run")
    if baseline_id is None:
        raise RuntimeError(f"finetune run {ctx.upstream['finetune']} names no baseline_run; re-run stage=finetune")
    runs = ctx.tracker.candidate_runs(prepare_id)
    trained_from = runs["tags.baseline_run"] if "tags.baseline_run" in runs else pd.Series(None, index=runs.index)
    learned = [m.name for m in methods.registered() if m.thresholds]
    pruned = runs[runs["tags.method"].isin(learned) & (trained_from == baseline_id)].copy()
    base = ctx.tracker.run_metrics(baseline_id)
    selected, selected_method, within = baseline_id, methods.UNPRUNED, 1.0
    if not pruned.empty:
        for name in ("next_token_acc", "next_token_ppl", "kept_mean"):
            pruned[name] = [float(r[f"metrics.dev/{r['tags.method']}/{name}"]) for _, r in pruned.iterrows()]
        ok = pruned[pruned["next_token_acc"] >= base["dev/none/next_token_acc"] - cfg.search.max_drop]
        within = float(not ok.empty)
        pick = (ok.sort_values("kept_mean") if not ok.empty else pruned.sort_values(
            "next_token_acc", ascending=False)).iloc[0]
        selected, selected_method = str(pick["run_id"]), str(pick["tags.method"])
        if ok.empty:
            log.warning(f"search: no candidate within search.max_drop={cfg.search.max_drop} of the baseline's dev "
                        f"next-token accuracy {base['dev/none/next_token_acc']:.2f} %; picking the most accurate")
        cols = ["run_id", "tags.method", "tags.lambda", "tags.temperature", "tags.theta_quantile", "next_token_acc",
                "next_token_ppl", "kept_mean"]
        with tempfile.TemporaryDirectory() as tmp:
            pruned[cols].to_csv(Path(tmp) / "front.csv", index=False)
            ctx.run.log_artifact(Path(tmp) / "front.csv")
    manifest = DatasetManifest.from_run(ctx.tracker, prepare_id)
    test = manifest.load_blocks("test")[: cfg.finetune.eval_blocks]
    metrics = {"selection/within_max_drop": within, "test/blocks": float(test.shape[0])}
    plan = checkpoint_plan(methods.names(), baseline_id, selected, selected_method)
    for method, run_id in plan:
        model, _ = load_hf_gpt2(ctx.tracker.artifact_location(run_id, "checkpoint"), OpsConfig("emulated"))
        metrics |= next_token_flat(model, test, method, "test/", cfg.finetune.batch_size)
    ctx.run.log_metrics(metrics)
    selection = Selection(baseline_id, selected, prepare_id)
    ctx.run.log_dict(selection.to_dict(), SELECTION)
    ctx.run.set_tags({**selection.to_dict(), "selected_method": selected_method})
    log.info(f"search: selected {selected}; test next-token acc " + ", ".join(
        f"{m} {metrics[f'test/{m}/next_token_acc']:.2f} % (kept {metrics[f'test/{m}/kept_mean']:.1f})" for m, _ in plan))
