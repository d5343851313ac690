"""BERT classifier with switchable ops and encrypted-token-pruning semantics.

State-dict names and shapes equal Hugging Face ``BertForSequenceClassification``
(``bert.embeddings...``, ``bert.encoder.layer.{i}...``, ``bert.pooler.dense``,
``classifier``); the learnable per-layer thresholds live outside those names as
``pruning.theta`` / ``pruning.beta`` (shape ``[L]``).

Pruning semantics (present mask, importance scores, hard/soft masks, [CLS] always kept, the
absolute and relative criteria) are ``models.token_pruning``'s, shared with the GPT-2 LM.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from models import ops
from models.approx import DEFAULT_REDUCE_FORMS, REDUCE_FORMS, ReduceForms
from models.config import BertConfig, MaskMode, OpsConfig, check_input_ids
from models.token_pruning import PruneSettings, Thresholds, decide, importance_scores, share


@dataclass
class PruneOutput:
    """Model output.

    ``logits``: ``[B, num_labels]``. ``kept_tokens``: ``[B, L]`` float, ``k_l`` = tokens
    present after layer l's prune (they run layer l's FFN and enter layer l+1; layer 0
    receives the padded length ``n_0``); for soft masks it is the soft count.
    ``keep_ratio``: ``[L]`` mean over the batch of ``Σ_i p_i·a_i / Σ_i a_i`` (``a`` = attention
    mask; differentiable in soft mode). ``scores``: per-layer ``[B, n]`` importance scores ``S``.
    ``high_ratio``: ``[L]`` mean over the batch of the high group's share of the kept real tokens
    (``prune_reduce``; soft weights in soft mode, differentiable in β; zeros otherwise).
    ``present``: per layer ``[B, n]``, which positions are present after layer l's prune (0/1 for
    hard masks). ``low``: per layer ``[B, n]``, the kept positions in Π_reduce's low group
    (bool for hard masks, soft weights in soft mode; ``None`` where no token is reduced).
    """

    logits: torch.Tensor
    kept_tokens: torch.Tensor
    keep_ratio: torch.Tensor
    scores: list[torch.Tensor]
    high_ratio: torch.Tensor
    present: list[torch.Tensor]
    low: list[torch.Tensor | None]


# ----------------------------------------------------------------------------- modules
class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm (HF names)."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab, cfg.hidden)
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, ids: torch.Tensor, tt: torch.Tensor, o: OpsConfig) -> torch.Tensor:
        """``ids``, ``tt`` ``[B, n]`` → ``[B, n, d]``."""
        pos = torch.arange(ids.shape[1], device=ids.device)[None]
        h = self.word_embeddings(ids) + self.position_embeddings(pos) + self.token_type_embeddings(tt)
        ln = self.LayerNorm
        return self.dropout(ops.layernorm(h, ln.weight, ln.bias, ln.eps, o))


class _SelfAttn(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.query = nn.Linear(cfg.hidden, cfg.hidden)
        self.key = nn.Linear(cfg.hidden, cfg.hidden)
        self.value = nn.Linear(cfg.hidden, cfg.hidden)


class _DenseLN(nn.Module):
    def __init__(self, d_in: int, d_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)


class _Attention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = _SelfAttn(cfg)
        self.output = _DenseLN(cfg.hidden, cfg.hidden, cfg.layer_norm_eps)


class _Dense(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)


class BertLayer(nn.Module):
    """One encoder layer split in the attention block and the FFN (pruning sits between)."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.attention = _Attention(cfg)
        self.intermediate = _Dense(cfg.hidden, cfg.intermediate)
        self.output = _DenseLN(cfg.intermediate, cfg.hidden, cfg.layer_norm_eps)
        self.drop_attn = nn.Dropout(cfg.attention_dropout)
        self.drop = nn.Dropout(cfg.hidden_dropout)

    def attn_block(
        self, h: torch.Tensor, bias: torch.Tensor, o: OpsConfig, low_rows: torch.Tensor | None = None,
        forms: ReduceForms = REDUCE_FORMS[DEFAULT_REDUCE_FORMS],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``h`` ``[B, n, d]``, key ``bias`` ``[B, 1, 1, n]`` → ``(LN(h + Attn(h)), probs [B, H, n, n])``;
        query rows ``low_rows`` ``[B, n]`` use the low exp of ``forms``."""
        B, n, d = h.shape
        H = self.cfg.heads
        sa = self.attention.self

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(B, n, H, d // H).transpose(1, 2)

        q, k, v = split(sa.query(h)), split(sa.key(h)), split(sa.value(h))
        probs = ops.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // H), o, bias, low_rows, forms)
        ctx = (self.drop_attn(probs) @ v).transpose(1, 2).reshape(B, n, d)
        out = self.attention.output
        y = h + self.drop(out.dense(ctx))
        return ops.layernorm(y, out.LayerNorm.weight, out.LayerNorm.bias, out.LayerNorm.eps, o), probs

    def ffn(self, h: torch.Tensor, o: OpsConfig, low_rows: torch.Tensor | None = None,
            forms: ReduceForms = REDUCE_FORMS[DEFAULT_REDUCE_FORMS]) -> torch.Tensor:
        """``LN(h + W2 GELU(W1 h))`` on ``[B, n, d]``; ``low_rows`` ``[B, n]`` use the low GELU of ``forms``."""
        a = ops.gelu(self.intermediate.dense(h), o, low_rows, forms=forms)
        y = h + self.drop(self.output.dense(a))
        ln = self.output.LayerNorm
        return ops.layernorm(y, ln.weight, ln.bias, ln.eps, o)


class _Encoder(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.layers))


class _Pooler(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden, cfg.hidden)


class _Bert(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = _Encoder(cfg)
        self.pooler = _Pooler(cfg)


class BertClassifier(nn.Module):
    """``BertForSequenceClassification``-compatible classifier with token pruning.

    ``ops_cfg`` selects exact/emulated non-linears (mutable attribute ``ops_cfg``).
    """

    def __init__(self, cfg: BertConfig, ops_cfg: OpsConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.ops_cfg = ops_cfg or OpsConfig()
        self.bert = _Bert(cfg)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.classifier = nn.Linear(cfg.hidden, cfg.num_labels)
        self.pruning = Thresholds(cfg.layers)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict restricted to the Hugging Face names (no ``pruning.*``)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("pruning.")}

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        method: str = "none",
        mask_mode: MaskMode = "hard",
        temperature: float = 1e-3,
        straight_through: bool = False,
    ) -> PruneOutput:
        """``input_ids`` ``[B, n]`` → :class:`PruneOutput`.

        ``method``: a registered method's name (``models.methods``). ``mask_mode``: ``hard`` (exact
        inference semantics; with ``straight_through`` the forward is hard and gradients flow
        through the soft mask) or ``soft`` (LTP training mask with ``temperature``).
        """
        check_input_ids(input_ids, self.cfg.vocab_size, self.cfg.max_positions)
        o = self.ops_cfg
        B, n = input_ids.shape
        am = torch.ones(B, n, device=input_ids.device) if attention_mask is None else attention_mask.float()
        tt = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        h = self.bert.embeddings(input_ids, tt, o)
        present = torch.ones(B, n, device=h.device)
        settings = PruneSettings(method, mask_mode, temperature, straight_through, forced_index=0)
        exp_low: torch.Tensor | None = None
        kept, ratios, highs, all_scores, masks, lows = [], [], [], [], [], []
        forms = REDUCE_FORMS[self.pruning.reduce_forms]
        for l, layer in enumerate(self.bert.encoder.layer):
            h, probs = layer.attn_block(h, ops.mask_bias(am * present), o, exp_low, forms)
            s = importance_scores(probs, am * present)     # over the real query rows: padding moves no score
            all_scores.append(s)
            decision = decide(l, s, present, am, self.pruning, settings)
            present = decision.present
            if settings.masks_hidden:
                h = h * present.unsqueeze(-1)
            exp_low = decision.low
            masks.append(present)
            lows.append(decision.low)
            kept.append(present.sum(dim=1))
            ratios.append(share(present * am, am))
            highs.append(decision.high_share)
            h = layer.ffn(h, o, decision.low, forms)
        pooled = torch.tanh(self.bert.pooler.dense(h[:, 0]))
        logits = self.classifier(self.dropout(pooled))
        return PruneOutput(logits, torch.stack(kept, 1), torch.stack(ratios), all_scores, torch.stack(highs), masks, lows)

