"""Padding moves no decision: an input padded to the model's length and the same input at its own
length keep the same tokens and give the same logits (within the fixed-point bound), in the torch
emulation, in plain JAX and under SEMI2K. Layer 0's importance averages over the real query rows
only (``protocols.batch.received_rows`` with the padding mask; ``importance_scores`` of the real
rows in torch), so what the padding rows attend to does not count."""
from __future__ import annotations

import numpy as np
import pytest

from protocols.model_spec import PruningSpec, TransformerSpec
from protocols.plaintext import random_weights
from protocols.secure_model import plaintext_forward, run_batch
from protocols.session import SessionSpec, TwoPartySession

TOL = 1e-2
TINY = dict(vocab_size=50, hidden=32, layers=2, heads=2, intermediate=64, max_positions=16)
IDS = np.array([1, 5, 9, 3, 7, 2, 8, 4, 6, 1])          # 10 real tokens
PADDED_IDS = np.concatenate([IDS, np.zeros(6, IDS.dtype)])
PADDED_MASK = np.array([1] * 10 + [0] * 6)


def _mid_gap(scores: np.ndarray, rank: int) -> float:
    s = np.sort(scores)
    return float((s[rank] + s[rank + 1]) / 2)


@pytest.fixture(scope="module")
def model() -> tuple[TransformerSpec, dict[str, np.ndarray], dict[str, PruningSpec]]:
    """Relative thresholds between scores of the unpadded input (no fixed-point ties): keep 6 of 10
    at layer 0 (3 of them high), then 4."""
    spec = TransformerSpec(**TINY)
    w = random_weights(spec, seed=7, scale=1.0)
    d0 = 10 * plaintext_forward(spec, w, IDS).scores[0]
    t0, b0 = _mid_gap(d0, 3), _mid_gap(d0, 6)
    d1 = plaintext_forward(spec, w, IDS, pruning=PruningSpec("prune", (t0, 0.0), criterion="relative")).scores[1]   # c·S
    t1, b1 = _mid_gap(d1, 1), _mid_gap(d1, 3)
    return spec, w, {"prune": PruningSpec("prune", (t0, t1), criterion="relative"),
                     "prune_reduce": PruningSpec("prune_reduce", (t0, t1), (b0, b1), criterion="relative")}


@pytest.mark.parametrize("method", ["prune", "prune_reduce"])
def test_plain_and_semi2k_decide_the_same_at_any_padding(model: tuple, method: str) -> None:
    spec, w, specs = model
    own = plaintext_forward(spec, w, IDS, pruning=specs[method])
    padded = plaintext_forward(spec, w, PADDED_IDS, PADDED_MASK, pruning=specs[method])
    assert own.kept_per_layer == padded.kept_per_layer == [6, 4]
    assert own.kept_positions == padded.kept_positions and own.high_per_layer == padded.high_per_layer
    np.testing.assert_allclose(padded.scores[0][:10], own.scores[0], rtol=1e-5)   # the real tokens' c·S
    assert np.max(np.abs(own.logits - padded.logits)) < 1e-4
    with TwoPartySession(SessionSpec(protocol="SEMI2K")) as s:
        secure = run_batch(s, spec, w, [(PADDED_IDS, PADDED_MASK, None), (IDS, None, None)], specs[method],
                           trace_positions=True)
    for result in secure:
        assert result.kept_per_layer == own.kept_per_layer and result.kept_positions == own.kept_positions
        assert result.high_per_layer == own.high_per_layer
        assert np.max(np.abs(result.logits - own.logits)) < TOL


def test_torch_emulation_decides_the_same_at_any_padding(model: tuple) -> None:
    torch = pytest.importorskip("torch")
    from models.bert import BertClassifier
    from models.config import BertConfig, OpsConfig

    spec, w, specs = model
    pruning = specs["prune_reduce"]
    bert = BertClassifier(BertConfig(**TINY), OpsConfig(mode="emulated")).eval()
    bert.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()}, strict=False)
    with torch.no_grad():
        bert.pruning.theta.copy_(torch.tensor(pruning.theta))
        bert.pruning.beta.copy_(torch.tensor(pruning.beta))
        bert.pruning.criterion = "relative"
        own = bert(torch.from_numpy(IDS)[None], torch.ones(1, 10), method="prune_reduce")
        padded = bert(torch.from_numpy(PADDED_IDS)[None], torch.from_numpy(PADDED_MASK)[None], method="prune_reduce")
    assert own.kept_tokens[0].tolist() == padded.kept_tokens[0].tolist() == [6.0, 4.0]
    for layer in range(2):                                                            # the same tokens kept
        assert torch.equal(padded.present[layer][0, :10].bool(), own.present[layer][0].bool())
        assert not padded.present[layer][0, 10:].any()
    np.testing.assert_allclose(padded.logits[0].numpy(), own.logits[0].numpy(), atol=1e-4)
    jax = plaintext_forward(spec, w, PADDED_IDS, PADDED_MASK, pruning=pruning)
    np.testing.assert_allclose(jax.logits, own.logits[0].numpy(), atol=TOL)
