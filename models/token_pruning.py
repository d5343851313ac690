"""Token-pruning semantics shared by the BERT classifier and the GPT-2 LM (torch, plaintext).

Pruning follows docs/ARCHITECTURE.md with a "present" mask ``p`` ``[B, n]`` (no physical removal):
layer l's attention keys are masked by ``attention_mask ∧ p`` (and, for GPT-2, causally), the
importance score averages the attention a token receives over heads and over the present real
query rows that can see it (padding rows never count, so padding moves no decision), and
``p ← p ∧ M`` after the attention block.

* BERT: ``S_i = (1/(H·Σ_j a_j p_j)) Σ_h Σ_j a_j p_j A_h[j, i]`` (``a`` the attention mask); [CLS]
  (index 0) is always kept.
* GPT-2 (causal): only rows ``j ≥ i`` see token i, so
  ``S_i = (1/(H·Σ_{j≥i} p_j)) Σ_h Σ_{j≥i} p_j A_h[j, i]``; the last position (index ``n−1``, the
  one whose logits predict the next token) is always kept. Kept tokens keep their order and their
  original position embeddings (added once, before layer 0).

``mask_mode="soft"`` replaces ``M`` by the LTP soft mask ``σ((S − θ_l)/T)`` (accumulated product;
hidden states are multiplied by it) and, for ``prune_reduce``, the high/low choice by
``σ((S − β_l)/T)``: each kept token's GELU (and the next layer's exp) is that mix of the high
and low forms, so β_l learns by gradient too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from models import methods
from models.approx import DEFAULT_REDUCE_FORMS
from models.config import MaskMode


def importance_scores(probs: torch.Tensor, present: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """``S`` ``[B, n]`` from attention ``probs`` ``[B, H, n, n]`` (query rows, key columns) averaged
    over heads and the present query rows (``present`` ``[B, n]``, 0/1 or soft weights) that can
    see each key: all of them, or (``causal``) rows ``j ≥ i``."""
    w = present.to(probs.dtype)
    recv = torch.einsum("bhji,bj->bi", probs, w)
    seen_by = w.flip(1).cumsum(1).flip(1) if causal else w.sum(dim=1, keepdim=True)
    return recv / (probs.shape[1] * seen_by.clamp_min(1e-9))


def hard_prune_mask(scores: torch.Tensor, theta: torch.Tensor | float, attention_mask: torch.Tensor,
                    forced_index: int = 0) -> torch.Tensor:
    """``M = [S > θ] ∧ attention_mask`` ``[B, n]`` bool, ``M[forced_index] = 1`` (strict ``>``: ties prune)."""
    m = (scores > theta) & attention_mask.bool()
    m[:, forced_index] = True
    return m


def reduce_high_mask(scores: torch.Tensor, beta: torch.Tensor | float, kept: torch.Tensor,
                     forced_index: int = 0) -> torch.Tensor:
    """Π_reduce's high group ``[B, n]`` bool: ``[S > β] ∧ kept``, the forced token always high."""
    h = (scores > beta) & kept.bool()
    h[:, forced_index] = True
    return h


def bolt_we_mask(scores: torch.Tensor, forced_index: int = 0) -> torch.Tensor:
    """BOLT word elimination: keep the top ``⌈n/2⌉`` of ``scores`` ``[B, n]`` (the forced token
    first); ties broken by position (stable)."""
    s = scores.detach().clone()
    s[:, forced_index] = math.inf
    order = torch.sort(-s, dim=1, stable=True).indices[:, : math.ceil(s.shape[1] / 2)]
    m = torch.zeros_like(s, dtype=torch.bool)
    return m.scatter(1, order, True)


def soft_prune_mask(scores: torch.Tensor, theta: torch.Tensor, temperature: float, attention_mask: torch.Tensor,
                    forced_index: int = 0) -> torch.Tensor:
    """LTP soft mask ``σ((S − θ)/T) · attention_mask`` ``[B, n]``, the forced token = 1 (also
    Π_reduce's soft high-group weight, with β for θ and the kept mask for ``attention_mask``)."""
    m = torch.sigmoid((scores - theta) / temperature) * attention_mask.to(scores.dtype)
    forced = torch.zeros_like(m, dtype=torch.bool)
    forced[:, forced_index] = True
    return torch.where(forced, torch.ones_like(m), m)


class Thresholds(nn.Module):
    """Per-layer pruning thresholds ``theta`` (learnable) and reduce thresholds ``beta`` (learnable
    when training switches it on: ``prune_reduce``'s soft phase), ``[L]``, the ``criterion``
    they compare with and Π_reduce's low-group forms ``reduce_forms`` (a key of
    ``models.approx.REDUCE_FORMS``)."""

    def __init__(self, layers: int, criterion: str = "absolute", reduce_forms: str = DEFAULT_REDUCE_FORMS) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(layers))
        self.beta = nn.Parameter(torch.zeros(layers), requires_grad=False)
        self.criterion = criterion
        self.reduce_forms = reduce_forms

    def decision_scores(self, scores: torch.Tensor, entering: torch.Tensor) -> torch.Tensor:
        """What θ/β compare with: ``S`` (absolute) or ``c·S`` (relative), ``entering`` ``[B, n]`` the
        present real tokens (``c = Σ entering``, no gradient: a count)."""
        if self.criterion == "absolute":
            return scores
        return scores * entering.detach().sum(dim=1, keepdim=True)


