"""Leakage: every opened value equals the declared leakage; inputs shared the way the engine shares
them: secret shares uniform and input-independent, private inputs giving the peer nothing.

Declared (README "Threat model and leakage"): per pruned layer the kept count, with
Π_reduce the high-group size, and the final logits to the client; nothing for ``none``
and ``bolt_we`` beyond the logits. Every program output stays secret-shared.
"""
from __future__ import annotations

import numpy as np
import pytest
import spu.libspu as libspu
from scipy import stats
from spu import api

from models.methods import builtin_names
from protocols.model_spec import PruningSpec, TransformerSpec
from protocols.parties import make_shares
from protocols.plaintext import random_weights
from protocols.secure_model import plaintext_forward, run_batch
from protocols.session import SecureSession, SessionSpec, TwoPartySession
from protocols.spec import OWNER_RANK

TINY = dict(vocab_size=50, hidden=32, layers=2, heads=2, intermediate=64, max_positions=16)
IDS = np.array([1, 5, 9, 3, 7, 2, 8, 4, 6, 1, 0, 0])
MASK = np.array([1] * 10 + [0] * 2)


def _declared(method: str, kept: list[int], high: list) -> list[tuple[str, object, str, list]]:
    """(purpose, layer, to, value) of everything ``method`` may open, in order."""
    out: list[tuple[str, object, str, list]] = []
    for layer, k in enumerate(kept):
        if method in ("prune", "prune_reduce"):
            out.append(("kept count", layer, "both", [float(k)]))
        if method == "prune_reduce":
            out.append(("high-group count", layer, "both", [float(high[layer])]))
    return out


@pytest.fixture(scope="module")
def model():
    spec = TransformerSpec(**TINY)
    weights = random_weights(spec, seed=7, scale=1.0)
    scores = plaintext_forward(spec, weights, IDS, MASK).scores[0][:10]
    theta = float(np.sort(scores)[4] + np.sort(scores)[5]) / 2
    beta = float(np.sort(scores)[7] + np.sort(scores)[8]) / 2
    return spec, weights, {"none": PruningSpec(), "bolt_we": PruningSpec("bolt_we"),
                           "prune": PruningSpec("prune", (theta, 0.0)),
                           "prune_reduce": PruningSpec("prune_reduce", (theta, 0.0), (beta, 0.0))}


@pytest.mark.parametrize("method", builtin_names())
def test_reveals_equal_declared_leakage_and_outputs_stay_secret(model, method, monkeypatch):
    spec, weights, prunings = model
    visibilities: list[str] = []
    original_run = SecureSession.run

    def watched_run(self, fn, inputs, outputs, **kw):  # every program output must stay secret
        original_run(self, fn, inputs, outputs, **kw)
        for name in outputs:
            meta = libspu.ValueMeta()
            meta.ParseFromString(self._parties.get_var(name)[1].meta)
            visibilities.append(str(meta.visibility))

    monkeypatch.setattr(SecureSession, "run", watched_run)
    with TwoPartySession(SessionSpec("SEMI2K")) as session:
        result = run_batch(session, spec, weights, [(IDS, MASK, None)], prunings[method])[0]
        reveals = list(session.reveals)
    assert visibilities and set(visibilities) == {"Visibility.VIS_SECRET"}
    opened = [(r.purpose, r.layer, r.to, np.asarray(r.value).reshape(-1).round(6).tolist()) for r in reveals]
    assert opened[:-1] == _declared(method, result.kept_per_layer, result.high_per_layer)
    purpose, layer, to, value = opened[-1]
    assert (purpose, to) == ("final logits", "client")
    assert np.allclose(value, result.logits.reshape(-1), atol=1e-6)


def _party_share(x: np.ndarray, party: int, protocol: str, owner: str) -> np.ndarray:
    """The ring elements (FM64) that ``party`` holds when ``owner`` provides ``x``, built the way the
    engine builds them (``protocols.parties.make_shares`` with the session's runtime config and the
    session's ownership: private to the owner where the protocol keeps it so, else secret-shared)."""
    spec = SessionSpec(protocol=protocol)
    rank = OWNER_RANK[owner] if spec.keeps_private(owner) else None
    _, shares = make_shares(api.Io(2, spec.runtime_config(False)), x, rank)
    chunks = []
    for raw in shares[party].share_chunks:
        chunk = libspu.ValueChunk()
        chunk.ParseFromString(raw)
        chunks.append(chunk.content)
    return np.frombuffer(b"".join(chunks), dtype=np.uint64)


@pytest.mark.parametrize("owner", ["client", "server"])
@pytest.mark.parametrize("party", [0, 1])
def test_secret_shares_are_uniform_fresh_and_input_independent(owner: str, party: int) -> None:
    """SEMI2K secret-shares every input: each party's share is uniform, fresh and independent of the value."""
    n = 4096
    zeros, ones_big = np.zeros(n, np.float32), np.full(n, 1000.0, np.float32)
    a, b = _party_share(zeros, party, "SEMI2K", owner), _party_share(zeros, party, "SEMI2K", owner)
    c = _party_share(ones_big, party, "SEMI2K", owner)
    assert not np.array_equal(a, b), "two runs on the same input gave the same share"
    bits = ((a[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).astype(float)
    freq = bits.mean(axis=0)  # each of the 64 bit positions ≈ Bernoulli(1/2)
    assert np.all(np.abs(freq - 0.5) < 5 * 0.5 / np.sqrt(n)), freq
    top_a, top_c = (a >> np.uint64(48)).astype(float), (c >> np.uint64(48)).astype(float)
    assert stats.kstest(top_a / 2**16, "uniform").pvalue > 1e-4
    assert stats.ks_2samp(top_a, top_c).pvalue > 1e-4  # same distribution for very different inputs
    assert abs(np.corrcoef(top_a, top_c)[0, 1]) < 5 / np.sqrt(n)


@pytest.mark.parametrize("owner", ["client", "server"])
def test_private_inputs_give_the_peer_nothing(owner: str) -> None:
    """CHEETAH keeps each input private to its owner (the server's weights, the client's tokens):
    the peer's share is the same all-zero placeholder whatever the value, the owner's holds it."""
    peer = 1 - OWNER_RANK[owner]
    x, y = np.linspace(-3, 3, 64).astype(np.float32), np.full(64, 1000.0, np.float32)
    assert not np.any(_party_share(x, peer, "CHEETAH", owner)) and not np.any(_party_share(y, peer, "CHEETAH", owner))
    mine = _party_share(x, OWNER_RANK[owner], "CHEETAH", owner)
    np.testing.assert_allclose(mine.view(np.int64) / 2**18, x, atol=1e-5)        # FM64, 18 fraction bits
