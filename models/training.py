"""Crypto-aware fine-tuning (LTP-style, two phases) and hard-mask evaluation.

Phase (a), soft masks: ``loss = task + λ · mean_l keep_ratio_l (+ λ_β · mean_l high_ratio_l)``
with thresholds θ (and, for ``prune_reduce``, β) trained at their own (larger) learning rate and
temperature ``T``. Phase (b), hard masks: thresholds frozen, straight-through gradients for the
model. ``method="none"`` is the unpruned baseline; :func:`continue_unpruned` trains it on for as
many steps as a candidate's two phases, so that a candidate and the baseline it is compared
with have had the same training budget. Model selection (early stopping, best checkpoint) uses
the split passed as ``val_ds``, carved from train: the dev split is for the final report only.
Training runs with the ops of ``ops`` (``emulated``: the secure run's GELU/exp/rsqrt forms
of ``models.approx``; ``fixed_point`` rounds to its fixed-point format too).
"""
from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from models import methods
from models.approx import DEFAULT_FAMILY
from models.bert import BertClassifier
from models.config import OpsConfig
from models.data import compute_metrics
from models.thresholds import ThresholdsArtifact
from models.weights import get_thresholds

LogFn = Callable[[dict[str, float], int], None]


@dataclass
class FinetuneConfig:
    """Fine-tuning hyper-parameters (plain dataclass; the pipeline maps its config onto it).

    ``method``: ``none`` (the unpruned baseline) or a method with learned thresholds
    (``models.methods.trainable``). ``epochs``/``hard_epochs`` may be
    fractional; ``max_steps``/``hard_max_steps`` cap each phase. ``patience``: evaluations
    without validation improvement before stopping (None: never). ``theta_quantile``: θ_l is
    initialised to the ``theta_quantile·(l+1)/L`` quantile of real-token decision scores
    (``criterion``: ``absolute`` S or ``relative`` c·S, see ``models.thresholds``).
    ``beta_factor``: β_l starts at ``beta_factor·θ_l``; ``prune_reduce`` learns it in the soft
    phase with penalty ``beta_lambda`` on the high group's share, ``prune`` keeps that start.
    """

    epochs: float = 1.0
    batch_size: int = 32
    lr: float = 5e-5
    threshold_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    lambda_: float = 0.1
    temperature: float = 0.05  # in units of the criterion's scores (relative: mean 1)
    hard_epochs: float = 0.25
    hard_lr: float | None = None
    method: str = "prune"
    ops: str = "exact"
    fixed_point: bool = False
    seed: int = 0
    max_steps: int | None = None
    hard_max_steps: int | None = None
    patience: int | None = None
    eval_every: int | None = None
    eval_batch_size: int = 128
    theta_quantile: float = 0.3
    beta_factor: float = 2.0
    beta_lambda: float = 0.05
    criterion: str = "relative"
    reduce_forms: str = "fast"   # Π_reduce's low-group forms (models.approx.REDUCE_FORMS)
    nonlinear: str = DEFAULT_FAMILY  # the family of every token's GELU and exp (models.approx.FAMILIES)
    trim_padding: bool = True      # each batch cut to its longest input (``trimmed``)
    length_buckets: bool = False   # batches of similar lengths (``LengthBatches``): less padding to cut
    grad_clip: float = 1.0
    progress: bool = True


@dataclass
class EvalResult:
    """Dev metrics (percent), mean kept tokens per layer ``[L]`` (``k_l``), keep ratio ``[L]`` and
    the high group's share of the kept real tokens ``[L]`` (``prune_reduce``; 0 otherwise)."""

    metrics: dict[str, float]
    kept_tokens: list[float]
    keep_ratio: list[float]
    n0: int
    high_ratio: list[float] = field(default_factory=list)

    def flat(self, prefix: str = "dev/") -> dict[str, float]:
        """Stable metric names: ``{prefix}{metric}``, ``tokens_kept/layer_i``, ``keep_ratio/layer_i``."""
        out = {f"{prefix}{k}": v for k, v in self.metrics.items()}
        out.update({f"tokens_kept/layer_{i}": v for i, v in enumerate(self.kept_tokens)})
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


def trimmed(b: dict[str, torch.Tensor], trim: bool) -> dict[str, torch.Tensor]:
    """A batch (right-padded rows ``[B, n]``) cut to its longest input when ``trim``: the same
    decisions and logits as at full padding (scores ignore padding rows), for less compute."""
    am = b["attention_mask"]
    n = int(am.sum(1).max()) if trim else am.shape[1]
    return {"input_ids": b["input_ids"][:, :n], "attention_mask": am[:, :n],
            "token_type_ids": b["token_type_ids"][:, :n], "label": b["label"]}


