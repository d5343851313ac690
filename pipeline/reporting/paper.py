"""The CipherPrune paper's numbers (ICLR 2025), as typed constants.

Source: the paper (Table 1, the ablation table, Figure 10 read off the bar chart), its
OpenReview discussion and the authors' repository README (UCF-Lou-Lab-PET/cipher-prune-inference)
for kept tokens. Reports print these beside our runs.
Method keys are our method names (``models.methods``): ``none`` = BOLT w/o WE, ``bolt_we`` = BOLT,
``prune`` = CipherPrune† (pruning only), ``prune_reduce`` = CipherPrune.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Optional

PAPER_MAX_LENGTH = 128
"""Paper Table 1, the ablation and Figure 10 are at 128 tokens, LAN."""

MODEL_LABELS: Mapping[str, str] = MappingProxyType({
    "bert_medium": "BERT-medium",
    "bert_base": "BERT-base",
    "bert_large": "BERT-large",
})
"""Our model config names that the paper evaluates."""
REFERENCE_MODEL = "bert_base"
"""The paper's model whose Table 1 numbers stand beside the rows of a model the paper does not
evaluate (MiniLM-L6, the tiny BERT): the closest reference, labelled as such in the table."""


OPS: tuple[str, ...] = ("Linear", "Softmax", "GELU", "LayerNorm", "Prune", "Reduce")
"""Op classes of the cost breakdown (``Other`` is logged too but not in Figure 10)."""


@dataclass(frozen=True)
class PaperCell:
    """One (model, method) entry of paper Table 1: LAN time, communication, accuracy."""

    time_lan_s: float
    comm_gb: Optional[float]
    acc: Optional[float]


TABLE1: Mapping[tuple[str, str], PaperCell] = MappingProxyType({
    ("bert_medium", "none"): PaperCell(197.1, 27.9, 87.4),
    ("bert_medium", "bolt_we"): PaperCell(99.5, 14.3, 87.2),
    ("bert_medium", "prune_reduce"): PaperCell(43.6, 6.7, 87.4),
    ("bert_base", "none"): PaperCell(484.5, 59.6, 90.3),
    ("bert_base", "bolt_we"): PaperCell(245.4, 25.7, 89.9),
    ("bert_base", "prune"): PaperCell(115.3, None, None),  # CipherPrune† time, from the ablation
    ("bert_base", "prune_reduce"): PaperCell(79.1, 9.7, 90.1),
    ("bert_large", "none"): PaperCell(1279.8, 142.6, 92.6),
    ("bert_large", "bolt_we"): PaperCell(624.3, 67.9, 92.4),
    ("bert_large", "prune_reduce"): PaperCell(157.6, 18.4, 92.5),
})
"""Paper Table 1 (128 tokens, LAN): time s / communication GB / accuracy %."""

IRON: Mapping[str, PaperCell] = MappingProxyType({
    "bert_medium": PaperCell(442.4, 124.5, 87.7),
    "bert_base": PaperCell(1087.8, 281.0, 90.4),
    "bert_large": PaperCell(2873.5, 744.8, 92.7),
})
"""IRON row of paper Table 1 (no counterpart among our methods)."""

ABLATION_ACC: Mapping[str, Mapping[str, float]] = MappingProxyType({
    "none": MappingProxyType({"mnli": 84.75, "qnli": 90.32, "sst2": 91.74, "mrpc": 90.53}),
    "bolt_we": MappingProxyType({"mnli": 84.71, "qnli": 89.94, "sst2": 92.74, "mrpc": 89.95}),
    "prune": MappingProxyType({"mnli": 84.74, "qnli": 90.17, "sst2": 92.75, "mrpc": 90.45}),
    "prune_reduce": MappingProxyType({"mnli": 84.68, "qnli": 90.11, "sst2": 92.66, "mrpc": 90.18}),
})
"""Ablation (BERT-base) accuracy per method and task (MRPC: F1)."""

ABLATION_TIME_S: Mapping[str, float] = MappingProxyType({
    "none": 484.5, "bolt_we": 245.4, "prune": 115.3, "prune_reduce": 79.1,
})
"""Ablation (BERT-base, LAN, 128 tokens) end-to-end time per method."""

KEPT_TOKENS: Mapping[str, tuple[int, ...]] = MappingProxyType({
    "bert_medium": (128, 55, 52, 49, 45, 24, 14, 5),
    "bert_base": (128, 55, 54, 52, 49, 45, 24, 14, 5, 2, 1, 1),
    "bert_large": (128, 55, 55, 55, 55, 55, 54, 43, 39, 35, 28, 21, 16, 10, 3, 3, 2, 2, 2, 1, 1, 1, 1, 1),
})
"""Tokens entering each layer under CipherPrune (authors' README); layer 0 = 128."""

BREAKDOWN_LAN_S: Mapping[str, Mapping[str, float]] = MappingProxyType({
    "none": MappingProxyType({"Linear": 270.0, "Softmax": 58.0, "GELU": 53.0, "LayerNorm": 62.0, "Prune": 0.0}),
    "bolt_we": MappingProxyType({"Linear": 130.0, "Softmax": 22.0, "GELU": 29.0, "LayerNorm": 43.0, "Prune": 2.0}),
    "prune": MappingProxyType({"Linear": 50.0, "Softmax": 9.0, "GELU": 13.0, "LayerNorm": 15.0, "Prune": 2.0}),
    "prune_reduce": MappingProxyType({"Linear": 50.0, "Softmax": 6.0, "GELU": 9.0, "LayerNorm": 11.0, "Prune": 2.0}),
})
"""Figure 10: BERT-base LAN runtime per op class (s, approximate, read off the chart)."""

BREAKDOWN_WAN_TOTAL_MIN: Mapping[str, float] = MappingProxyType({
    "none": 58.0, "bolt_we": 33.0, "prune": 14.0, "prune_reduce": 9.0,
})
"""Figure 10: BERT-base WAN totals (minutes, approximate)."""

SPEEDUP_VS_NONE_BASE = 6.1
"""BERT-base, 128 tokens, LAN: CipherPrune vs BOLT w/o WE (484.5 / 79.1 = 6.13)."""
SPEEDUP_VS_BOLT_BASE = 3.1
"""BERT-base, 128 tokens, LAN: CipherPrune vs BOLT (245.4 / 79.1 = 3.10)."""
SPEEDUP_512 = 10.6
"""Abstract: speed-up over previous methods at 512 tokens."""
GPT2_SPEEDUP: Mapping[int, float] = MappingProxyType({128: 5.3, 512: 8.2})
"""OpenReview rebuttal: CipherPrune on GPT-2 language modelling, speed-up over previous methods per
context length (the rebuttal states no baseline method beyond that, nor accuracy)."""


def table1_cell(model: str, method: str, max_length: int) -> Optional[PaperCell]:
    """The paper's Table 1 entry for our (model, method), None where the paper has none.

    Only 128-token rows have paper numbers; other lengths and models get None.
    """
    if max_length != PAPER_MAX_LENGTH:
        return None
    return TABLE1.get((model, method))


def paper_speedup(model: str, method: str, reference: str, max_length: int) -> Optional[float]:
    """Paper's LAN time of ``reference`` over that of ``method`` (None if either is absent)."""
    num, den = table1_cell(model, reference, max_length), table1_cell(model, method, max_length)
    if num is None or den is None:
        return None
    return num.time_lan_s / den.time_lan_s
