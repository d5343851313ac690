"""Batched secure evaluation (several inputs stacked per program) makes the decisions of one
input at a time, and the server's weights run as secret × server-private under CHEETAH."""
from __future__ import annotations

import numpy as np
import pytest

from models.methods import builtin_names
from protocols.batch import Layout
from protocols.model_spec import PruningSpec, TransformerSpec
from protocols.plaintext import random_weights
from protocols.secure_model import plaintext_batch, plaintext_forward, run_batch
from protocols.session import SessionSpec, TwoPartySession

TINY = dict(vocab_size=50, hidden=32, layers=2, heads=2, intermediate=64, max_positions=16)
# three inputs: two of one length (one group), one shorter; padding in two of them
EXAMPLES = [(np.array([1, 5, 9, 3, 7, 2, 8, 4, 6, 1]), np.array([1] * 8 + [0] * 2), None),
            (np.array([1, 4, 4, 8, 2, 9, 3, 7, 5, 1]), np.ones(10), None),
            (np.array([1, 6, 2, 8, 3, 1, 0, 0]), np.array([1] * 6 + [0] * 2), None)]
WEIGHT_PROGRAMS = ("qkv", "linear")          # programs whose only matmuls are with the server's weights


@pytest.fixture(scope="module")
def model() -> tuple[TransformerSpec, dict[str, np.ndarray], dict[str, PruningSpec]]:
    spec = TransformerSpec(**TINY)
    w = random_weights(spec, seed=11, scale=1.0)
    # thresholds at the 40 % / 70 % quantiles of the first input's layer-0 scores: some tokens pruned
    s0 = plaintext_forward(spec, w, *EXAMPLES[0][:2]).scores[0][:8]
    t, b = float(np.quantile(s0, 0.4)), float(np.quantile(s0, 0.7))
    return spec, w, {"none": PruningSpec(), "bolt_we": PruningSpec("bolt_we"),
                     "prune": PruningSpec("prune", (t, t)), "prune_reduce": PruningSpec("prune_reduce", (t, t), (b, b))}


def test_layout_groups_and_validation() -> None:
    layout = Layout((10, 10, 8), (3, 4, 3))
    assert layout.offsets == (0, 10, 20) and layout.total == 28
    assert layout.groups() == [(10, 3, (0,)), (10, 4, (1,)), (8, 3, (2,))]
    assert Layout((10, 8, 10)).groups() == [(10, None, (0, 2)), (8, None, (1,))]
    np.testing.assert_array_equal(np.flatnonzero(layout.forced_rows()), [0, 10, 20])
    with pytest.raises(ValueError, match="high"):
        Layout((4, 4), (5, 1))
    with pytest.raises(ValueError, match="sizes"):
        Layout(())


@pytest.mark.parametrize("method", builtin_names())
def test_plain_batch_equals_one_at_a_time(model: tuple, method: str) -> None:
    """Same kept counts, high groups, scores and logits as three separate passes."""
    spec, w, specs = model
    batch = plaintext_batch(spec, w, EXAMPLES, specs[method])
    for ex, res in zip(EXAMPLES, batch):
        one = plaintext_forward(spec, w, *ex, pruning=specs[method])
        assert res.kept_per_layer == one.kept_per_layer and res.high_per_layer == one.high_per_layer
        assert res.entering_per_layer == one.entering_per_layer and res.kept_positions == one.kept_positions
        for a, b in zip(res.scores, one.scores):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(res.logits, one.logits, rtol=1e-4, atol=1e-5)
    if method == "prune":   # the thresholds really prune, and differently per input
        assert len({tuple(r.kept_per_layer) for r in batch}) > 1, [r.kept_per_layer for r in batch]
        assert all(r.kept_per_layer[0] < r.entering_per_layer[0] for r in batch)