def batch_lengths(ds: Any) -> list[int]:
    """Each example's real length (``Σ attention_mask``) of a tokenised split."""
    return [int(x) for x in np.asarray(ds.with_format("numpy")["attention_mask"]).sum(axis=1)]


class LengthBatches:
    """A batch sampler of similar lengths: each epoch a random permutation of the examples is cut
    into pools of ``pool`` batches, each pool sorted by length and cut into batches, and the
    batches shuffled; the last incomplete batch is dropped. Trimmed (``trimmed``), a batch then
    pads to about its own members' length. Deterministic in ``generator``."""

    def __init__(self, lengths: list[int], batch_size: int, generator: torch.Generator, pool: int = 50) -> None:
        self.lengths, self.batch_size, self.generator, self.pool = lengths, batch_size, generator, pool

    def __len__(self) -> int:
        return len(self.lengths) // self.batch_size

    def __iter__(self) -> Any:
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()[: len(self) * self.batch_size]
        size = self.batch_size * self.pool
        batches = []
        for start in range(0, len(order), size):
            chunk = sorted(order[start:start + size], key=lambda i: self.lengths[i])
            batches += [chunk[j:j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        for i in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[i]


def _task_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.squeeze(-1), y.float())
    return F.cross_entropy(logits, y.long())


def eval_batches(ds: Any, method: str, batch_size: int) -> Iterator[tuple[dict[str, torch.Tensor], int]]:
    """The batches ``evaluate`` runs ``method`` on: by length and each cut to its longest input when
    the method's decisions ignore padding (``models.methods.MethodSpec.padding``), else in order at the
    full padded length ``n0``. Yields ``(batch, padding_kept)``: the cut positions per row the method
    would have kept (``n0 − n`` for one that keeps padding, else 0), for its kept counts."""
    n0 = int(ds[0]["input_ids"].shape[0])
    padding = methods.get(method).padding
    cut = padding != "counted"
    order = sorted(range(len(ds)), key=batch_lengths(ds).__getitem__) if cut else list(range(len(ds)))
    for start in range(0, len(order), batch_size):
        b = trimmed(ds[order[start:start + batch_size]], cut)
        yield b, n0 - b["input_ids"].shape[1] if padding == "kept" else 0


@torch.no_grad()
def evaluate(
    model: BertClassifier, ds: Any, task: str, method: str = "prune", batch_size: int = 128,
    ops_cfg: OpsConfig | None = None, progress: bool = False,
) -> EvalResult:
    """Hard-mask evaluation on a tokenised split, as at its full padded length ``n0``: a method whose
    decisions ignore padding runs on batches of similar lengths cut to their longest input
    (``eval_batches``; the same logits and decisions, a fraction of the compute), its kept counts
    counting the cut padding where the method keeps padding (``none``).

    ``ops_cfg`` overrides the model's ops for this call only."""
    model.eval()
    saved = model.ops_cfg
    if ops_cfg is not None:
        model.ops_cfg = ops_cfg
    preds, labels, kept, ratio, high = [], [], [], [], []
    for b, padding_kept in tqdm(eval_batches(ds, method, batch_size), desc="eval", disable=not progress, leave=False):
        out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], method=method, mask_mode="hard")
        lg = out.logits
        preds.append(lg.squeeze(-1) if lg.shape[-1] == 1 else lg.argmax(-1))
        labels.append(b["label"])
        kept.append(out.kept_tokens + padding_kept)
        ratio.append(out.keep_ratio * len(lg))
        high.append(out.high_ratio * len(lg))
    k = torch.cat(kept).mean(0).tolist()
    count = sum(len(p) for p in preds)
    r = (torch.stack(ratio).sum(0) / count).tolist()
    h = (torch.stack(high).sum(0) / count).tolist()
    m = compute_metrics(task, torch.cat(preds).numpy(), torch.cat(labels).numpy())
    model.ops_cfg = saved
    return EvalResult(m, k, r, int(ds[0]["input_ids"].shape[0]), h)


@torch.no_grad()
def init_thresholds(model: BertClassifier, ds: Any, quantile: float, n_examples: int = 256) -> None:
    """θ_l ← the ``quantile·(l+1)/L`` quantile of real-token decision scores (unpruned model, the
    model's criterion) on up to ``n_examples`` examples; β_l ← θ_l."""
    model.eval()
    b = ds[: min(n_examples, len(ds))]
    out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], method="none")
    real = b["attention_mask"].float()
    am = real.bool().clone()
    am[:, 0] = False
    L = len(out.scores)
    for l, s in enumerate(out.scores):
        q = quantile * (l + 1) / L
        d = model.pruning.decision_scores(s, real)
        model.pruning.theta.data[l] = float(torch.quantile(d[am].float(), q)) if q > 0 else 0.0
    model.pruning.beta.data.copy_(model.pruning.theta.data)


