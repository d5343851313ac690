"""Causal (GPT-2) Π_prune and BOLT WE: scores against a numpy reference, the JAX engine (physical
compaction) against the torch model (masking), and SEMI2K against the plaintext run."""
from __future__ import annotations

import numpy as np
import pytest

from protocols.model_spec import PruningSpec, TransformerSpec
from protocols.plaintext import random_weights
from protocols.secure_model import plaintext_forward, run_forward
from protocols.session import SessionSpec, TwoPartySession

TINY = dict(vocab_size=50, hidden=32, layers=2, heads=2, intermediate=64, max_positions=16)
IDS = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3])
TOL = 1e-2


def _mid_gap(scores: np.ndarray, rank: int) -> float:
    s = np.sort(scores)
    return float((s[rank] + s[rank + 1]) / 2)


@pytest.fixture(scope="module")
def gpt() -> tuple[TransformerSpec, dict[str, np.ndarray], PruningSpec]:
    spec = TransformerSpec(**TINY, causal=True)
    w = random_weights(spec, seed=11, scale=1.0)
    s0 = plaintext_forward(spec, w, IDS, last_only=True).scores[0]
    t0 = _mid_gap(s0[:-1], 3)                                     # prune 4 of the 9 non-forced tokens
    s1 = plaintext_forward(spec, w, IDS, pruning=PruningSpec("prune", (t0, 0.0)), last_only=True).scores[1]
    return spec, w, PruningSpec("prune", (t0, _mid_gap(s1[:-1], 1)))


def test_causal_scores_average_over_the_rows_that_see_each_token(gpt: tuple) -> None:
    """Layer 0's recorded score equals (1/(H·(n−i))) Σ_h Σ_{j≥i} A_h[j, i] computed in numpy from the
    layer's attention (an exact causal softmax of the same q·k, which the emulated exp tracks to 1e-3)."""
    spec, w, _ = gpt
    from protocols.transformer import client_embed, server_weights

    sw = server_weights(spec, w)
    x = client_embed(spec, w, IDS).astype(np.float64)
    mu, var = x.mean(1, keepdims=True), x.var(1, keepdims=True)
    xn = (x - mu) / np.sqrt(var + spec.layer_norm_eps) * sw["l0.ln1.g"] + sw["l0.ln1.b"]
    H, n, dh = spec.heads, len(IDS), spec.head_dim
    q, k = ((xn @ sw[f"l0.w{c}"] + sw[f"l0.b{c}"]).reshape(n, H, dh).transpose(1, 0, 2) for c in "qk")
    logits = q @ k.transpose(0, 2, 1) / np.sqrt(dh) + np.where(np.tril(np.ones((n, n))) > 0, 0.0, -np.inf)
    a = np.exp(logits - logits.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    expected = a.sum(axis=(0, 1)) / (H * np.arange(n, 0, -1))
    got = plaintext_forward(spec, w, IDS, last_only=True).scores[0]
    np.testing.assert_allclose(got, expected, atol=2e-3)


def test_causal_prune_keeps_order_and_the_last_position(gpt: tuple) -> None:
    spec, w, pruning = gpt
    plain = plaintext_forward(spec, w, IDS, pruning=pruning, last_only=True)
    assert plain.kept_per_layer == [6, 4]
    for kept in plain.kept_positions:
        assert kept == sorted(kept) and kept[-1] == len(IDS) - 1
    everything = plaintext_forward(spec, w, IDS, pruning=PruningSpec("prune", (1.0, 1.0)), last_only=True)
    assert everything.kept_positions == [[9], [9]]


@pytest.mark.parametrize("method", ["none", "bolt_we", "prune"])
def test_causal_engine_matches_the_torch_masked_model(gpt: tuple, method: str) -> None:
    """Physical compaction (JAX) == present masks over the full sequence (torch): same counts and
    next-token logits."""
    torch = pytest.importorskip("torch")
    from models.config import GPT2Config, OpsConfig
    from models.gpt2 import GPT2LM
    from models.token_pruning import PruneSettings

    spec, w, pruning = gpt
    spec_m = pruning if method == "prune" else PruningSpec(method)
    ours = plaintext_forward(spec, w, IDS, pruning=spec_m, last_only=True)
    model = GPT2LM(GPT2Config(**TINY), OpsConfig(mode="emulated")).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()}, strict=False)
    model.pruning.theta.data = torch.tensor(pruning.theta)
    with torch.no_grad():
        ref = model.pruned(torch.from_numpy(IDS)[None], PruneSettings(method))
    assert ref.kept_tokens[0].tolist() == ours.kept_per_layer
    np.testing.assert_allclose(ours.logits, ref.logits[0].numpy(), atol=1e-3)


@pytest.mark.parametrize("method", ["bolt_we", "prune"])
def test_causal_semi2k_matches_plaintext(gpt: tuple, method: str) -> None:
    spec, w, pruning = gpt
    spec_m = pruning if method == "prune" else PruningSpec(method)
    plain = plaintext_forward(spec, w, IDS, pruning=spec_m, last_only=True)
    with TwoPartySession(SessionSpec(protocol="SEMI2K")) as s:
        secure = run_forward(s, spec, w, IDS, pruning=spec_m, last_only=True, trace_positions=True)
    assert secure.kept_per_layer == plain.kept_per_layer
    assert secure.kept_positions == plain.kept_positions
    assert np.max(np.abs(secure.logits - plain.logits)) < TOL
    assert {r.purpose for r in s.reveals} <= {"kept count", "final logits", "test only: kept positions"}


def test_causal_prune_reduce_and_relative_are_refused(gpt: tuple) -> None:
    spec, w, pruning = gpt
    with pytest.raises(ValueError, match="prune_reduce.*causal"):
        plaintext_forward(spec, w, IDS, pruning=PruningSpec("prune_reduce", pruning.theta), last_only=True)
    with pytest.raises(ValueError, match="relative.*causal"):
        plaintext_forward(spec, w, IDS, pruning=PruningSpec("prune", (1.0, 1.0), criterion="relative"),
                          last_only=True)
