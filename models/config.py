"""Plain (frozen) dataclass configs for the torch models; no Hydra/OmegaConf here.

``BertConfig`` / ``GPT2Config`` mirror the fields of ``protocols/model_spec.TransformerSpec``
and convert to/from Hugging Face ``config.json`` dictionaries.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from models.approx import DEFAULT_FAMILY, family_of

OpsMode = Literal["exact", "emulated"]
MaskMode = Literal["soft", "hard"]


def check_input_ids(ids: Any, vocab_size: int, max_positions: int) -> None:
    """``ValueError`` unless the token ids ``ids`` ``[B, n]`` (a tensor) fit the model: ``n ≤
    max_positions`` and every id in ``[0, vocab_size)`` (an embedding lookup would otherwise fail
    deep inside torch, or wrap a negative id)."""
    n = int(ids.shape[-1])
    if n > max_positions:
        raise ValueError(f"input of {n} tokens > the model's max_positions={max_positions}")
    if not ids.numel():
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"input_ids contains {low if low < 0 else high}: outside the model's vocabulary [0, {vocab_size})")


def hf_shape(d: dict[str, Any], num_labels: int | None = None) -> dict[str, Any]:
    """The one reader of a Hugging Face ``config.json`` dict (BERT or GPT-2 keys): the shape
    fields of ``BertConfig`` / ``GPT2Config`` / ``protocols.model_spec.TransformerSpec``
    (vocab_size, hidden, layers, heads, intermediate, max_positions, type_vocab, num_labels,
    layer_norm_eps, causal) plus ``dropout``, ``attention_dropout`` and ``pad_token_id``.
    ``num_labels`` overrides the file's. Raises ``ValueError`` naming an unsupported model_type."""
    model_type = str(d.get("model_type", "")).lower()
    if model_type == "gpt2" or "n_embd" in d:
        h = int(d["n_embd"])
        return {"vocab_size": int(d["vocab_size"]), "hidden": h, "layers": int(d["n_layer"]), "heads": int(d["n_head"]),
                "intermediate": int(d.get("n_inner") or 4 * h),
                "max_positions": int(d.get("n_positions", d.get("n_ctx", 1024))), "type_vocab": 0,
                "num_labels": int(num_labels or d.get("num_labels", 2)),
                "layer_norm_eps": float(d.get("layer_norm_epsilon", 1e-5)), "causal": True,
                "dropout": float(d.get("resid_pdrop", 0.1)), "attention_dropout": float(d.get("attn_pdrop", 0.1)),
                "pad_token_id": 0}
    if "hidden_size" not in d or model_type not in ("", "bert"):
        raise ValueError(f"unsupported config (model_type={model_type!r}): expected a BERT (hidden_size) or "
                         "GPT-2 (n_embd) config.json")
    labels = num_labels if num_labels is not None else int(d.get("num_labels") or len(d.get("id2label", {})) or 2)
    return {"vocab_size": int(d["vocab_size"]), "hidden": int(d["hidden_size"]), "layers": int(d["num_hidden_layers"]),
            "heads": int(d["num_attention_heads"]), "intermediate": int(d["intermediate_size"]),
            "max_positions": int(d.get("max_position_embeddings", 512)), "type_vocab": int(d.get("type_vocab_size", 2)),
            "num_labels": labels, "layer_norm_eps": float(d.get("layer_norm_eps", 1e-12)), "causal": False,
            "dropout": float(d.get("hidden_dropout_prob", 0.1)),
            "attention_dropout": float(d.get("attention_probs_dropout_prob", 0.1)),
            "pad_token_id": int(d.get("pad_token_id", 0) or 0)}


SHAPE_FIELDS = ("vocab_size", "hidden", "layers", "heads", "intermediate", "max_positions")


