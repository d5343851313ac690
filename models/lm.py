"""Causal language modelling with :class:`models.gpt2.GPT2LM`: WikiText-2 loading, GPT-2
tokenisation into fixed blocks, a short training loop and perplexity.

Blocks are non-overlapping windows of ``block_size`` consecutive token ids of a split's
concatenated text (``[N, block_size]`` int64); within a block every position after the
first is predicted from the ones before it, so a split of ``N`` blocks scores
``N·(block_size-1)`` tokens. ``perplexity = exp(mean token NLL)`` over those tokens.
No Hydra/MLflow here; the pipeline maps its config onto :class:`LMTrainConfig`.
"""
from __future__ import annotations

import gzip
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from models.config import GPT2Config, OpsConfig
from models.training import set_seed

LogFn = Callable[[dict[str, float], int], None]

#: pipeline split name → WikiText file stem (``wiki.<stem>.raw`` / ``<stem>.raw[.gz]``)
WIKITEXT_SPLITS: dict[str, str] = {"train": "train", "dev": "valid", "test": "test"}
_HUB_SPLITS: dict[str, str] = {"train": "train", "dev": "validation", "test": "test"}


def _find_split_file(d: Path, stem: str) -> Path:
    for name in (f"{stem}.raw", f"{stem}.raw.gz", f"wiki.{stem}.raw", f"wiki.{stem}.raw.gz",
                 f"{stem}.txt", f"wiki.{stem}.tokens"):
        if (d / name).is_file():
            return d / name
    raise FileNotFoundError(
        f"WikiText-2 split {stem!r} not found in {d} (expected {stem}.raw, {stem}.raw.gz or "
        f"wiki.{stem}.raw); fetch the raw files with `make lm-data` or set data.wikitext_dir=null "
        "to load wikitext-2-raw-v1 from the Hugging Face hub")


def load_wikitext2(data_dir: str | Path | None, splits: tuple[str, ...] = ("train", "dev", "test")) -> dict[str, str]:
    """Raw text of each split (``train``/``dev``/``test``) as one string.

    ``data_dir``: a folder with ``train.raw``/``valid.raw``/``test.raw`` (``.gz`` or the
    ``wiki.*.raw`` names of the original archive); ``None`` loads
    ``datasets.load_dataset("wikitext", "wikitext-2-raw-v1")`` (needs the hub).
    """
    for s in splits:
        if s not in WIKITEXT_SPLITS:
            raise ValueError(f"unknown WikiText split {s!r}; expected one of {sorted(WIKITEXT_SPLITS)}")
    if data_dir is None:
        import datasets
        ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1")
        return {s: "".join(ds[_HUB_SPLITS[s]]["text"]) for s in splits}
    d = Path(data_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"WikiText-2 directory {d} does not exist; run `make lm-data` "
                                "(writes outputs/assets/wikitext-2) or set data.wikitext_dir=null for the hub")
    out: dict[str, str] = {}
    for s in splits:
        f = _find_split_file(d, WIKITEXT_SPLITS[s])
        raw = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
        out[s] = raw.decode("utf-8")
    return out


def tokenize_text(text: str, tokenizer: Any, lines_per_batch: int = 2048) -> np.ndarray:
    """Token ids ``[T]`` (int64) of ``text`` with a HF tokenizer, encoded line by line (each
    line keeps its newline, so the concatenation is the text's encoding up to line joins)."""
    lines = text.splitlines(keepends=True)
    parts: list[np.ndarray] = []
    for i in range(0, len(lines), lines_per_batch):
        enc = tokenizer(lines[i:i + lines_per_batch], add_special_tokens=False)["input_ids"]
        parts.extend(np.asarray(e, dtype=np.int64) for e in enc if e)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def chunk_blocks(ids: np.ndarray | torch.Tensor, block_size: int, max_blocks: int | None = None) -> torch.Tensor:
    """``ids`` ``[T]`` → ``[N, block_size]`` with ``N = T // block_size`` (the tail is dropped),
    optionally the first ``max_blocks`` blocks only."""
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}")
    t = torch.as_tensor(np.asarray(ids), dtype=torch.long).reshape(-1)
    n = t.numel() // block_size
    if max_blocks is not None:
        n = min(n, int(max_blocks))
    return t[: n * block_size].view(n, block_size).clone()


def load_lm_blocks(
    data_dir: str | Path | None, tokenizer: Any, block_size: int,
    max_blocks: dict[str, int | None] | None = None, splits: tuple[str, ...] = ("train", "dev", "test"),
) -> dict[str, torch.Tensor]:
    """WikiText-2 split → ``[N, block_size]`` blocks of GPT-2 token ids (see module doc)."""
    texts = load_wikitext2(data_dir, splits)
    lim = max_blocks or {}
    return {s: chunk_blocks(tokenize_text(t, tokenizer), block_size, lim.get(s)) for s, t in texts.items()}