@dataclass
class LayerDecision:
    """One layer's pruning outcome: ``present`` ``[B, n]`` after it, the rows ``low`` ``[B, n]``
    (bool, or soft weights) that use Π_reduce's low forms in this layer's GELU and the next
    layer's exp (``None``: none), and the high group's share of the kept real tokens (scalar)."""

    present: torch.Tensor
    low: torch.Tensor | None
    high_share: torch.Tensor


@dataclass(frozen=True)
class PruneSettings:
    """How a forward pass prunes: ``method``, ``mask_mode`` (``hard``: inference semantics, with
    ``straight_through`` gradients through the soft mask; ``soft``: LTP training mask at
    ``temperature``) and the always-kept ``forced_index`` (0: BERT's [CLS]; −1: GPT-2's last)."""

    method: str = "none"
    mask_mode: MaskMode = "hard"
    temperature: float = 1e-3
    straight_through: bool = False
    forced_index: int = 0

    def __post_init__(self) -> None:
        methods.get(self.method)          # ValueError naming an unknown method

    @property
    def masks_hidden(self) -> bool:
        """Whether the hidden states are multiplied by ``present`` (a learned method's soft or
        straight-through mask: the gradient reaches θ through it)."""
        return methods.get(self.method).thresholds and (self.mask_mode == "soft" or self.straight_through)


def decide(layer: int, scores: torch.Tensor, present: torch.Tensor, attention_mask: torch.Tensor,
           thresholds: Thresholds, p: PruneSettings) -> LayerDecision:
    """Apply layer ``layer``'s pruning to ``present`` ``[B, n]`` given its importance ``scores``
    ``[B, n]`` and the real tokens ``attention_mask`` ``[B, n]`` (float): the method's
    ``torch_decide`` (``models.methods``)."""
    return methods.get(p.method).torch_decision()(layer, scores, present, attention_mask, thresholds, p)


def keep_all(layer: int, scores: torch.Tensor, present: torch.Tensor, attention_mask: torch.Tensor,
             thresholds: Thresholds, p: PruneSettings) -> LayerDecision:
    """``none``: every present token stays, no low group."""
    return LayerDecision(present, None, torch.zeros((), device=scores.device))


def bolt_we_decide(layer: int, scores: torch.Tensor, present: torch.Tensor, attention_mask: torch.Tensor,
                   thresholds: Thresholds, p: PruneSettings) -> LayerDecision:
    """``bolt_we``: the top ``⌈n/2⌉`` by ``S`` after layer 0 (``bolt_we_mask``), no pruning later."""
    kept = present * bolt_we_mask(scores, p.forced_index).float() if layer == 0 else present
    return LayerDecision(kept, None, torch.zeros((), device=scores.device))


def threshold_decide(layer: int, scores: torch.Tensor, present: torch.Tensor, attention_mask: torch.Tensor,
                     thresholds: Thresholds, p: PruneSettings) -> LayerDecision:
    """``prune``: ``M = [D > θ_l]`` (soft: the LTP mask; hard with ``straight_through``: the hard
    forward, gradients through the soft mask)."""
    d = thresholds.decision_scores(scores, attention_mask * present)
    return LayerDecision(_thresholded(d, present, attention_mask, thresholds.theta[layer], p)[0], None,
                         torch.zeros((), device=scores.device))


def threshold_reduce_decide(layer: int, scores: torch.Tensor, present: torch.Tensor, attention_mask: torch.Tensor,
                            thresholds: Thresholds, p: PruneSettings) -> LayerDecision:
    """``prune_reduce``: Π_prune as ``threshold_decide``, then Π_reduce's high group ``[D > β_l]``
    among the kept (soft: the weight ``σ((D − β)/T)`` mixes the high and low forms, so β learns)."""
    am, f = attention_mask, p.forced_index
    d = thresholds.decision_scores(scores, am * present)
    present, hard = _thresholded(d, present, am, thresholds.theta[layer], p)
    beta = thresholds.beta[layer]
    if p.mask_mode == "soft":
        weight = soft_prune_mask(d, beta, p.temperature, present, f)
        return LayerDecision(present, 1.0 - weight, share(weight * present * am, present * am))
    high = reduce_high_mask(d.detach(), beta.detach(), hard, f)
    return LayerDecision(present, hard.bool() & ~high, share(high.float() * am, hard * am))


def _thresholded(d: torch.Tensor, present: torch.Tensor, am: torch.Tensor, theta: torch.Tensor,
                 p: PruneSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Π_prune on the decision scores ``d`` ``[B, n]``: the new ``present`` (soft, hard, or hard
    with straight-through gradients) and the hard mask (``present`` itself when soft)."""
    f = p.forced_index
    if p.mask_mode == "soft":
        soft = present * soft_prune_mask(d, theta, p.temperature, am, f)
        return soft, soft
    hard = hard_prune_mask(d.detach(), theta.detach(), am * present, f).float() * present.detach()
    if not p.straight_through:
        return hard, hard
    soft = present * soft_prune_mask(d, theta, p.temperature, am, f)
    return hard + (soft - soft.detach()), hard


def share(part: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``Σ_i part / Σ_i whole`` (``[B, n]`` each) → scalar."""
    return (part.sum(dim=1) / whole.sum(dim=1).clamp_min(1e-9)).mean()
