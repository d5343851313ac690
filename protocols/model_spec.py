"""Model and pruning specifications for the JAX/SPU transformer (frozen, validated).

``TransformerSpec`` mirrors ``models.config.BertConfig`` / ``GPT2Config`` without importing
torch; ``PruningSpec`` carries the per-layer thresholds of ``thresholds.json``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

from models import methods
from models.approx import DEFAULT_FAMILY, DEFAULT_REDUCE_FORMS, LAYERNORM_EPS, family_of
from models.config import hf_shape
from models.thresholds import CRITERIA


@dataclass(frozen=True)
class TransformerSpec:
    """Shape of a BERT (``causal=False``) or GPT-2 (``causal=True``) model."""

    vocab_size: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int
    type_vocab: int = 2
    num_labels: int = 2
    layer_norm_eps: float = LAYERNORM_EPS
    causal: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden", "layers", "heads", "intermediate", "max_positions", "num_labels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"TransformerSpec.{name}={value!r}: expected a positive int")
        if not isinstance(self.type_vocab, int) or self.type_vocab < 0:
            raise ValueError(f"TransformerSpec.type_vocab={self.type_vocab!r}: expected an int >= 0")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"TransformerSpec.layer_norm_eps={self.layer_norm_eps!r}: expected > 0")
        if self.hidden % self.heads:
            raise ValueError(f"TransformerSpec.hidden={self.hidden} is not divisible by heads={self.heads}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any], num_labels: int | None = None) -> "TransformerSpec":
        """From a Hugging Face ``config.json`` dict (BERT or GPT-2 keys), read by ``models.config.hf_shape``."""
        shape = hf_shape(dict(config), num_labels)
        return cls(**{f.name: shape[f.name] for f in fields(cls)})


def checked_thresholds(theta: tuple[float, ...], beta: tuple[float, ...], criterion: str) -> tuple[float, ...]:
    """Validate learned thresholds: one β per θ (no β: β = θ), ``0 ≤ θ_l ≤ 1`` (absolute) or ``θ_l ≥ 0``
    (relative), ``β_l ≥ θ_l``, all finite; returns β. ``ValueError`` naming the first bad entry."""
    beta = beta or theta
    if len(theta) != len(beta):
        raise ValueError(f"PruningSpec: len(theta)={len(theta)} != len(beta)={len(beta)}")
    top = 1.0 if criterion == "absolute" else math.inf
    for l, (t, b) in enumerate(zip(theta, beta)):
        if not (math.isfinite(t) and 0.0 <= t <= top):
            raise ValueError(f"PruningSpec.theta[{l}]={t}: expected a finite 0 <= theta <= {top:g} ({criterion} criterion)")
        if not (math.isfinite(b) and b >= t):
            raise ValueError(f"PruningSpec.beta[{l}]={b}: expected a finite beta >= theta[{l}]={t}")
    return tuple(beta)


@dataclass(frozen=True)
class PruningSpec:
    """``method``: a registered method's name (``models.methods``); ``theta``/``beta`` one per layer;
    ``criterion`` (``absolute``: θ compares with the score S; ``relative``: with c·S, c the real
    tokens entering the layer; ``models.thresholds``); ``reduce_forms``: Π_reduce's low forms;
    ``nonlinear``: the family of every token's high forms (``models.approx.FAMILIES``; the pair
    must be one the family allows).

    Methods without learned thresholds ignore them (they may be empty). For the others both
    tuples must have one entry per layer, ``0 ≤ θ_l ≤ 1`` (absolute) or
    ``θ_l ≥ 0`` (relative) and ``β_l ≥ θ_l``, all finite (β is unused unless the method reduces).
    """

    method: str = "none"
    theta: tuple[float, ...] = ()
    beta: tuple[float, ...] = ()
    criterion: str = "absolute"
    reduce_forms: str = DEFAULT_REDUCE_FORMS
    nonlinear: str = DEFAULT_FAMILY

    def __post_init__(self) -> None:
        family_of(self.nonlinear, self.reduce_forms)
        learned = methods.get(self.method).thresholds          # ValueError naming an unknown method
        object.__setattr__(self, "theta", tuple(float(t) for t in self.theta))
        object.__setattr__(self, "beta", tuple(float(b) for b in self.beta))
        if self.criterion not in CRITERIA:
            raise ValueError(f"PruningSpec.criterion={self.criterion!r}: expected one of {list(CRITERIA)}")
        if learned:
            object.__setattr__(self, "beta", checked_thresholds(self.theta, self.beta, self.criterion))

    def check_layers(self, layers: int) -> None:
        """Raise ValueError unless the thresholds have one entry per layer (when used)."""
        if methods.get(self.method).thresholds and len(self.theta) != layers:
            raise ValueError(f"PruningSpec: len(theta)={len(self.theta)} but the model has {layers} layers")