def lm_loss(model: nn.Module, blocks: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy of ``blocks`` ``[B, n]``: logits ``[B, n-1, V]`` vs ids ``[B, n-1]``."""
    logits = model(blocks[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), blocks[:, 1:].reshape(-1),
                           reduction=reduction)


@torch.no_grad()
def perplexity(
    model: nn.Module, blocks: torch.Tensor, batch_size: int = 16, ops_mode: str | None = None,
    progress: bool = False,
) -> float:
    """``exp(mean token NLL)`` over ``blocks`` ``[N, n]`` (``N·(n-1)`` predicted tokens).

    ``ops_mode`` (``exact``/``emulated``) temporarily overrides the model's ``ops_cfg``."""
    if blocks.numel() == 0:
        raise ValueError("perplexity of an empty split")
    was_training, old_ops = model.training, getattr(model, "ops_cfg", None)
    if ops_mode is not None:
        model.ops_cfg = OpsConfig(mode=ops_mode)  # type: ignore[arg-type]
    model.eval()
    try:
        total, count = 0.0, 0
        it = range(0, blocks.shape[0], batch_size)
        for i in tqdm(it, desc="perplexity", disable=not progress, leave=False):
            b = blocks[i:i + batch_size]
            total += float(lm_loss(model, b, reduction="sum"))
            count += b.shape[0] * (b.shape[1] - 1)
    finally:
        if ops_mode is not None:
            model.ops_cfg = old_ops
        model.train(was_training)
    return math.exp(total / count)


@dataclass
class LMTrainConfig:
    """Causal-LM training hyper-parameters. ``steps`` optimizer steps of ``batch_size`` blocks
    (blocks are reshuffled every pass), AdamW with linear warm-up over ``warmup_ratio·steps``
    then linear decay; ``max_minutes`` stops early on wall time; ``ops`` exact or
    emulated (the polynomial non-linears of ``models.approx``) while training;
    ``eval_every`` steps the dev perplexity over at most ``eval_blocks`` blocks is logged."""

    steps: int = 200
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    grad_clip: float = 1.0
    ops: str = "exact"
    seed: int = 0
    max_minutes: float | None = None
    eval_every: int | None = None
    eval_blocks: int | None = 64  # None: all dev blocks
    log_every: int = 10


@dataclass
class LMTrainResult:
    """Outcome of :func:`train_lm`: steps taken, wall seconds, the loss curve (``(step, mean
    train loss since the previous log)``) and the dev perplexities logged on the way."""

    steps: int
    seconds: float
    losses: list[tuple[int, float]] = field(default_factory=list)
    dev_perplexity: list[tuple[int, float]] = field(default_factory=list)


def new_gpt2(cfg: GPT2Config, seed: int = 0) -> nn.Module:
    """A randomly initialised :class:`models.gpt2.GPT2LM` (GPT-2's 0.02 init)."""
    from models.gpt2 import GPT2LM
    set_seed(seed)
    return GPT2LM(cfg)


def train_lm(
    model: nn.Module, train_blocks: torch.Tensor, cfg: LMTrainConfig,
    dev_blocks: torch.Tensor | None = None, log: LogFn | None = None,
) -> LMTrainResult:
    """Train ``model`` on ``train_blocks`` ``[N, n]`` with next-token cross-entropy (in place).

    ``log(metrics, step)`` receives ``train/loss``, ``train/lr`` and, every ``eval_every``
    steps and at the end, ``dev/perplexity`` (over the first ``eval_blocks`` dev blocks)."""
    if train_blocks.shape[0] == 0:
        raise ValueError("no training blocks (is the train split shorter than one block?)")
    set_seed(cfg.seed)
    model.ops_cfg = OpsConfig(mode=cfg.ops)  # type: ignore[arg-type,assignment]
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    sched = get_linear_schedule_with_warmup(opt, max(1, int(cfg.warmup_ratio * cfg.steps)), cfg.steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    order, pos = torch.randperm(train_blocks.shape[0], generator=gen), 0
    res, t0, acc, nacc = LMTrainResult(0, 0.0), time.time(), 0.0, 0
    emit = log or (lambda m, s: None)

    def dev_eval(step: int) -> None:
        if dev_blocks is not None and dev_blocks.shape[0]:
            ppl = perplexity(model, dev_blocks[: cfg.eval_blocks], batch_size=cfg.batch_size)
            res.dev_perplexity.append((step, ppl))
            emit({"dev/perplexity": ppl}, step)

    model.train()
    bar = tqdm(range(cfg.steps), desc="train LM")
    for step in bar:
        if pos + cfg.batch_size > order.numel():
            order, pos = torch.randperm(train_blocks.shape[0], generator=gen), 0
        batch = train_blocks[order[pos:pos + cfg.batch_size]]
        pos += cfg.batch_size
        loss = lm_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        acc, nacc, res.steps = acc + loss.item(), nacc + 1, step + 1
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if res.steps % cfg.log_every == 0 or res.steps == cfg.steps:
            res.losses.append((res.steps, acc / nacc))
            emit({"train/loss": acc / nacc, "train/lr": sched.get_last_lr()[0]}, res.steps)
            acc, nacc = 0.0, 0
        if cfg.eval_every and res.steps % cfg.eval_every == 0 and res.steps < cfg.steps:
            dev_eval(res.steps)
        if cfg.max_minutes is not None and time.time() - t0 > 60 * cfg.max_minutes:
            break
    bar.close()
    if nacc:
        res.losses.append((res.steps, acc / nacc))
        emit({"train/loss": acc / nacc}, res.steps)
    res.seconds = time.time() - t0
    dev_eval(res.steps)
    model.eval()
    return res
