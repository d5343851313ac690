"""The causal-LM task (``data.task=wikitext2`` with a GPT-2): what prepare, finetune, search
and secure_eval do for it. Computation lives in ``models.lm``; this maps the config onto it.

- prepare: WikiText-2 (``data.wikitext_dir`` or the hub) → GPT-2 token blocks of
  ``data.max_length`` tokens (``[N, max_length]`` int64, ``torch.save``), manifest as for GLUE.
- finetune: one candidate run (``method=none``): the checkpoint (``model.checkpoint``) or a
  random GPT-2 of the model config's shape, trained ``finetune.max_steps`` steps (or
  ``finetune.epochs``); logs ``train/loss``, ``dev/perplexity``, ``test/perplexity`` and the
  same with the emulated (polynomial) ops, saves the checkpoint.
- search: nothing to search (no pruning for causal models); selects that run.
- secure_eval: method ``none`` only; next-token logits of the first
  ``secure_eval.num_examples`` dev blocks (``secure_eval.seq_len`` tokens) securely vs the
  plaintext torch model.
"""
from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig, Stage
from pipeline.context import StageContext
from pipeline.tasks.common import (
    MANIFEST,
    SELECTION,
    DatasetManifest,
    Selection,
    checkpoint_dir,
    curated_params,
    session_spec,
    training_config,
)
from pipeline.tracking import sections_hash

log = logging.getLogger(__name__)


