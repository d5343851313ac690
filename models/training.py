"""Crypto-aware fine-tuning (LTP-style, two phases) and hard-mask evaluation.

Phase (a), soft masks: ``loss = task + λ · mean_l keep_ratio_l`` with thresholds θ trained
at their own (larger) learning rate and temperature ``T``. Phase (b), hard masks: θ frozen,
straight-through gradients for the model. ``method="none"`` is the unpruned baseline.
"""
from __future__ import annotations

import copy
import math
import os
import random
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from models.bert import BertClassifier
from models.config import OpsConfig
from models.data import compute_metrics
from models.thresholds import ThresholdsArtifact
from models.weights import get_thresholds

LogFn = Callable[[dict[str, float], int], None]


@dataclass
class FinetuneConfig:
    """Fine-tuning hyper-parameters (plain dataclass; the pipeline maps its config onto it).

    ``method``: none (baseline) | prune | prune_reduce. ``epochs``/``hard_epochs`` may be
    fractional; ``max_steps``/``hard_max_steps`` cap each phase. ``patience``: evaluations
    without dev improvement before stopping (None: never). ``theta_quantile``: θ_l is
    initialised to the ``theta_quantile·(l+1)/L`` quantile of real-token scores.
    ``beta_factor``: after training β_l = max(θ_l, beta_factor·θ_l).
    """

    epochs: float = 1.0
    batch_size: int = 32
    lr: float = 5e-5
    threshold_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    lambda_: float = 0.1
    temperature: float = 1e-3
    hard_epochs: float = 0.25
    hard_lr: float | None = None
    method: str = "prune"
    ops_mode: str = "exact"
    fixed_point: bool = False
    seed: int = 0
    max_steps: int | None = None
    hard_max_steps: int | None = None
    patience: int | None = None
    eval_every: int | None = None
    eval_batch_size: int = 128
    theta_quantile: float = 0.3
    beta_factor: float = 2.0
    trim_padding: bool = True
    grad_clip: float = 1.0
    progress: bool = True


@dataclass
class EvalResult:
    """Dev metrics (percent), mean kept tokens per layer ``[L]`` (``k_l``) and keep ratio."""

    metrics: dict[str, float]
    kept_tokens: list[float]
    keep_ratio: list[float]
    n0: int

    def flat(self, prefix: str = "dev/") -> dict[str, float]:
        """Stable metric names: ``{prefix}{metric}``, ``kept_tokens/layer_i``, ``keep_ratio/layer_i``."""
        out = {f"{prefix}{k}": v for k, v in self.metrics.items()}
        out.update({f"kept_tokens/layer_{i}": v for i, v in enumerate(self.kept_tokens)})
        out.update({f"keep_ratio/layer_{i}": v for i, v in enumerate(self.keep_ratio)})
        return out


@dataclass
class FinetuneResult:
    """Final hard-mask evaluation, thresholds artifact and the evaluation history."""

    eval: EvalResult
    thresholds: ThresholdsArtifact
    history: list[dict[str, float]] = field(default_factory=list)


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _batch(b: dict[str, torch.Tensor], trim: bool) -> dict[str, torch.Tensor]:
    am = b["attention_mask"]
    n = int(am.sum(1).max()) if trim else am.shape[1]
    return {"input_ids": b["input_ids"][:, :n], "attention_mask": am[:, :n],
            "token_type_ids": b["token_type_ids"][:, :n], "label": b["label"]}


def _task_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.squeeze(-1), y.float())
    return F.cross_entropy(logits, y.long())


@torch.no_grad()
def evaluate(
    model: BertClassifier, ds: Any, task: str, method: str = "prune", batch_size: int = 128,
    ops_cfg: OpsConfig | None = None, progress: bool = False,
) -> EvalResult:
    """Hard-mask evaluation on a tokenised split at its full padded length ``n0``.

    ``ops_cfg`` overrides the model's ops for this call only."""
    model.eval()
    saved = model.ops_cfg
    if ops_cfg is not None:
        model.ops_cfg = ops_cfg
    preds, labels, kept, ratio = [], [], [], []
    for b in tqdm(DataLoader(ds, batch_size=batch_size), desc="eval", disable=not progress, leave=False):
        out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], method=method, mask_mode="hard")
        lg = out.logits
        preds.append(lg.squeeze(-1) if lg.shape[-1] == 1 else lg.argmax(-1))
        labels.append(b["label"])
        kept.append(out.kept_tokens)
        ratio.append(out.keep_ratio * len(lg))
    k = torch.cat(kept).mean(0).tolist()
    r = (torch.stack(ratio).sum(0) / sum(len(p) for p in preds)).tolist()
    m = compute_metrics(task, torch.cat(preds).numpy(), torch.cat(labels).numpy())
    model.ops_cfg = saved
    return EvalResult(m, k, r, int(ds[0]["input_ids"].shape[0]))