@dataclass(frozen=True)
class OpsConfig:
    """Which non-linear ops to run.

    ``mode="exact"``: torch GELU/softmax/LayerNorm. ``mode="emulated"``: the approximations of
    ``models.approx``, the high forms of the family ``nonlinear`` (``FAMILIES``);
    ``fixed_point=True`` additionally rounds every op output to ``FIXED_POINT.fraction_bits``
    (straight-through gradients).
    """

    mode: OpsMode = "exact"
    fixed_point: bool = False
    nonlinear: str = DEFAULT_FAMILY

    def __post_init__(self) -> None:
        if self.mode not in ("exact", "emulated"):
            raise ValueError(f"ops mode must be 'exact' or 'emulated', got {self.mode!r}")
        family_of(self.nonlinear)


@dataclass(frozen=True)
class BertConfig:
    """Shape of a BERT classifier (Hugging Face ``BertConfig`` subset)."""

    vocab_size: int = 30522
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    max_positions: int = 512
    type_vocab: int = 2
    num_labels: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    pad_token_id: int = 0
    causal: bool = False

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} not divisible by heads {self.heads}")

    @classmethod
    def from_hf(cls, d: dict[str, Any], num_labels: int | None = None) -> "BertConfig":
        """From a Hugging Face ``config.json`` dict (``hf_shape``); ``num_labels`` overrides the file."""
        s = hf_shape(d, num_labels)
        if s["causal"]:
            raise ValueError(f"not a BERT config: model_type={d.get('model_type')!r}")
        return cls(**{k: s[k] for k in (*SHAPE_FIELDS, "type_vocab", "num_labels", "layer_norm_eps",
                                        "attention_dropout", "pad_token_id")}, hidden_dropout=s["dropout"])

    def to_hf(self) -> dict[str, Any]:
        """Hugging Face ``config.json`` dict for ``BertForSequenceClassification``."""
        return {
            "architectures": ["BertForSequenceClassification"], "model_type": "bert",
            "vocab_size": self.vocab_size, "hidden_size": self.hidden,
            "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
            "intermediate_size": self.intermediate, "hidden_act": "gelu",
            "max_position_embeddings": self.max_positions, "type_vocab_size": self.type_vocab,
            "layer_norm_eps": self.layer_norm_eps, "hidden_dropout_prob": self.hidden_dropout,
            "attention_probs_dropout_prob": self.attention_dropout,
            "pad_token_id": self.pad_token_id, "num_labels": self.num_labels,
            "id2label": {str(i): f"LABEL_{i}" for i in range(self.num_labels)},
            "label2id": {f"LABEL_{i}": i for i in range(self.num_labels)},
            "problem_type": "regression" if self.num_labels == 1 else "single_label_classification",
            "position_embedding_type": "absolute", "initializer_range": 0.02,
        }


@dataclass(frozen=True)
class GPT2Config:
    """Shape of a GPT-2 LM (Hugging Face ``GPT2Config`` subset)."""

    vocab_size: int = 50257
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    max_positions: int = 1024
    layer_norm_eps: float = 1e-5
    dropout: float = 0.1
    causal: bool = True

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> "GPT2Config":
        """From a Hugging Face GPT-2 ``config.json`` dict (``hf_shape``)."""
        s = hf_shape(d)
        if not s["causal"]:
            raise ValueError(f"not a GPT-2 config: model_type={d.get('model_type')!r}")
        return cls(**{k: s[k] for k in (*SHAPE_FIELDS, "layer_norm_eps", "dropout")})

    def to_hf(self) -> dict[str, Any]:
        """Hugging Face ``config.json`` dict for ``GPT2LMHeadModel``."""
        return {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": self.vocab_size, "n_embd": self.hidden, "n_layer": self.layers,
            "n_head": self.heads, "n_inner": self.intermediate, "n_positions": self.max_positions,
            "layer_norm_epsilon": self.layer_norm_eps, "resid_pdrop": self.dropout,
            "embd_pdrop": self.dropout, "attn_pdrop": self.dropout,
            "activation_function": "gelu_new",
        }