PHASES = ("base", "continue", "soft", "hard")


def phase_steps(cfg: FinetuneConfig, batches_per_epoch: int, phase: str) -> int:
    """Optimizer steps of ``phase`` (``PHASES``) for ``batches_per_epoch`` batches of training data:
    ``ceil(epochs · batches)`` capped by the phase's max steps; ``continue`` takes as many as a
    candidate's ``soft`` and ``hard`` phases together (the unpruned baseline's extra budget)."""
    if phase == "continue":
        return phase_steps(cfg, batches_per_epoch, "soft") + phase_steps(cfg, batches_per_epoch, "hard")
    epochs = cfg.hard_epochs if phase == "hard" else cfg.epochs
    cap = cfg.hard_max_steps if phase == "hard" else cfg.max_steps
    if epochs <= 0:
        return 0
    total = max(1, math.ceil(epochs * batches_per_epoch))
    return total if cap is None else min(total, cap)


def _optimizer(model: BertClassifier, cfg: FinetuneConfig, phase: str, total: int, learn_beta: bool) -> tuple[Any, Any]:
    """AdamW over the weights (decay on matrices only) and, in the soft phase, θ (and β when
    ``learn_beta``) at ``threshold_lr``; a linear schedule over ``total`` steps (warm-up except in
    the hard phase). Sets which thresholds take gradients."""
    decay = [p for n, p in model.named_parameters() if not n.startswith("pruning.") and p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if not n.startswith("pruning.") and p.ndim <= 1]
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0}]
    model.pruning.theta.requires_grad_(phase == "soft")
    model.pruning.beta.requires_grad_(learn_beta)
    if phase == "soft":
        thresholds = [model.pruning.theta] + ([model.pruning.beta] if learn_beta else [])
        groups.append({"params": thresholds, "weight_decay": 0.0, "lr": cfg.threshold_lr})
    lr = (cfg.hard_lr or cfg.lr) if phase == "hard" else cfg.lr
    opt = torch.optim.AdamW(groups, lr=lr)
    return opt, get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total) if phase != "hard" else 0, total)


def _train_step(model: BertClassifier, b: dict[str, torch.Tensor], opt: Any, sched: Any, cfg: FinetuneConfig,
                phase: str, method: str, learn_beta: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimiser step on batch ``b`` (soft phase: task loss + λ·kept share (+ β penalty on the high
    share)); θ clamped to its criterion's range and β ≥ θ after it. Returns the task loss and the
    batch's mean kept and high shares."""
    model.train()
    out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], method=method,
                mask_mode="soft" if phase == "soft" else "hard", temperature=cfg.temperature,
                straight_through=phase == "hard")
    task_loss = _task_loss(out.logits, b["label"])
    ratio, high = out.keep_ratio.mean(), out.high_ratio.mean()
    loss = task_loss
    if phase == "soft":
        loss = loss + cfg.lambda_ * ratio + (cfg.beta_lambda * high if learn_beta else 0.0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for n, p in model.named_parameters() if not n.startswith("pruning.")], cfg.grad_clip)
    opt.step()
    sched.step()
    with torch.no_grad():
        model.pruning.theta.clamp_(0.0, 1.0 if model.pruning.criterion == "absolute" else None)
        model.pruning.beta.copy_(torch.maximum(model.pruning.beta, model.pruning.theta))
    return task_loss, ratio, high


