"""GPT-2 language model with switchable ops; state-dict names equal Hugging Face
``GPT2LMHeadModel`` (``transformer.wte``, ``transformer.h.{i}.attn.c_attn`` in Conv1D layout
``[in, out]``, ``lm_head.weight`` tied to ``wte``); the per-layer thresholds live outside those
names as ``pruning.theta`` / ``pruning.beta`` ``[L]``.

Token pruning (``GPT2LM.pruned``) follows ``models.token_pruning`` for a causal model: the
importance of context token i averages the attention it receives over heads and over the query
rows that can see it (``j ≥ i``), the last position is always kept (its logits predict the next
token), kept tokens keep their order and the position embeddings they got before layer 0.
Only the ``absolute`` criterion is defined (a causal score's uniform-attention value depends on
the position, not only on n): thresholds are learned at the context length they are used at."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from models import ops
from models.approx import ATTENTION_MASK_BIAS, DEFAULT_REDUCE_FORMS, REDUCE_FORMS, ReduceForms
from models.config import GPT2Config, OpsConfig, check_input_ids
from models.token_pruning import PruneSettings, Thresholds, decide, importance_scores, share

# GPT-2 always keeps its last position (the one predicting the next token).
LAST = -1


@dataclass
class LMPruneOutput:
    """``logits`` ``[B, V]`` of the last position; ``kept_tokens`` ``[B, L]`` (tokens present after
    layer l's pruning, soft counts in soft mode); ``keep_ratio`` and ``high_ratio`` ``[L]`` (batch
    means of the kept share and of the high group's share of the kept tokens); ``scores``: per
    layer the causal importance ``[B, n]`` (``models.token_pruning.importance_scores``)."""

    logits: torch.Tensor
    kept_tokens: torch.Tensor
    keep_ratio: torch.Tensor
    high_ratio: torch.Tensor
    scores: list[torch.Tensor]


class Conv1D(nn.Module):
    """HF Conv1D: ``y = x @ weight + bias`` with ``weight`` ``[in, out]``."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_in, d_out) * 0.02)
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., in]`` → ``[..., out]``."""
        return x @ self.weight + self.bias


class _Attn(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.c_attn = Conv1D(cfg.hidden, 3 * cfg.hidden)
        self.c_proj = Conv1D(cfg.hidden, cfg.hidden)


class _MLP(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.c_fc = Conv1D(cfg.hidden, cfg.intermediate)
        self.c_proj = Conv1D(cfg.intermediate, cfg.hidden)


class GPT2Block(nn.Module):
    """Pre-LN block: ``h + Attn(LN(h))``, then ``h + MLP(LN(h))``."""

    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.ln_1 = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.attn = _Attn(cfg)
        self.ln_2 = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.mlp = _MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def attn_block(self, h: torch.Tensor, bias: torch.Tensor, o: OpsConfig, low_rows: torch.Tensor | None = None,
                   forms: ReduceForms = REDUCE_FORMS[DEFAULT_REDUCE_FORMS]) -> tuple[torch.Tensor, torch.Tensor]:
        """``h`` ``[B, n, d]``, additive ``bias`` ``[B, 1, n, n]`` (causal + padding) →
        ``(h + Attn(LN(h)), probs [B, H, n, n])``; query rows ``low_rows`` ``[B, n]`` use the low exp
        of ``forms``."""
        B, n, d = h.shape
        H = self.cfg.heads
        x = ops.layernorm(h, self.ln_1.weight, self.ln_1.bias, self.ln_1.eps, o)
        q, k, v = (t.view(B, n, H, d // H).transpose(1, 2) for t in self.attn.c_attn(x).split(d, dim=-1))
        probs = ops.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // H), o, bias, low_rows, forms)
        ctx = (self.drop(probs) @ v).transpose(1, 2).reshape(B, n, d)
        return h + self.drop(self.attn.c_proj(ctx)), probs

    def ffn(self, h: torch.Tensor, o: OpsConfig, low_rows: torch.Tensor | None = None,
            forms: ReduceForms = REDUCE_FORMS[DEFAULT_REDUCE_FORMS]) -> torch.Tensor:
        """``h + W2 GELU(W1 LN(h))`` on ``[B, n, d]``; ``low_rows`` ``[B, n]`` use the low GELU of ``forms``."""
        x = ops.layernorm(h, self.ln_2.weight, self.ln_2.bias, self.ln_2.eps, o)
        a = ops.gelu(self.mlp.c_fc(x), o, low_rows, exact_kind="tanh", forms=forms)
        return h + self.drop(self.mlp.c_proj(a))


class _Transformer(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.wpe = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(GPT2Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)


class GPT2LM(nn.Module):
    """``GPT2LMHeadModel``-compatible LM; ``ops_cfg`` selects exact/emulated non-linears."""

    def __init__(self, cfg: GPT2Config, ops_cfg: OpsConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.ops_cfg = ops_cfg or OpsConfig()
        self.transformer = _Transformer(cfg)
        self.lm_head = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)
        nn.init.normal_(self.transformer.wte.weight, std=0.02)
        nn.init.normal_(self.transformer.wpe.weight, std=0.01)
        self.lm_head.weight = self.transformer.wte.weight
        self.pruning = Thresholds(cfg.layers)

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        check_input_ids(input_ids, self.cfg.vocab_size, self.cfg.max_positions)
        t = self.transformer
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        return t.drop(t.wte(input_ids) + t.wpe(pos))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unpruned: ``input_ids`` ``[B, n]`` (optional key ``attention_mask`` ``[B, n]``) → logits ``[B, n, V]``."""
        B, n = input_ids.shape
        o, t = self.ops_cfg, self.transformer
        h = self._embed(input_ids)
        keep = _causal(n, h.device)[None, None]
        if attention_mask is not None:
            keep = keep & attention_mask.bool()[:, None, None, :]
        bias = (~keep).float() * ATTENTION_MASK_BIAS
        for blk in t.h:
            h, _ = blk.attn_block(h, bias, o)
            h = blk.ffn(h, o)
        h = ops.layernorm(h, t.ln_f.weight, t.ln_f.bias, t.ln_f.eps, o)
        return self.lm_head(h)

    def pruned(self, input_ids: torch.Tensor, settings: PruneSettings) -> LMPruneOutput:
        """Next-token logits of the last position of ``input_ids`` ``[B, n]`` (a context without
        padding) with token pruning ``settings`` (``forced_index`` is the last position whatever it
        says) → :class:`LMPruneOutput`. Pruned tokens leave the keys of later layers (their rows
        keep computing in this masked emulation but reach nothing)."""
        if self.pruning.criterion != "absolute":
            raise ValueError(f"GPT-2 pruning: criterion={self.pruning.criterion!r} is not defined for causal "
                             "models; expected 'absolute' (learn θ at the context length it is used at)")
        p = PruneSettings(settings.method, settings.mask_mode, settings.temperature, settings.straight_through, LAST)
        B, n = input_ids.shape
        o, t = self.ops_cfg, self.transformer
        forms = REDUCE_FORMS[self.pruning.reduce_forms]
        h = self._embed(input_ids)
        causal = _causal(n, h.device)[None, None].float()
        am = torch.ones(B, n, device=h.device)
        present = torch.ones(B, n, device=h.device)
        exp_low: torch.Tensor | None = None
        kept, ratios, highs, scores = [], [], [], []
        for l, blk in enumerate(t.h):
            bias = (1.0 - causal * present[:, None, None, :]) * ATTENTION_MASK_BIAS
            h, probs = blk.attn_block(h, bias, o, exp_low, forms)
            scores.append(importance_scores(probs, present, causal=True))
            decision = decide(l, scores[-1], present, am, self.pruning, p)
            present = decision.present
            if p.masks_hidden:
                h = h * present.unsqueeze(-1)
            exp_low = decision.low
            kept.append(present.sum(dim=1))
            ratios.append(share(present, am))
            highs.append(decision.high_share)
            h = blk.ffn(h, o, decision.low, forms)
        last = ops.layernorm(h[:, -1], t.ln_f.weight, t.ln_f.bias, t.ln_f.eps, o)
        return LMPruneOutput(self.lm_head(last), torch.stack(kept, 1), torch.stack(ratios), torch.stack(highs), scores)


def _causal(n: int, device: torch.device) -> torch.Tensor:
    """``[n, n]`` bool, query row j sees key i ≤ j."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()