def _secure_batch(protocol: str, spec: TransformerSpec, w: dict, pruning: PruningSpec, trace: bool = False,
                  **kw: object) -> tuple:
    with TwoPartySession(SessionSpec(protocol=protocol, **kw)) as s:
        res = run_batch(s, spec, w, EXAMPLES, pruning, trace_positions=trace)
        return res, dict(s.ownership)


@pytest.mark.parametrize("protocol, method", [("SEMI2K", "prune_reduce"), ("SEMI2K", "bolt_we"),
                                              ("CHEETAH", "prune")])
def test_secure_batch_matches_plaintext_per_input(model: tuple, protocol: str, method: str) -> None:
    spec, w, specs = model
    secure, _ = _secure_batch(protocol, spec, w, specs[method])
    kept = [r for r in secure[0].reveals if r.purpose == "kept count"]
    if method == "bolt_we":                                     # ⌈n/2⌉ is public: only the logits open
        assert [(r.purpose, r.to, r.shape) for r in secure[0].reveals] == [("final logits", "client", (3, 2))]
    else:                                                       # one count per input, per layer
        assert [r.shape for r in kept] == [(3,)] * spec.layers
    traced, _ = _secure_batch(protocol, spec, w, specs[method], trace=True)
    for ex, res in zip(EXAMPLES, traced):                       # the very tokens, in order, per input
        assert res.kept_positions == plaintext_forward(spec, w, *ex, pruning=specs[method]).kept_positions
    for ex, res in zip(EXAMPLES, secure):
        one = plaintext_forward(spec, w, *ex, pruning=specs[method])
        assert res.kept_per_layer == one.kept_per_layer and res.high_per_layer == one.high_per_layer
        assert np.max(np.abs(res.logits - one.logits)) < 1e-2, (res.logits, one.logits)
        assert res.batch_size == 3


def test_cheetah_weights_private_to_server(model: tuple) -> None:
    """Every matmul with a server weight is ``mmul_sv`` (secret × private: one HE product);
    with nothing private the same programs run ``mmul_aa``; the ownership record says so."""
    spec, w, specs = model
    res, owned = _secure_batch("CHEETAH", spec, w, specs["none"])
    progs = [p for p in res[0].cost.programs if p.program in WEIGHT_PROGRAMS]
    assert len(progs) == 3 * spec.layers                      # qkv + 2 FFN linears per layer
    for p in progs:
        assert p.kernels.get("mmul_sv", 0) >= 1 and "mmul_aa" not in p.kernels, (p.program, p.kernels)
    out = [p for p in res[0].cost.programs if p.program == "attention_output"]
    assert all(p.kernels.get("mmul_sv") == 1 for p in out), [p.kernels for p in out]   # ctx @ Wo
    assert owned["l0.wq"] == "private to the server (party 1)" and owned["h"] == "private to the client (party 0)"
    shared, owned_shared = _secure_batch("CHEETAH", spec, w, specs["none"], private_owners=())
    for p in (p for p in shared[0].cost.programs if p.program in WEIGHT_PROGRAMS):
        assert p.kernels.get("mmul_aa", 0) >= 1 and "mmul_sv" not in p.kernels, (p.program, p.kernels)
    assert owned_shared["l0.wq"] == "secret-shared"
    for a, b in zip(res, shared):
        assert a.kept_per_layer == b.kept_per_layer
        assert np.max(np.abs(a.logits - b.logits)) < 1e-2


def test_semi2k_falls_back_to_secret_sharing_and_says_so(model: tuple) -> None:
    spec, w, specs = model
    res, owned = _secure_batch("SEMI2K", spec, w, specs["none"])
    assert owned["l0.w1"].startswith("secret-shared (SEMI2K") and "no private values" in owned["l0.w1"]
    for p in (p for p in res[0].cost.programs if p.program in WEIGHT_PROGRAMS):   # what SPU really ran
        assert p.kernels.get("mmul_aa", 0) >= 1 and "mmul_sv" not in p.kernels, (p.program, p.kernels)
