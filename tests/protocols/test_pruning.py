"""Π_prune / Π_reduce / BOLT WE kernels: secure (REF2K, SEMI2K) == plaintext == numpy reference."""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import pytest

from protocols import pruning as pr
from protocols.batch import Layout, prune_step, reduce_step
from protocols.session import PlainSession, Session, SessionSpec, TwoPartySession


@pytest.fixture(scope="module", params=["plain", "REF2K", "SEMI2K", "CHEETAH"])
def session(request: pytest.FixtureRequest) -> Iterator[Session]:
    s = PlainSession() if request.param == "plain" else TwoPartySession(SessionSpec(protocol=request.param))
    with s:
        yield s


def _ref_mask(scores: np.ndarray, theta: float, valid: np.ndarray) -> np.ndarray:
    m = ((scores > theta) & (valid > 0)).astype(np.float32)
    m[0] = 1.0
    return m


def _probs_with_scores(scores: np.ndarray, heads: int = 2) -> np.ndarray:
    """Attention probs ``[H, n, n]`` whose importance equals ``scores`` (rows sum to 1 when Σ S = 1)."""
    n = scores.shape[0]
    return np.broadcast_to(scores[None, None, :], (heads, n, n)).astype(np.float32).copy()


def _run_mask(s: Session, scores: np.ndarray, theta: float, valid: np.ndarray, *, all_valid: bool = True,
              relative: bool = False, probs: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Π_prune's mask as a layer after a Π_prune runs it (``all_valid``: the scores sum every row;
    ``valid`` still masks the kept tokens), or as layer 0 of a padded input (``all_valid=False``:
    the padding query rows left out)."""
    s.share("A", _probs_with_scores(scores) if probs is None else probs, owner="client")
    s.share("theta", np.array([theta], np.float32), owner="server")
    s.share("valid", valid.astype(np.float32), owner="client")
    s.run(prune_step, ["A", "theta", "valid"], ["R", "M", "k"], op="Prune",
          static={"all_valid": all_valid, "relative": relative})
    k = int(round(float(np.asarray(s.reveal("k", purpose="kept count")).reshape(-1)[0])))
    return np.asarray(s.reveal("M", purpose="test only")), k


# Scores on a 1/64 grid (exact in fixed point), with ties at θ = 8/64.
TIE_SCORES = np.array([2, 8, 9, 8, 1, 12, 8, 16], np.float32) / 64.0


@pytest.mark.parametrize("theta, valid", [
    (8 / 64, np.array([1, 1, 1, 1, 1, 1, 1, 0])),       # ties at θ prune (strict >), pad pruned
    (1.0, np.ones(8)),                                   # all pruned except [CLS]
    (0.0, np.ones(8)),                                   # none pruned (all S > 0)
])
def test_prune_mask_matches_reference(session: Session, theta: float, valid: np.ndarray) -> None:
    m, k = _run_mask(session, TIE_SCORES, theta, valid)
    ref = _ref_mask(TIE_SCORES, theta, valid)
    np.testing.assert_array_equal(np.round(m), ref)
    assert k == int(ref.sum())


def _padded_probs(real: np.ndarray, n: int, heads: int = 2, seed: int = 0) -> np.ndarray:
    """``[H, n, n]`` probs of an input with ``c = len(real)`` real tokens padded to ``n``: every real
    query row puts ``real`` on the real keys; padding rows put random weights there, which the
    scores must ignore."""
    c = len(real)
    probs = np.zeros((heads, n, n), np.float32)
    probs[:, :c, :c] = real
    noise = np.random.default_rng(seed).random((heads, n - c, c)).astype(np.float32)
    probs[:, c:, :c] = noise / noise.sum(-1, keepdims=True)
    return probs


def test_layer0_scores_ignore_the_padding_rows(session: Session) -> None:
    """At layer 0 the scores average over the real query rows only, so the mask of an input padded
    from 6 to 8 tokens is the mask of the same 6 tokens unpadded, whatever the padding rows attend
    to. Relative (``c·S = R/H`` against θ, exact, ties dropped as in later layers) and absolute
    (``S = R/(H·c)``: one truncated product per row, so θ sits away from every score)."""
    real = np.array([4, 8, 9, 8, 1, 34], np.float32) / 64.0     # a real row, Σ = 1
    valid = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)
    relative_ref = ((6 * real > 6 * 8 / 64) | (np.arange(6) == 0)).astype(np.float32)
    m, k = _run_mask(session, real, 6 * 8 / 64, valid, all_valid=False, relative=True, probs=_padded_probs(real, 8))
    np.testing.assert_array_equal(np.round(m), [*relative_ref, 0, 0])
    assert k == int(relative_ref.sum()) == 3                   # the ties at 8/64 are dropped
    m, k = _run_mask(session, real, 8.5 / 64, valid, all_valid=False, probs=_padded_probs(real, 8, seed=1))
    np.testing.assert_array_equal(np.round(m), [1, 0, 1, 0, 0, 1, 0, 0])
    assert k == 3


def test_ties_decided_the_same_way_every_run(session: Session) -> None:
    """The mask compares the exact sum R with θ·H·n: no truncation, so SEMI2K/Cheetah's
    ±1-ulp probabilistic rounding cannot flip a tie (it did ~1 run in 10 with S > θ)."""
    valid = np.ones(8)
    ref = _ref_mask(TIE_SCORES, 8 / 64, valid)
    for _ in range(8):
        m, _ = _run_mask(session, TIE_SCORES, 8 / 64, valid)
        np.testing.assert_array_equal(m, ref)


def test_prune_select_keeps_original_order(session: Session) -> None:
    rng = np.random.default_rng(1)
    n, d = 8, 16
    h = rng.standard_normal((n, d)).astype(np.float32)
    valid = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)
    m = _ref_mask(TIE_SCORES, 8 / 64, valid)
    k = int(m.sum())
    session.share("h", h, owner="client")
    session.share("M", m, owner="client")
    session.share("valid", valid, owner="client")
    session.run(pr.prune_select, ["h", "M", "valid"], ["h2", "v2"], op="Prune", static={"k": k})
    out = np.asarray(session.reveal("h2", purpose="test only"))
    np.testing.assert_allclose(out, h[m > 0], atol=1e-3)
    np.testing.assert_allclose(np.asarray(session.reveal("v2", purpose="test only")), valid[m > 0], atol=1e-3)


@pytest.mark.parametrize("beta", [8 / 64, 10 / 64, 1.0])
def test_reduce_groups_high_then_low(session: Session, beta: float) -> None:
    rng = np.random.default_rng(2)
    n, d = 8, 16
    h = rng.standard_normal((n, d)).astype(np.float32)
    valid = np.ones(n, np.float32)
    theta = 4 / 64
    m = _ref_mask(TIE_SCORES, theta, valid)
    high = ((TIE_SCORES > beta) & (m > 0)).astype(np.float32)
    high[0] = 1.0
    heads_times_n = 16                           # R = S·H·n, as prune_step hands it over
    session.share("R", TIE_SCORES * heads_times_n, owner="client")
    session.share("beta", np.array([beta], np.float32), owner="server")
    session.share("M", m, owner="client")
    session.share("h", h, owner="client")
    session.share("valid", valid, owner="client")
    session.run(reduce_step, ["R", "beta", "M"], ["high", "kh"], op="Reduce", static={"layout": Layout((n,)), "heads": heads_times_n // n})
    kh = int(round(float(np.asarray(session.reveal("kh", purpose="high count")).reshape(-1)[0])))
    assert kh == int(high.sum())
    session.run(pr.reduce_select, ["h", "M", "high", "valid"], ["h2", "v2"], op="Reduce",
                static={"k": int(m.sum()), "k_high": kh})
    order = [i for i in range(n) if high[i]] + [i for i in range(n) if m[i] and not high[i]]
    assert order[0] == 0
    np.testing.assert_allclose(np.asarray(session.reveal("h2", purpose="test only")), h[order], atol=1e-3)


def _ref_bolt(scores: np.ndarray) -> np.ndarray:
    s = scores.astype(np.float64).copy()
    s[0] = math.inf
    order = np.argsort(-s, kind="stable")[: math.ceil(len(s) / 2)]
    m = np.zeros(len(s), np.float32)
    m[order] = 1
    return m


@pytest.mark.parametrize("algorithm", sorted(pr.BOLT_WE_ALGORITHMS))
@pytest.mark.parametrize("n", [7, 8])
def test_bolt_we_topk_with_ties(session: Session, n: int, algorithm: str) -> None:
    scores = TIE_SCORES[:n]
    rng = np.random.default_rng(3)
    h = rng.standard_normal((n, 8)).astype(np.float32)
    keep = math.ceil(n / 2)
    session.share("S", scores, owner="client")
    session.share("h", h, owner="client")
    session.share("valid", np.ones(n, np.float32), owner="client")
    session.run(pr.bolt_we_mask, ["S"], ["M"], op="Prune", static={"keep": keep, "algorithm": algorithm})
    ref = _ref_bolt(scores)
    np.testing.assert_array_equal(np.round(np.asarray(session.reveal("M", purpose="test only"))), ref)
    session.run(pr.bolt_we_select, ["h", "S", "valid"], ["h2", "v2"], op="Prune",
                static={"keep": keep, "algorithm": algorithm})
    np.testing.assert_allclose(np.asarray(session.reveal("h2", purpose="test only")), h[ref > 0], atol=1e-3)


def _prune_bytes(n: int, d: int) -> tuple[int, int]:
    """(mask bytes, selection+compaction bytes) of Π_prune at n tokens, k = n/2, SEMI2K."""
    rng = np.random.default_rng(n)
    scores = rng.permutation(n).astype(np.float32) / (n * n)
    theta = float(np.median(scores))
    with TwoPartySession(SessionSpec(protocol="SEMI2K")) as s:
        m, k = _run_mask(s, scores, theta, np.ones(n))
        s.share("h", rng.standard_normal((n, d)).astype(np.float32), owner="client")
        s.run(pr.prune_select, ["h", "M", "valid"], ["h2", "v2"], op="Prune", static={"k": k})
        progs = s.meter.report().programs
        return progs[0].bytes_total, progs[1].bytes_total


def test_prune_bytes_scale_as_declared() -> None:
    """Declared: mask = n comparisons (linear in n); selection = k·n equality tests + k·n
    products + a k×n×d matmul (k = n/2: quadratic in n for fixed d)."""
    d = 16
    sizes = [8, 16, 32]
    costs = [_prune_bytes(n, d) for n in sizes]
    for (m1, s1), (m2, s2) in zip(costs, costs[1:]):
        assert 1.6 < m2 / m1 < 2.4, costs          # linear
        assert 2.8 < s2 / s1 < 4.6, costs          # ~quadratic
