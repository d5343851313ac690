"""Causal (GPT-2) Π_prune, Π_reduce and BOLT WE: scores against a numpy reference, the JAX engine
(physical compaction; Π_reduce's reordering with the secret visibility matrix) against the torch
model (masking in the original order), and SEMI2K against the plaintext run."""
from __future__ import annotations

import numpy as np
import pytest

from models.methods import builtin_names
from protocols.model_spec import PruningSpec, TransformerSpec
from protocols.plaintext import random_weights
from protocols.secure_model import plaintext_forward, run_batch
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


@pytest.fixture(scope="module")
def reduce_spec(gpt: tuple) -> PruningSpec:
    """Π_prune's θ and a β that puts 2 of layer 0's 5 kept context tokens in the low group and every
    kept context token of layer 1 (β_1 = 1): both of its compactions reorder the rows."""
    spec, w, pruning = gpt
    s0 = plaintext_forward(spec, w, IDS, last_only=True).scores[0][:-1]
    kept = np.sort(s0[s0 > pruning.theta[0]])
    return PruningSpec("prune_reduce", pruning.theta, (float((kept[1] + kept[2]) / 2), 1.0))


def _spec_of(method: str, pruning: PruningSpec, reduce_spec: PruningSpec) -> PruningSpec:
    return {"prune": pruning, "prune_reduce": reduce_spec}.get(method, PruningSpec(method))


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


def test_causal_prune_reduce_reorders_with_the_forced_position_first(gpt: tuple, reduce_spec: PruningSpec) -> None:
    """After each Π_reduce the rows are: the last position, the other high rows, then the low rows,
    each group in the order the rows entered; layer 0 keeps what Π_prune keeps."""
    spec, w, pruning = gpt
    ours = plaintext_forward(spec, w, IDS, pruning=reduce_spec, last_only=True)
    pruned = plaintext_forward(spec, w, IDS, pruning=pruning, last_only=True)
    assert ours.kept_per_layer[0] == 6 and ours.high_per_layer == [4, 1]
    assert sorted(ours.kept_positions[0]) == pruned.kept_positions[0]
    entering = list(range(len(IDS)))
    for kept, high in zip(ours.kept_positions, ours.high_per_layer):
        assert kept[0] == len(IDS) - 1
        for group in (kept[1:high], kept[high:]):
            assert group == sorted(group, key=entering.index)
        entering = kept
    assert ours.kept_positions[0] != sorted(ours.kept_positions[0])      # the reordering did happen


def test_causal_scores_after_reordering_match_the_original_order(gpt: tuple, reduce_spec: PruningSpec) -> None:
    """Layer 1's scores, normalised by the secret visibility's column sums in the shuffled order, equal
    the torch model's scores (original order, causal mask) of the same tokens."""
    torch = pytest.importorskip("torch")
    spec, w, _ = gpt
    ours = plaintext_forward(spec, w, IDS, pruning=reduce_spec, last_only=True)
    ref = _torch_model(torch, w, reduce_spec).pruned(torch.from_numpy(IDS)[None], _settings("prune_reduce"))
    np.testing.assert_allclose(ours.scores[1], ref.scores[1][0].detach().numpy()[ours.kept_positions[0]], atol=1e-4)


def _torch_model(torch: object, w: dict[str, np.ndarray], pruning: PruningSpec) -> object:
    from models.config import GPT2Config, OpsConfig
    from models.gpt2 import GPT2LM

    model = GPT2LM(GPT2Config(**TINY), OpsConfig(mode="emulated")).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()}, strict=False)
    if pruning.theta:
        model.pruning.theta.data = torch.tensor(pruning.theta)
    if pruning.beta:
        model.pruning.beta.data = torch.tensor(pruning.beta)
    return model


def _settings(method: str) -> object:
    from models.token_pruning import PruneSettings

    return PruneSettings(method)


@pytest.mark.parametrize("method", builtin_names())
def test_causal_engine_matches_the_torch_masked_model(gpt: tuple, reduce_spec: PruningSpec, method: str) -> None:
    """Physical compaction (JAX) == present masks over the full sequence (torch): same counts, same
    high-group shares and next-token logits."""
    torch = pytest.importorskip("torch")
    spec, w, pruning = gpt
    spec_m = _spec_of(method, pruning, reduce_spec)
    ours = plaintext_forward(spec, w, IDS, pruning=spec_m, last_only=True)
    with torch.no_grad():
        ref = _torch_model(torch, w, spec_m).pruned(torch.from_numpy(IDS)[None], _settings(method))
    assert ref.kept_tokens[0].tolist() == ours.kept_per_layer
    if method == "prune_reduce":
        shares = [h / k for h, k in zip(ours.high_per_layer, ours.kept_per_layer)]
        np.testing.assert_allclose(ref.high_ratio.numpy(), shares, rtol=1e-6)
    np.testing.assert_allclose(ours.logits, ref.logits[0].numpy(), atol=1e-3)


@pytest.mark.parametrize(("protocol", "method"), [("SEMI2K", "bolt_we"), ("SEMI2K", "prune"), ("SEMI2K", "prune_reduce"),
                                                  ("CHEETAH", "prune_reduce")])
def test_causal_secure_matches_plaintext(gpt: tuple, reduce_spec: PruningSpec, protocol: str, method: str) -> None:
    """Same counts, groups, row order and logits; under CHEETAH too (the visibility's integer
    matmuls run as HE products there)."""
    spec, w, pruning = gpt
    spec_m = _spec_of(method, pruning, reduce_spec)
    plain = plaintext_forward(spec, w, IDS, pruning=spec_m, last_only=True)
    with TwoPartySession(SessionSpec(protocol=protocol)) as s:
        secure = run_batch(s, spec, w, [(IDS, None, None)], spec_m, last_only=True, trace_positions=True)[0]
    assert secure.kept_per_layer == plain.kept_per_layer
    assert secure.high_per_layer == plain.high_per_layer
    assert secure.kept_positions == plain.kept_positions
    assert np.max(np.abs(secure.logits - plain.logits)) < TOL
    declared = {"kept count", "final logits", "test only: kept positions"} | (
        {"high-group count"} if method == "prune_reduce" else set())
    assert {r.purpose for r in s.reveals} <= declared


def test_causal_relative_criterion_is_refused(gpt: tuple) -> None:
    spec, w, _ = gpt
    with pytest.raises(ValueError, match="relative.*causal"):
        plaintext_forward(spec, w, IDS, pruning=PruningSpec("prune", (1.0, 1.0), criterion="relative"),
                          last_only=True)