def params(stage: Stage, cfg: PipelineConfig) -> dict[str, Any]:
    """The stage's own params (beside ``curated_params``)."""
    d, f, s = cfg.data, cfg.finetune, cfg.secure_eval
    return {
        Stage.prepare: lambda: {"wikitext_dir": d.wikitext_dir, "tokenizer_dir": d.tokenizer_dir,
                                "train_limit": d.train_limit, "dev_limit": d.dev_limit, "test_limit": d.test_limit},
        Stage.finetune: lambda: {"epochs": f.epochs, "lr": f.lr, "ops": f.ops.value, "seed": f.seed,
                                 "batch_size": f.batch_size, "max_steps": f.max_steps, "max_minutes": f.max_minutes,
                                 "warmup_ratio": f.warmup_ratio, "eval_blocks": f.eval_blocks},
        Stage.search: lambda: {},
        Stage.secure_eval: lambda: {"methods": [m.value for m in s.methods], "num_examples": s.num_examples,
                                    "batch_size": s.batch_size, "seq_len": s.seq_len,
                                    "private_owners": list(cfg.protocol.private_owners)},
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
    """WikiText-2 → token blocks cached under ``outputs/cache/prepare/<hash>/{split}.pt``."""
    import torch
    from transformers import AutoTokenizer

    from models.lm import load_lm_blocks

    cfg, d = ctx.cfg, ctx.cfg.data
    cache = Path(cfg.paths.outputs) / "cache" / "prepare" / sections_hash(cfg, Stage.prepare)
    cache.mkdir(parents=True, exist_ok=True)
    tok_dir = _tokenizer_dir(cfg)
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    source = Path(d.wikitext_dir).expanduser().resolve() if d.wikitext_dir else None
    blocks = load_lm_blocks(source, tokenizer, d.max_length,
                            {"train": d.train_limit, "dev": d.dev_limit, "test": d.test_limit})
    splits: dict[str, str] = {}
    for split, b in blocks.items():
        if b.shape[0] == 0:
            raise ValueError(f"WikiText-2 {split}: fewer than data.max_length={d.max_length} tokens")
        torch.save(b, cache / f"{split}.pt")
        splits[split] = str(cache / f"{split}.pt")
    manifest = DatasetManifest(task=d.task.value, splits=splits, tokenizer_dir=str(tok_dir), num_labels=0,
                               max_length=d.max_length, vocab_size=len(tokenizer),
                               checkpoint=str(checkpoint_dir(cfg)) if cfg.model.checkpoint else None)
    (cache / MANIFEST).write_text(json.dumps(manifest.__dict__, indent=2))
    ctx.run.log_artifact(cache / MANIFEST)
    ctx.run.log_metrics({f"blocks/{s}": float(b.shape[0]) for s, b in blocks.items()}
                        | {f"tokens/{s}": float(b.numel()) for s, b in blocks.items()})


def load_blocks(manifest: DatasetManifest, split: str) -> Any:
    """``[N, max_length]`` token blocks of ``split`` written by :func:`prepare`."""
    import torch

    return torch.load(manifest.splits[split])


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


def finetune(ctx: StageContext) -> None:
    """Train the LM briefly, log perplexities (exact and emulated ops), save the checkpoint."""
    import torch

    from models.lm import LMTrainConfig, perplexity, train_lm
    from models.weights import save_checkpoint

    cfg, f = ctx.cfg, ctx.cfg.finetune
    torch.set_num_threads(f.torch_threads)
    if f.lambdas:
        log.info(f"finetune: data.task=wikitext2 is a causal LM; token pruning is not defined for it, "
                        f"so finetune.lambdas={f.lambdas} is ignored: training the unpruned LM only")
    manifest = DatasetManifest.from_run(ctx.tracker, ctx.upstream["prepare"])
    train, dev, test = (load_blocks(manifest, s) for s in ("train", "dev", "test"))
    model, port_report = _initial_model(cfg, manifest)
    ctx.run.set_tags({"weights": port_report[:250]})
    steps = f.max_steps or max(1, math.ceil(f.epochs * train.shape[0] / f.batch_size))
    tc = training_config(f, LMTrainConfig, steps=steps)
    tags = {"kind": "candidate", "method": "none", "lambda": 0.0, "temperature": 0.0,
            "upstream_prepare": ctx.upstream["prepare"]}
    with ctx.run.child("baseline", tags) as child:
        child.log_params({"method": "none", "steps": steps, "ops": f.ops.value, "warmup_ratio": f.warmup_ratio})
        result = train_lm(model, train, tc, log=child.log_metrics)
        n = f.eval_blocks
        t0 = time.time()
        metrics = {"dev/perplexity": perplexity(model, dev[:n], f.batch_size, ops_mode="exact"),
                   "test/perplexity": perplexity(model, test[:n], f.batch_size, ops_mode="exact"),
                   "dev/perplexity_emulated": perplexity(model, dev[:n], f.batch_size, ops_mode="emulated"),
                   "test/perplexity_emulated": perplexity(model, test[:n], f.batch_size, ops_mode="emulated")}
        metrics.update({"train/steps": float(result.steps), "train/seconds": result.seconds,
                        "train/tokens": float(result.steps * f.batch_size * train.shape[1]),
                        "eval/seconds": time.time() - t0, "eval/blocks_dev": float(dev[:n].shape[0]),
                        "eval/blocks_test": float(test[:n].shape[0])})
        child.log_metrics(metrics, step=result.steps)
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(model, Path(tmp) / "checkpoint", tokenizer_dir=manifest.tokenizer_dir)
            child.log_artifact(Path(tmp) / "checkpoint", "checkpoint")
    ctx.run.log_metrics({"dev/perplexity": metrics["dev/perplexity"], "test/perplexity": metrics["test/perplexity"]})
    log.info(f"finetune: {result.steps} steps in {result.seconds:.0f}s; perplexity dev "
                    f"{metrics['dev/perplexity']:.2f} / test {metrics['test/perplexity']:.2f} (exact ops), "
                    f"{metrics['dev/perplexity_emulated']:.2f} / {metrics['test/perplexity_emulated']:.2f} (emulated)")


def search(ctx: StageContext) -> None:
    """No thresholds to search for a causal LM: select the unpruned LM run, say so."""
    candidates = ctx.tracker.candidate_runs(ctx.tracker.run_tags(ctx.upstream["finetune"])["upstream_prepare"])
    baseline = candidates[candidates["tags.method"] == "none"]
    if baseline.empty:
        raise RuntimeError("search: no unpruned LM candidate run; run stage=finetune first")
    run_id = baseline.iloc[0]["run_id"]
    log.info("search: skipped for data.task=wikitext2 (causal LM): token pruning is not defined for "
                    f"GPT-2, nothing to search; selecting the unpruned LM run {run_id}")
    selection = Selection(run_id, run_id, ctx.tracker.run_tags(ctx.upstream["finetune"])["upstream_prepare"])
    ctx.run.log_dict(selection.to_dict(), SELECTION)
    ctx.run.set_tags({**selection.to_dict(), "skipped": "causal LM: no pruning"})


def secure_eval(ctx: StageContext) -> None:
    """Method ``none``: secure next-token logits of a few dev blocks vs the plaintext torch model."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from models.weights import load_hf_gpt2, to_numpy_weights
    from protocols.model_spec import PruningSpec, TransformerSpec
    from protocols.secure_model import evaluate_batches
    from protocols.session import TwoPartySession

    cfg = ctx.cfg
    run_id = Selection.from_run(ctx.tracker, ctx.upstream["search"]).baseline_run_id
    manifest = DatasetManifest.from_run(ctx.tracker, ctx.upstream["prepare"])
    dev = load_blocks(manifest, "dev")
    ckpt = ctx.tracker.download(run_id, "checkpoint")
    model, _ = load_hf_gpt2(ckpt)
    model.eval()
    spec = TransformerSpec.from_hf_config(json.loads((ckpt / "config.json").read_text()))
    weights = to_numpy_weights(model)
    n_tok = cfg.secure_eval.seq_len or manifest.max_length
    n = min(cfg.secure_eval.num_examples, dev.shape[0])
    with ctx.run.child("none", {"kind": "method", "method": "none", "checkpoint_run": run_id}) as child:
        child.log_params({**curated_params(cfg), "method": "none", "seq_len": n_tok})
        sums: dict[str, float] = {}
        agree = top1 = 0
        max_err = 0.0
        batch = cfg.secure_eval.batch_size
        examples = [(dev[i, :n_tok].numpy(), np.ones(n_tok), None) for i in range(n)]
        with TwoPartySession(session_spec(cfg)) as session:
            batches = evaluate_batches(session, spec, weights, examples, PruningSpec(), batch_size=batch, last_only=True)
            for chunk, results, cost in tqdm(batches, total=-(-n // batch), desc=f"secure gpt2 (batches of {batch})"):
                for k, v in cost.to_metrics().items():
                    sums[k] = sums.get(k, 0.0) + v / n      # the batch's cost spread over its inputs
                for i, result in zip(chunk, results):
                    with torch.no_grad():
                        ref = model(torch.as_tensor(examples[i][0])[None])[0, -1].numpy()
                    got = np.asarray(result.logits, dtype=np.float64).reshape(-1)
                    max_err = max(max_err, float(np.abs(got - ref).max()))
                    agree += int(np.argmax(got) == np.argmax(ref))
                    top1 += int(n_tok < dev.shape[1] and np.argmax(got) == int(dev[i, n_tok]))
        metrics = {**sums, "agree/secure": 100.0 * agree / n, "logits/max_abs_err": max_err,
                   "examples/secure": float(n), "batch_size": float(batch)}
        if n_tok < dev.shape[1]:
            metrics["acc/secure_next_token"] = 100.0 * top1 / n
        child.log_metrics(metrics)
        child.log_dict({"declared": "final (last-position) logits to the client; no pruning, nothing else",
                        "reveals": [r.to_dict() for r in session.reveals],
                        "ownership": dict(session.ownership)}, "leakage.json")
    ctx.run.log_metrics({"time_s/lan/none": metrics.get("time_s/lan", 0.0),
                         "comm_mb/none": metrics.get("comm_mb/total", 0.0)})
    log.info(f"secure_eval: {n} dev sequence(s) of {n_tok} tokens under {cfg.protocol.protocol.value}: "
                    f"next-token argmax agrees with plaintext on {agree}/{n}, max |Δlogit| {max_err:.3g}")
