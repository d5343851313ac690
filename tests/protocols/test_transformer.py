"""Specs, HF config parsing and the JAX plaintext transformer vs the torch emulated model."""
from __future__ import annotations

import numpy as np
import pytest

from protocols.model_spec import PruningSpec, TransformerSpec
from protocols.plaintext import random_weights
from protocols.secure_model import plaintext_forward

TINY = dict(vocab_size=50, hidden=32, layers=2, heads=2, intermediate=64, max_positions=16)


@pytest.mark.parametrize("field, value", [("hidden", 0), ("layers", -1), ("heads", 3), ("vocab_size", 2.5)])
def test_transformer_spec_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field if field != "heads" else "heads=3"):
        TransformerSpec(**{**TINY, field: value})


def test_from_hf_config_bert_and_gpt2() -> None:
    bert = TransformerSpec.from_hf_config({
        "model_type": "bert", "vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6,
        "num_attention_heads": 12, "intermediate_size": 1536, "max_position_embeddings": 512,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12})
    assert (bert.hidden, bert.layers, bert.heads, bert.head_dim, bert.causal) == (384, 6, 12, 32, False)
    gpt = TransformerSpec.from_hf_config({"model_type": "gpt2", "vocab_size": 50257, "n_embd": 768, "n_layer": 12,
                                          "n_head": 12, "n_positions": 1024, "layer_norm_epsilon": 1e-5})
    assert (gpt.hidden, gpt.intermediate, gpt.causal, gpt.max_positions) == (768, 3072, True, 1024)
    with pytest.raises(ValueError, match="hidden_size"):
        TransformerSpec.from_hf_config({"model_type": "t5"})


def test_pruning_spec_validation() -> None:
    assert PruningSpec("prune", (0.1, 0.2)).beta == (0.1, 0.2)
    with pytest.raises(ValueError, match="'topk'"):
        PruningSpec("topk")
    with pytest.raises(ValueError, match=r"theta\[1\]=1.5"):
        PruningSpec("prune", (0.1, 1.5), (0.2, 1.6))
    with pytest.raises(ValueError, match=r"beta\[0\]=0.05"):
        PruningSpec("prune_reduce", (0.1,), (0.05,))
    with pytest.raises(ValueError, match="len"):
        PruningSpec("prune", (0.1,), (0.1, 0.2))
    with pytest.raises(ValueError, match="3 layers"):
        PruningSpec("prune", (0.1, 0.1)).check_layers(3)


@pytest.mark.parametrize("method, criterion, forms", [
    ("none", "absolute", "fast"), ("prune", "absolute", "fast"), ("prune_reduce", "absolute", "fast"),
    ("bolt_we", "absolute", "fast"), ("prune", "relative", "fast"), ("prune_reduce", "relative", "fast"),
    ("prune_reduce", "relative", "polynomial")])
def test_plaintext_matches_torch_emulated(method: str, criterion: str, forms: str) -> None:
    """JAX plaintext == torch ``BertClassifier`` (emulated ops, hard masks) on the same weights:
    identical kept counts, logits within the pooler's tanh approximation (< 1e-2); with the
    relative criterion layer 0's thresholds are scaled by its 6 real tokens (same first decision)
    and layer 1's compare c·S of the kept tokens on both sides; Π_reduce's low group with each
    family of low forms (``REDUCE_FORMS``) on both sides."""
    torch = pytest.importorskip("torch")
    from models.bert import BertClassifier
    from models.config import BertConfig, OpsConfig

    spec = TransformerSpec(**TINY)
    w = random_weights(spec, seed=4, scale=1.0)
    ids = np.array([1, 5, 9, 3, 7, 2, 0, 0])
    am = np.array([1, 1, 1, 1, 1, 1, 0, 0])
    base = plaintext_forward(spec, w, ids, am)
    s0 = np.sort(base.scores[0][:6])
    theta = float((s0[2] + s0[3]) / 2)                 # mid-gap thresholds: no fixed-point ties
    beta = float((s0[3] + s0[4]) / 2)
    c0 = 6.0 if criterion == "relative" else 1.0
    thresholds = {"none": ((), ()), "bolt_we": ((), ()), "prune": ((c0 * theta, 0.0), ()),
                  "prune_reduce": ((c0 * theta, 0.0), (c0 * beta, 0.5))}[method]
    pruning = PruningSpec(method, *thresholds, criterion=criterion, reduce_forms=forms)
    ours = plaintext_forward(spec, w, ids, am, None, pruning)
    cfg = BertConfig(vocab_size=50, hidden=32, layers=2, heads=2, intermediate=64, max_positions=16)
    model = BertClassifier(cfg, OpsConfig(mode="emulated")).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()}, strict=False)
    with torch.no_grad():
        model.pruning.theta.copy_(torch.tensor(list(pruning.theta) or [0.0, 0.0]))
        model.pruning.beta.copy_(torch.tensor(list(pruning.beta) or [0.0, 0.0]))
        model.pruning.criterion = criterion
        model.pruning.reduce_forms = forms
        out = model(torch.from_numpy(ids)[None], torch.from_numpy(am)[None], method=method)
    assert ours.kept_per_layer == [int(round(x)) for x in out.kept_tokens[0].tolist()]
    np.testing.assert_allclose(ours.logits, out.logits[0].numpy(), atol=1e-2)


def test_gpt2_plaintext_shapes_and_causality() -> None:
    spec = TransformerSpec(**TINY, causal=True)
    w = random_weights(spec, seed=5, scale=1.0)
    ids = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    full = plaintext_forward(spec, w, ids).logits
    assert full.shape == (8, 50)
    prefix = plaintext_forward(spec, w, ids[:5]).logits
    np.testing.assert_allclose(full[:5], prefix, atol=1e-4)   # future tokens do not leak backwards
    last = plaintext_forward(spec, w, ids, last_only=True).logits
    np.testing.assert_allclose(last, full[-1], atol=1e-4)


def test_gpt2_plaintext_matches_torch_emulated() -> None:
    """JAX GPT-2 (client-side embeddings, pre-LN, causal) == torch ``GPT2LM`` emulated ops."""
    torch = pytest.importorskip("torch")
    from models.config import GPT2Config, OpsConfig
    from models.gpt2 import GPT2LM

    spec = TransformerSpec(**TINY, causal=True)
    w = random_weights(spec, seed=6, scale=1.0)
    ids = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    ours = plaintext_forward(spec, w, ids).logits
    model = GPT2LM(GPT2Config(vocab_size=50, hidden=32, layers=2, heads=2, intermediate=64, max_positions=16),
                   OpsConfig(mode="emulated")).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()}, strict=False)
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)[None])[0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-3)
