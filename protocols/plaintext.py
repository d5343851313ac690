"""Plaintext helpers: random HF-named weights for tiny test models, MiniLM loading.

Random weights follow the Hugging Face names of ``docs/ARCHITECTURE.md`` (torch layout).
"""
from __future__ import annotations

import numpy as np

from protocols.model_spec import TransformerSpec


def random_weights(spec: TransformerSpec, seed: int = 0, scale: float = 0.2) -> dict[str, np.ndarray]:
    """``dict[str, float32 array]`` for ``BertForSequenceClassification`` / ``GPT2LMHeadModel``."""
    rng = np.random.default_rng(seed)
    d, f = spec.hidden, spec.intermediate
    w: dict[str, np.ndarray] = {}

    def put(name: str, *shape: int, kind: str = "w") -> None:
        if kind == "g":
            w[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif kind == "b":
            w[name] = (0.02 * rng.standard_normal(shape)).astype(np.float32)
        else:
            w[name] = (scale * rng.standard_normal(shape) / np.sqrt(shape[-1] if kind == "w" else 1.0)).astype(np.float32)

    if spec.causal:
        put("transformer.wte.weight", spec.vocab_size, d, kind="e")
        put("transformer.wpe.weight", spec.max_positions, d, kind="e")
        for l in range(spec.layers):
            p = f"transformer.h.{l}."
            put(p + "attn.c_attn.weight", d, 3 * d)
            put(p + "attn.c_attn.bias", 3 * d, kind="b")
            put(p + "attn.c_proj.weight", d, d)
            put(p + "attn.c_proj.bias", d, kind="b")
            put(p + "mlp.c_fc.weight", d, f)
            put(p + "mlp.c_fc.bias", f, kind="b")
            put(p + "mlp.c_proj.weight", f, d)
            put(p + "mlp.c_proj.bias", d, kind="b")
            for i in (1, 2):
                put(p + f"ln_{i}.weight", d, kind="g")
                put(p + f"ln_{i}.bias", d, kind="b")
        put("transformer.ln_f.weight", d, kind="g")
        put("transformer.ln_f.bias", d, kind="b")
        w["lm_head.weight"] = w["transformer.wte.weight"]
        return w
    e = "bert.embeddings."
    put(e + "word_embeddings.weight", spec.vocab_size, d, kind="e")
    put(e + "position_embeddings.weight", spec.max_positions, d, kind="e")
    put(e + "token_type_embeddings.weight", max(spec.type_vocab, 1), d, kind="e")
    put(e + "LayerNorm.weight", d, kind="g")
    put(e + "LayerNorm.bias", d, kind="b")
    for l in range(spec.layers):
        p = f"bert.encoder.layer.{l}."
        for key, o, i in (("attention.self.query", d, d), ("attention.self.key", d, d),
                          ("attention.self.value", d, d), ("attention.output.dense", d, d),
                          ("intermediate.dense", f, d), ("output.dense", d, f)):
            put(p + key + ".weight", o, i)
            put(p + key + ".bias", o, kind="b")
        for key in ("attention.output.LayerNorm", "output.LayerNorm"):
            put(p + key + ".weight", d, kind="g")
            put(p + key + ".bias", d, kind="b")
    put("bert.pooler.dense.weight", d, d)
    put("bert.pooler.dense.bias", d, kind="b")
    put("classifier.weight", spec.num_labels, d)
    put("classifier.bias", spec.num_labels, kind="b")
    return w


def load_bert_safetensors(path: str, num_labels: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """A HF ``BertModel`` ``model.safetensors`` → ``bert.``-prefixed weights + a random classifier head."""
    from safetensors.numpy import load_file

    raw = load_file(path)
    w = {(k if k.startswith("bert.") else "bert." + k): np.asarray(v, np.float32) for k, v in raw.items()}
    d = w["bert.pooler.dense.weight"].shape[0]
    rng = np.random.default_rng(seed)
    w["classifier.weight"] = (rng.standard_normal((num_labels, d)) / np.sqrt(d)).astype(np.float32)
    w["classifier.bias"] = np.zeros(num_labels, np.float32)
    return w