@torch.no_grad()
def init_thresholds(model: BertClassifier, ds: Any, quantile: float, n_examples: int = 256) -> None:
    """θ_l ← the ``quantile·(l+1)/L`` quantile of real-token scores (unpruned model) on up to
    ``n_examples`` examples; β_l ← θ_l."""
    model.eval()
    b = ds[: min(n_examples, len(ds))]
    out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], method="none")
    am = b["attention_mask"].bool().clone()
    am[:, 0] = False
    L = len(out.scores)
    for l, s in enumerate(out.scores):
        q = quantile * (l + 1) / L
        model.pruning.theta.data[l] = float(torch.quantile(s[am].float(), q)) if q > 0 else 0.0
    model.pruning.beta.data.copy_(model.pruning.theta.data)


def _run_phase(
    model: BertClassifier, train_ds: Any, dev_ds: Any, task: str, cfg: FinetuneConfig, phase: str,
    log: LogFn | None, step0: int, history: list[dict[str, float]],
) -> int:
    """One phase: ``base`` (no pruning), ``soft`` or ``hard``; returns the global step."""
    epochs = cfg.hard_epochs if phase == "hard" else cfg.epochs
    cap = cfg.hard_max_steps if phase == "hard" else cfg.max_steps
    g = torch.Generator().manual_seed(cfg.seed + {"base": 0, "soft": 1, "hard": 2}[phase])
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, generator=g, drop_last=True)
    total = max(1, math.ceil(epochs * len(loader)))
    if cap is not None:
        total = min(total, cap)
    if total <= 0 or epochs <= 0:
        return step0
    decay = [p for n, p in model.named_parameters() if not n.startswith("pruning.") and p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if not n.startswith("pruning.") and p.ndim <= 1]
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0}]
    model.pruning.theta.requires_grad_(phase == "soft")
    if phase == "soft":
        groups.append({"params": [model.pruning.theta], "weight_decay": 0.0, "lr": cfg.threshold_lr})
    lr = (cfg.hard_lr or cfg.lr) if phase == "hard" else cfg.lr
    opt = torch.optim.AdamW(groups, lr=lr)
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total) if phase != "hard" else 0, total)
    method = "none" if phase == "base" else cfg.method
    every = cfg.eval_every or len(loader)
    best, best_state, bad, step = -math.inf, None, 0, 0
    bar = tqdm(total=total, desc=f"{phase}", disable=not cfg.progress)
    while step < total:
        for raw in loader:
            model.train()
            b = _batch(raw, cfg.trim_padding)
            out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], method=method,
                        mask_mode="soft" if phase == "soft" else "hard", temperature=cfg.temperature,
                        straight_through=phase == "hard")
            task_loss = _task_loss(out.logits, b["label"])
            ratio = out.keep_ratio.mean()
            loss = task_loss + (cfg.lambda_ * ratio if phase == "soft" else 0.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(
                [p for n, p in model.named_parameters() if not n.startswith("pruning.")], cfg.grad_clip)
            opt.step()
            sched.step()
            with torch.no_grad():
                model.pruning.theta.clamp_(0.0, 1.0)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{task_loss.item():.3f}", keep=f"{ratio.item():.2f}")
            if log is not None and step % 10 == 0:
                log({f"train/{phase}_loss": task_loss.item(), f"train/{phase}_keep_ratio": ratio.item()},
                    step0 + step)
            if step % every == 0 or step == total:
                ev = evaluate(model, dev_ds, task, method, cfg.eval_batch_size)
                rec = {"step": float(step0 + step), **ev.flat()}
                history.append(rec)
                if log is not None:
                    log(ev.flat(), step0 + step)
                if ev.metrics["metric"] > best:
                    best, bad = ev.metrics["metric"], 0
                    if phase == "base":
                        best_state = copy.deepcopy(model.state_dict())
                else:
                    bad += 1
                if cfg.patience is not None and bad > cfg.patience:
                    step = total
            if step >= total:
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.pruning.theta.requires_grad_(False)
    return step0 + step


def finetune(
    model: BertClassifier, train_ds: Any, dev_ds: Any, task: str, cfg: FinetuneConfig,
    log_metrics: LogFn | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` in place on tokenised splits; returns the final hard-mask eval.

    ``cfg.method == "none"``: plain fine-tuning (best dev checkpoint restored). Otherwise:
    θ initialised from scores (:func:`init_thresholds`), soft phase (``cfg.epochs``), then
    hard straight-through phase (``cfg.hard_epochs``), then β = max(θ, beta_factor·θ).
    """
    set_seed(cfg.seed)
    model.ops_cfg = OpsConfig(cfg.ops_mode, cfg.fixed_point)  # type: ignore[arg-type]
    history: list[dict[str, float]] = []
    if cfg.method == "none":
        _run_phase(model, train_ds, dev_ds, task, cfg, "base", log_metrics, 0, history)
    elif cfg.method in ("prune", "prune_reduce"):
        init_thresholds(model, train_ds, cfg.theta_quantile)
        s = _run_phase(model, train_ds, dev_ds, task, cfg, "soft", log_metrics, 0, history)
        with torch.no_grad():
            model.pruning.beta.copy_(model.pruning.theta * max(cfg.beta_factor, 1.0))
        _run_phase(model, train_ds, dev_ds, task, cfg, "hard", log_metrics, s, history)
    else:
        raise ValueError(f"finetune: method must be none, prune or prune_reduce, got {cfg.method!r}")
    ev = evaluate(model, dev_ds, task, cfg.method, cfg.eval_batch_size)
    th = get_thresholds(model, cfg.temperature, cfg.lambda_)
    return FinetuneResult(ev, th, history)


def run_glue_experiment(
    task: str, ckpt_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
    glue_dir: str | os.PathLike[str] | None = None, max_length: int = 64,
    max_train: int | None = None, base_cfg: FinetuneConfig | None = None,
    prune_cfg: FinetuneConfig | None = None, lambdas: tuple[float, ...] = (0.05, 0.2, 0.5),
    cache_dir: str | None = None, log_metrics: LogFn | None = None,
) -> dict[str, Any]:
    """Baseline fine-tune (reused from ``out_dir/baseline`` if present), BOLT-WE eval of it,
    then one pruning fine-tune per λ starting from the baseline. Writes checkpoints under
    ``out_dir/<run>/`` and ``out_dir/results.json`` (updated after every run); returns it."""
    import json
    from dataclasses import asdict, replace

    from models.data import get_task, load_glue
    from models.weights import load_checkpoint, load_hf_bert, save_checkpoint

    os.makedirs(out_dir, exist_ok=True)
    data = load_glue(task, ckpt_dir, glue_dir, max_length, cache_dir=cache_dir, max_train=max_train)
    base_cfg = base_cfg or FinetuneConfig(method="none")
    prune_cfg = prune_cfg or FinetuneConfig(method="prune")
    res_path = os.path.join(out_dir, "results.json")
    results: dict[str, Any] = json.load(open(res_path)) if os.path.exists(res_path) else {}
    results["setup"] = {"task": task, "ckpt": str(ckpt_dir), "glue_dir": str(glue_dir), "max_length": max_length,
                        "n_train": len(data["train"]), "n_dev": len(data["dev"]),
                        "base_cfg": asdict(base_cfg), "prune_cfg": asdict(prune_cfg)}

    def dump() -> None:
        with open(res_path, "w") as f:
            json.dump(results, f, indent=2, default=str)

    bdir = os.path.join(out_dir, "baseline")
    if os.path.exists(os.path.join(bdir, "model.safetensors")):
        base, _ = load_checkpoint(bdir)
    else:
        base, rep = load_hf_bert(ckpt_dir, num_labels=get_task(task).num_labels)
        results["port_report"] = str(rep)
        r = finetune(base, data["train"], data["dev"], task, base_cfg, log_metrics)
        save_checkpoint(base, bdir, tokenizer_dir=ckpt_dir)
        results["baseline_history"] = r.history
    results["baseline"] = evaluate(base, data["dev"], task, "none").flat()
    results["bolt_we"] = evaluate(base, data["dev"], task, "bolt_we").flat()
    results["baseline/emulated"] = evaluate(base, data["dev"], task, "none", ops_cfg=OpsConfig("emulated")).flat()
    dump()
    for lam in lambdas:
        m = copy.deepcopy(base)
        cfg = replace(prune_cfg, lambda_=lam)
        r = finetune(m, data["train"], data["dev"], task, cfg, log_metrics)
        name = f"{cfg.method}_lambda{lam:g}"
        save_checkpoint(m, os.path.join(out_dir, name), r.thresholds, tokenizer_dir=ckpt_dir)
        results[name] = {**r.eval.flat(), "thresholds": r.thresholds.to_dict(),
                         "history": r.history}
        results[name + "/emulated"] = evaluate(m, data["dev"], task, cfg.method,
                                               ops_cfg=OpsConfig("emulated")).flat()
        if cfg.method == "prune":
            results[name + "/as_prune_reduce"] = evaluate(m, data["dev"], task, "prune_reduce",
                                                          ops_cfg=OpsConfig("emulated")).flat()
        dump()
    return results
