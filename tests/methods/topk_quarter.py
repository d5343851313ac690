"""A toy pruning method in one module: after every layer keep the top ``⌈c/4⌉`` of the ``c`` tokens
present, by importance score, obliviously (``protocols.topk``: a bitonic half-sorter, the forced token
first), in their original order. Nothing is learned; the count kept is public (``⌈c/4⌉`` of a public
``c``), so it reveals nothing. ``SPEC`` registers it (``models.methods.register``)."""
from __future__ import annotations

import math

import torch

from models.methods import MethodSpec
from models.token_pruning import LayerDecision, PruneSettings, Thresholds
from protocols import batch as bt
from protocols.batch import Layout
from protocols.method_steps import PruneStep, select

FRACTION = 0.25


def kept_count(present: int) -> int:
    """Tokens kept of ``present`` (at least the forced one)."""
    return max(1, math.ceil(present * FRACTION))


def torch_decide(layer: int, scores: torch.Tensor, present: torch.Tensor, attention_mask: torch.Tensor,
                 thresholds: Thresholds, p: PruneSettings) -> LayerDecision:
    """Keep the top ``kept_count(Σ present)`` present tokens of each input ``[B, n]`` (forced first, ties to
    the lower index)."""
    s = scores.detach().masked_fill(present <= 0, -math.inf)
    s[:, p.forced_index] = math.inf
    kept = torch.zeros_like(present)
    for b in range(s.shape[0]):
        top = torch.sort(-s[b], stable=True).indices[: kept_count(int(present[b].sum()))]
        kept[b, top] = 1.0
    return LayerDecision(present * kept, None, torch.zeros((), device=scores.device))


def secure_step(step: PruneStep) -> Layout:
    """The same selection on the session's rows: scores, the oblivious top-k, compaction."""
    step.scores(op="Prune")
    keep = tuple(kept_count(n) for n in step.layout.sizes)
    select(step, bt.bolt_we_select, ["h", "S", "valid"], op="Prune",
           static={"layout": step.layout, "keep": keep, "causal": step.causal})
    step.s.delete("S")
    return Layout(keep)


SPEC = MethodSpec("topk_quarter", "Top quarter", "#8172b3", "nothing beyond the final logits (counts are public)",
                  torch_decide=f"{__name__}:torch_decide", secure_step=f"{__name__}:secure_step",
                  reference=False, sizes="schedule", programs=("bolt_we",))
