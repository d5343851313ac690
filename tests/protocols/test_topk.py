"""Bitonic top-half selection (``protocols.topk``): exact against numpy, ≤ BOLT's bitonic-sort
comparison count at n = 128 and 512, and the same mask as the n×n ranking, in plaintext and SPU."""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from protocols import pruning as pr
from protocols import topk
from protocols.session import SessionSpec, TwoPartySession


def _numpy_top(scores: np.ndarray, keep: int) -> np.ndarray:
    """Independent reference: stable descending argsort (ties to the lower index)."""
    order = np.argsort(-scores.astype(np.float64), kind="stable")[:keep]
    mask = np.zeros(len(scores), np.float32)
    mask[order] = 1
    return mask


@pytest.mark.parametrize("n", [2, 3, 5, 8, 9, 33, 64, 100, 128])
def test_kth_largest_and_mask_match_numpy(n: int) -> None:
    rng = np.random.default_rng(n)
    for trial in range(4):
        # trial 0, 1: heavy ties (few distinct values, like padding's zero scores); 2, 3: distinct
        scores = (rng.integers(0, 4, n) / 8 if trial < 2 else rng.standard_normal(n)).astype(np.float32)
        for keep in sorted({1, (n + 1) // 2, max(1, n // 3)}):
            assert float(topk.kth_largest(jnp.asarray(scores), keep)) == np.sort(scores)[::-1][keep - 1]
            mask = np.asarray(topk.top_mask(jnp.asarray(scores), keep))
            np.testing.assert_array_equal(mask, _numpy_top(scores, keep))
            assert mask.sum() == keep


def test_keep_beyond_half_is_refused() -> None:
    with pytest.raises(ValueError, match="keep=5"):
        topk.kth_largest(jnp.zeros(8), 5)


@pytest.mark.parametrize("n, expected", [(128, 1727), (512, 10751)])
def test_comparisons_below_bitonic_sort(n: int, expected: int) -> None:
    """Counted in the program SPU compiles: the bitonic selection stays under BOLT's bitonic sort
    (1,792 / 11,520 compare-exchanges); the n×n ranking does not (n² + n)."""
    s = jnp.zeros(n)
    bitonic = topk.count_comparisons(pr.bolt_we_mask, s, keep=n // 2, algorithm="bitonic")
    ranking = topk.count_comparisons(pr.bolt_we_mask, s, keep=n // 2, algorithm="ranking")
    assert bitonic == {"comparisons": expected, "equalities": n}
    assert expected <= topk.bitonic_sort_comparisons(n) == {128: 1792, 512: 11520}[n]
    assert ranking == {"comparisons": n * n + n, "equalities": 0}


def test_comparison_counter_counts_only_secret_operands() -> None:
    """The counter is a measurement: a comparison of two secret [5] vectors counts 5, one against a
    public constant 5, one between constants 0, a max-reduction of 8 values 7, an equality 1."""
    def program(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
        public = jnp.arange(5) < 3
        return (a < b) & (a > 0.5) & public & (jnp.max(jnp.concatenate([a, b[:3]])) == a[0])

    assert topk.count_comparisons(program, jnp.zeros(5), jnp.zeros(5)) == {"comparisons": 17, "equalities": 1}


@pytest.mark.parametrize("protocol", ["SEMI2K", "CHEETAH"])
def test_secret_shared_selection_matches_ranking(protocol: str) -> None:
    """Scores secret-shared (as the engine's S, computed from shared attention): bitonic == ranking ==
    numpy, with ties and [CLS] forced first."""
    n = 40
    rng = np.random.default_rng(1)
    scores = (rng.integers(0, 5, n) / (5 * n)).astype(np.float32)
    ref = _numpy_top(np.where(np.arange(n) == 0, np.inf, scores), math.ceil(n / 2))
    with TwoPartySession(SessionSpec(protocol=protocol, private_owners=())) as s:
        s.share("S", scores, owner="client")
        for algorithm in ("bitonic", "ranking"):
            s.run(pr.bolt_we_mask, ["S"], ["M"], op="Prune", static={"keep": math.ceil(n / 2), "algorithm": algorithm})
            np.testing.assert_array_equal(np.round(np.asarray(s.reveal("M", purpose="test only"))), ref)
