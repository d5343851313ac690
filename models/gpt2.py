"""GPT-2 language model with switchable ops; state-dict names equal Hugging Face
``GPT2LMHeadModel`` (``transformer.wte``, ``transformer.h.{i}.attn.c_attn`` in Conv1D layout
``[in, out]``, ``lm_head.weight`` tied to ``wte``). Token pruning is not implemented for
GPT-2 (the ops are shared with BERT)."""
from __future__ import annotations

import math

import torch
from torch import nn

from models import ops
from models.approx import ATTENTION_MASK_BIAS
from models.config import GPT2Config, OpsConfig


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

    def forward(self, h: torch.Tensor, bias: torch.Tensor, o: OpsConfig) -> torch.Tensor:
        """``h`` ``[B, n, d]``, additive ``bias`` ``[B, 1, n, n]`` (causal + padding) → ``[B, n, d]``."""
        B, n, d = h.shape
        H = self.cfg.heads
        x = ops.layernorm(h, self.ln_1.weight, self.ln_1.bias, self.ln_1.eps, o)
        q, k, v = (t.view(B, n, H, d // H).transpose(1, 2) for t in self.attn.c_attn(x).split(d, dim=-1))
        probs = ops.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // H), o, bias)
        ctx = (self.drop(probs) @ v).transpose(1, 2).reshape(B, n, d)
        h = h + self.drop(self.attn.c_proj(ctx))
        x = ops.layernorm(h, self.ln_2.weight, self.ln_2.bias, self.ln_2.eps, o)
        return h + self.drop(self.mlp.c_proj(ops.gelu(self.mlp.c_fc(x), o, exact_kind="tanh")))


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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``input_ids`` ``[B, n]`` (optional key ``attention_mask`` ``[B, n]``) → logits ``[B, n, V]``."""
        B, n = input_ids.shape
        o, t = self.ops_cfg, self.transformer
        pos = torch.arange(n, device=input_ids.device)[None]
        h = t.drop(t.wte(input_ids) + t.wpe(pos))
        causal = torch.ones(n, n, dtype=torch.bool, device=h.device).tril()
        keep = causal[None, None]
        if attention_mask is not None:
            keep = keep & attention_mask.bool()[:, None, None, :]
        bias = (~keep).float() * ATTENTION_MASK_BIAS
        for blk in t.h:
            h = blk(h, bias, o)
        h = ops.layernorm(h, t.ln_f.weight, t.ln_f.bias, t.ln_f.eps, o)
        return self.lm_head(h)
