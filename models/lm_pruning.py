"""Learned token pruning for the GPT-2 LM: next-token prediction over a pruned context.

Each block ``[N, n+1]`` of WikiText-2 token ids is a context of its first ``n`` tokens and the
target ``block[:, n]``; :meth:`models.gpt2.GPT2LM.pruned` scores the target from the context's
last position with the context pruned (``models.token_pruning``, causal). Thresholds θ_l are
learned with the recipe of ``models.training`` for BERT: a soft phase (``loss = CE +
λ · mean_l keep_ratio_l``, θ at its own learning rate, LTP soft mask at temperature ``T``) then a
hard phase (θ frozen, straight-through gradients for the model). θ_l starts at the
``theta_quantile·(l+1)/L`` quantile of the context tokens' scores (the last position excluded).
With ``method="prune_reduce"`` Π_reduce's β_l starts at ``beta_factor·θ_l`` and is learned in the
soft phase too (its soft high/low mix, ``models.token_pruning``), with ``beta_lambda`` times the
high group's share added to the loss: the split between the cheap and the accurate forms is where
next-token accuracy and cost trade.
The loss is on the last position only: the only one whose logits survive pruning.
No Hydra/MLflow here.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from models import methods
from models.gpt2 import GPT2LM, LMPruneOutput
from models.token_pruning import PruneSettings

LogFn = Callable[[dict[str, float], int], None]


@dataclass
class LMPruneConfig:
    """``soft_steps`` / ``hard_steps`` optimizer steps of ``batch_size`` blocks; ``lambda_`` the
    kept-share penalty; ``temperature`` the soft mask's (in units of the score S); ``lr`` for the
    model, ``threshold_lr`` for θ (and β); ``method``: ``prune``, ``prune_reduce`` (β learned from
    ``beta_factor·θ`` with the penalty ``beta_lambda`` on the high group's share), or ``none``: the
    unpruned baseline trained on for as many steps on the same loss (same budget)."""

    lambda_: float = 0.1
    temperature: float = 0.01
    soft_steps: int = 60
    hard_steps: int = 20
    lr: float = 2e-4
    threshold_lr: float = 1e-2
    batch_size: int = 8
    theta_quantile: float = 0.3
    method: str = "prune"
    seed: int = 0
    grad_clip: float = 1.0
    beta_factor: float = 2.0
    beta_lambda: float = 0.05


@dataclass
class NextTokenMetrics:
    """Last-position next-token ``perplexity`` (exp of the mean NLL), top-1 ``accuracy`` (%) and
    ``kept`` ``[L]``: mean tokens left after each layer's pruning, over ``blocks`` contexts."""

    perplexity: float
    accuracy: float
    kept: list[float]
    blocks: int
    seconds: float = 0.0
    steps: list[tuple[int, float]] = field(default_factory=list)


def last_token_loss(model: GPT2LM, blocks: torch.Tensor, settings: PruneSettings) -> tuple[torch.Tensor, LMPruneOutput]:
    """Cross-entropy of ``blocks[:, -1]`` predicted from the pruned context ``blocks[:, :-1]``
    ``[B, n]``; returns ``(loss, LMPruneOutput)``."""
    out = model.pruned(blocks[:, :-1], settings)
    return F.cross_entropy(out.logits.float(), blocks[:, -1]), out


@torch.no_grad()
def init_lm_thresholds(model: GPT2LM, blocks: torch.Tensor, quantile: float, beta_factor: float = 1.0) -> None:
    """θ_l ← the ``quantile·(l+1)/L`` quantile of the unpruned model's layer-l scores of the context
    tokens (the forced last position excluded); β_l ← ``beta_factor``·θ_l (at least θ_l, at most 1)."""
    model.eval()
    scores = model.pruned(blocks[:, :-1], PruneSettings("none")).scores
    L = len(scores)
    for l, s in enumerate(scores):
        q = quantile * (l + 1) / L
        model.pruning.theta.data[l] = float(torch.quantile(s[:, :-1].reshape(-1), q)) if q > 0 else 0.0
    model.pruning.beta.data.copy_((model.pruning.theta.data * max(beta_factor, 1.0)).clamp(max=1.0))


def train_lm_thresholds(model: GPT2LM, train_blocks: torch.Tensor, cfg: LMPruneConfig,
                        log: LogFn | None = None) -> float:
    """Learn θ (``prune_reduce``: and β; and fine-tune the model) in place: soft phase then hard phase
    (module doc); with ``method="none"`` only the model trains, unpruned, for the same steps. Returns
    the wall seconds. ``log(metrics, step)`` gets ``train/{phase}_loss``, ``train/{phase}_keep_ratio``
    and, for ``prune_reduce``, ``train/{phase}_high_ratio``."""
    spec = methods.trainable(cfg.method)
    if train_blocks.shape[0] < cfg.batch_size:
        raise ValueError(f"{train_blocks.shape[0]} training blocks < batch_size={cfg.batch_size}")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    learn, reduce = spec.thresholds, spec.reduce
    if learn:
        init_lm_thresholds(model, train_blocks[: 4 * cfg.batch_size], cfg.theta_quantile,
                           cfg.beta_factor if reduce else 1.0)
    emit = log or (lambda m, s: None)
    t0, step = time.time(), 0
    weights = [p for name, p in model.named_parameters() if not name.startswith("pruning.")]
    for phase, steps in (("soft", cfg.soft_steps), ("hard", cfg.hard_steps)):
        soft = phase == "soft"
        model.pruning.theta.requires_grad_(soft and learn)
        model.pruning.beta.requires_grad_(soft and reduce)
        learned = [p for p in (model.pruning.theta, model.pruning.beta) if p.requires_grad]
        groups = [{"params": weights, "lr": cfg.lr}]
        if learned:
            groups.append({"params": learned, "lr": cfg.threshold_lr})
        opt = torch.optim.AdamW(groups, weight_decay=0.0)
        settings = PruneSettings(cfg.method, "soft" if soft else "hard", cfg.temperature, straight_through=not soft)
        model.train()
        for _ in tqdm(range(steps), desc=f"LM thresholds ({phase})", leave=False):
            batch = train_blocks[torch.randint(0, train_blocks.shape[0], (cfg.batch_size,), generator=gen)]
            ce, out = last_token_loss(model, batch, settings)
            loss = ce + cfg.lambda_ * out.keep_ratio.mean() if soft and learn else ce
            if soft and reduce:
                loss = loss + cfg.beta_lambda * out.high_ratio.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            with torch.no_grad():
                model.pruning.theta.clamp_(0.0, 1.0)
                model.pruning.beta.copy_(torch.maximum(model.pruning.beta, model.pruning.theta).clamp(max=1.0))
            step += 1
            emit({f"train/{phase}_loss": ce.item(), f"train/{phase}_keep_ratio": out.keep_ratio.mean().item()}
                 | ({f"train/{phase}_high_ratio": out.high_ratio.mean().item()} if reduce else {}), step)
    model.pruning.theta.requires_grad_(False)
    model.pruning.beta.requires_grad_(False)
    model.eval()
    return time.time() - t0


@torch.no_grad()
def next_token_metrics(model: GPT2LM, blocks: torch.Tensor, method: str, batch_size: int = 16) -> NextTokenMetrics:
    """:class:`NextTokenMetrics` of ``method`` (hard masks) over ``blocks`` ``[N, n+1]``."""
    if blocks.shape[0] == 0:
        raise ValueError("next_token_metrics: no blocks")
    model.eval()
    t0, nll, hits = time.time(), 0.0, 0
    kept = torch.zeros(len(model.transformer.h))
    for i in range(0, blocks.shape[0], batch_size):
        b = blocks[i:i + batch_size]
        out = model.pruned(b[:, :-1], PruneSettings(method))
        nll += float(F.cross_entropy(out.logits.float(), b[:, -1], reduction="sum"))
        hits += int((out.logits.argmax(-1) == b[:, -1]).sum())
        kept += out.kept_tokens.sum(0)
    n = blocks.shape[0]
    return NextTokenMetrics(math.exp(nll / n), 100.0 * hits / n, (kept / n).tolist(), n, time.time() - t0)