def _run_phase(
    model: BertClassifier, train_ds: Any, val_ds: Any, task: str, cfg: FinetuneConfig, phase: str,
    log: LogFn | None, step0: int, history: list[dict[str, float]],
) -> tuple[int, EvalResult | None]:
    """One phase of ``PHASES``: ``base`` (no pruning; the best validation checkpoint is restored:
    the epochs are chosen on val), ``continue`` (no pruning), ``soft`` or ``hard``; returns the
    global step and the validation evaluation of the model as the phase leaves it (None when it
    took no step). ``continue`` keeps its last state like a candidate's phases, so that neither
    side of a drop is the best of several validation evaluations."""
    g = torch.Generator().manual_seed(cfg.seed + PHASES.index(phase))
    loader = (DataLoader(train_ds, batch_sampler=LengthBatches(batch_lengths(train_ds), cfg.batch_size, g))
              if cfg.length_buckets else DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, generator=g,
                                                    drop_last=True))
    total = phase_steps(cfg, len(loader), phase)
    if total <= 0:
        return step0, None
    unpruned = phase in ("base", "continue")
    keep_best = phase == "base"
    learn_beta = phase == "soft" and methods.get(cfg.method).reduce
    opt, sched = _optimizer(model, cfg, phase, total, learn_beta)
    method = methods.UNPRUNED if unpruned else cfg.method
    every = cfg.eval_every or len(loader)
    best, best_state, bad, step = -math.inf, None, 0, 0
    best_eval: EvalResult | None = None
    last_eval: EvalResult | None = None
    bar = tqdm(total=total, desc=f"{phase}", disable=not cfg.progress)
    while step < total:
        for raw in loader:
            task_loss, ratio, high = _train_step(model, trimmed(raw, cfg.trim_padding), opt, sched, cfg, phase, method,
                                                 learn_beta)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{task_loss.item():.3f}", keep=f"{ratio.item():.2f}")
            if log is not None and step % 10 == 0:
                log({f"train/{phase}_loss": task_loss.item(), f"train/{phase}_keep_ratio": ratio.item(),
                     f"train/{phase}_high_ratio": high.item()}, step0 + step)
            if step % every == 0 or step == total:
                ev = evaluate(model, val_ds, task, method, cfg.eval_batch_size)
                last_eval = ev
                history.append({"step": float(step0 + step), **ev.flat("val/")})
                if log is not None:
                    log(ev.flat("val/"), step0 + step)
                if ev.metrics["metric"] > best:
                    best, bad = ev.metrics["metric"], 0
                    if keep_best:
                        best_state, best_eval = copy.deepcopy(model.state_dict()), ev
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
    model.pruning.beta.requires_grad_(False)
    return step0 + step, (best_eval if best_state is not None else last_eval)


def finetune(
    model: BertClassifier, train_ds: Any, val_ds: Any, task: str, cfg: FinetuneConfig,
    log_metrics: LogFn | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` in place on tokenised splits; returns the final hard-mask evaluation
    on ``val_ds`` (the validation split, not the reported dev split).

    The unpruned method: plain fine-tuning (best validation checkpoint restored). A method with
    learned thresholds:
    the model's criterion and reduce forms set to ``cfg.criterion`` / ``cfg.reduce_forms``, θ initialised from scores
    (:func:`init_thresholds`), β at ``beta_factor·θ``, soft phase (``cfg.epochs``; β learned too
    for ``prune_reduce``), then the hard straight-through phase (``cfg.hard_epochs``).
    """
    set_seed(cfg.seed)
    model.ops_cfg = OpsConfig(cfg.ops, cfg.fixed_point, cfg.nonlinear)  # type: ignore[arg-type]
    history: list[dict[str, float]] = []
    if not methods.trainable(cfg.method).thresholds:
        _, ev = _run_phase(model, train_ds, val_ds, task, cfg, "base", log_metrics, 0, history)
    else:
        model.pruning.criterion = cfg.criterion
        model.pruning.reduce_forms = cfg.reduce_forms
        init_thresholds(model, train_ds, cfg.theta_quantile)
        with torch.no_grad():
            model.pruning.beta.copy_(model.pruning.theta * max(cfg.beta_factor, 1.0))
        s, soft_ev = _run_phase(model, train_ds, val_ds, task, cfg, "soft", log_metrics, 0, history)
        _, ev = _run_phase(model, train_ds, val_ds, task, cfg, "hard", log_metrics, s, history)
        ev = ev or soft_ev
    ev = ev or evaluate(model, val_ds, task, cfg.method, cfg.eval_batch_size)   # no step taken: evaluate as is
    th = get_thresholds(model, cfg.temperature, cfg.lambda_)
    return FinetuneResult(ev, th, history)


def continue_unpruned(
    model: BertClassifier, train_ds: Any, val_ds: Any, task: str, cfg: FinetuneConfig,
    log_metrics: LogFn | None = None, step0: int = 0,
) -> FinetuneResult:
    """Train the unpruned ``model`` on for a candidate's budget (``cfg`` is the candidates'
    config: ``phase_steps(cfg, ·, "continue")`` steps at ``cfg.lr``, no pruning, its last state
    kept, as a candidate keeps its own); returns its evaluation on ``val_ds``. The baseline every
    pruned candidate is compared with has then trained as many steps as the candidate, and
    neither side's validation metric is the best of several evaluations."""
    set_seed(cfg.seed)
    model.ops_cfg = OpsConfig(cfg.ops, cfg.fixed_point, cfg.nonlinear)  # type: ignore[arg-type]
    history: list[dict[str, float]] = []
    _, ev = _run_phase(model, train_ds, val_ds, task, cfg, "continue", log_metrics, step0, history)
    ev = ev or evaluate(model, val_ds, task, "none", cfg.eval_batch_size)
    return FinetuneResult(ev, get_thresholds(model, cfg.temperature, 0.0), history)
