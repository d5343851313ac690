"""Π_prune, Π_reduce and BOLT's word elimination as JAX kernels over secret shares.

Every kernel is a pure ``jax.numpy`` function: the runner (``protocols.secure_model``)
compiles it with SPU for the secure run and calls it directly for the plaintext run, so
both executions make the same decisions (up to fixed-point rounding of ``S``).
Notation: ``n`` tokens entering the layer, ``k`` kept, ``d`` hidden size, ``H`` heads,
``ℓ`` ring bits (64), a "comparison" is one secure millionaire/MSB protocol on ℓ bits
(Cheetah: O(ℓ) OT bits ≈ a few hundred bytes amortised, O(log ℓ) rounds).

Protocol outline (one layer; the mask steps are ``protocols.batch.prune_step`` /
``reduce_step``, which run them per input of a stacked batch)::

    R      = Σ_h Σ_j A_h[j, ·]                    local (sum of shares); layer 0: Reveals: nothing
                                                 Σ_j valid_j (…), a [1,n]×[n,n] product
    M, k   = [R > θ·H·n] ∧ valid, [CLS] kept      n comparisons                  Reveals: k
    P      = selection(M, k)                     prefix sum (local) + k·n eq.   Reveals: nothing
    h', v' = compact(P, h, valid)                one k×n·n×d secret matmul      Reveals: nothing

The importance score is ``S = R / (H·n)``; the masks compare ``R > θ·H·n`` instead of
``S > θ``: the same decision, but ``R`` is an exact sum of shares while ``S`` needs a
fixed-point truncation, which under SEMI2K/Cheetah is off by ±1 ulp at random and would make
ties ``S == θ`` (and scores within one ulp of θ) prune or keep by chance.

Π_reduce adds ``high = [S > β] ∧ M`` (n comparisons, reveals k_high) and stacks the
selection rows of the high group (destination ``Σ_<i high``) above those of the low group
(``Σ_<i low``), so the high group (with [CLS] first) precedes the low group in the *same*
one-hot matmul: still k·n equality tests and one k×n×d matmul, no extra pass. (Computing
``high·Σhigh + low·(k_high + Σlow)`` instead would put fixed-point products, and their
truncation error under Cheetah, in front of the equality tests.)

Cost comparison of the oblivious compaction (n tokens, p pruned, d = 768):

* CipherPrune's code: a bubble pass of compare-and-swap, ``p·(n−1) − p(p−1)/2`` steps,
  each one comparison + two d-wide multiplexers (d secret products): O(n·p·d) products,
  O(n·p) rounds.
* BOLT's word elimination: bitonic sort, O(n log² n) compare-exchange steps, each with a
  d-wide payload swap, O(log² n) rounds of comparisons.
* Here: n comparisons (mask) + k·n equality tests (selection) + one k×n×d matmul
  (Cheetah HE: ≈ one matmul of that shape) — O(1) rounds in n beyond the comparison
  depth. Measured (CHEETAH, 2 cores): ≈10 s / 27 MB at 128×768 vs 21–33 s for sort-based.
* BOLT WE here (``BOLT_WE_ALGORITHMS``): ``bitonic`` (the engine's, ``protocols.topk``) finds the
  ⌈n/2⌉-th largest score with half of a bitonic network plus a half-cleaner, then marks the kept
  tokens: 1,727 comparisons at n = 128 and 10,751 at n = 512, below bitonic sort's
  ½·m·log m·(log m + 1)/2 = 1,792 / 11,520, with the payload moved once by the selection matmul
  instead of at every compare-exchange. ``ranking`` (``rank_i = Σ_j [S_j > S_i]``, one n×n
  comparison matrix: n² + n comparisons in 2 comparison rounds) is the side-by-side reference
  of ``benchmark=prune`` (measured CHEETAH, BERT-base, n = 128, mask + selection matmul: 82.6 s /
  39.9 MB against 19.6 s / 4.65 MB for ``bitonic``; docs/archive/benchmarks.md).
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np

from protocols.topk import top_mask

# Scores lie in [0, 1]; [CLS] gets this to rank first in BOLT WE (exactly representable).
CLS_FORCE_SCORE: float = 4.0


def bolt_we_mask(scores: jnp.ndarray, *, keep: int, cls_index: int = 0, algorithm: str = "bitonic") -> jnp.ndarray:
    """BOLT WE: ``M_i = [rank_i < keep]`` with ``rank_i = #{j: S_j > S_i} + #{j < i: S_j = S_i}``,
    [CLS] forced first (its score replaced by ``CLS_FORCE_SCORE``), by ``algorithm`` (a key of
    ``BOLT_WE_ALGORITHMS``). ``scores`` ``[n]`` → ``M`` ``[n]``. Reveals: nothing (``keep = ⌈n/2⌉``
    is public)."""
    if algorithm not in BOLT_WE_ALGORITHMS:
        raise ValueError(f"algorithm={algorithm!r}: expected one of {sorted(BOLT_WE_ALGORITHMS)}")
    s = jnp.asarray(scores).at[cls_index].set(CLS_FORCE_SCORE)
    return BOLT_WE_ALGORITHMS[algorithm](s, keep)


def ranking_mask(s: jnp.ndarray, keep: int) -> jnp.ndarray:
    """``M_i = [rank_i < keep]`` by ranking every score against every other. Uses one n×n comparison
    matrix ``C[a, b] = [S_b > S_a]``: ``[S_j ≥ S_i] = 1 − C[j, i]`` gives the index
    tie-break without a second matrix. ``s`` ``[n]`` → ``M`` ``[n]``.
    Cost: n² comparisons (one vectorised step, O(log ℓ) rounds) + n comparisons with the
    public ``keep``. Reveals: nothing.
    """
    n = s.shape[0]
    c = s[None, :] > s[:, None]                                  # c[i, j] = [S_j > S_i]
    upper = np.triu(np.ones((n, n), bool), 1)                     # j > i (public)
    lower = np.tril(np.ones((n, n), bool), -1)                    # j < i (public)
    before = jnp.where(upper, c, False) | jnp.where(lower, jnp.logical_not(c.T), False)
    rank = jnp.sum(before.astype(s.dtype), axis=1)
    return (rank < keep).astype(s.dtype)


# Oblivious top-⌈n/2⌉ selections of BOLT WE: (scores with [CLS] forced, keep) → 0/1 mask [n].
BOLT_WE_ALGORITHMS: dict[str, Callable[[jnp.ndarray, int], jnp.ndarray]] = {
    "bitonic": top_mask, "ranking": ranking_mask}


def destinations(keep: jnp.ndarray) -> jnp.ndarray:
    """Destination row of each kept token, ``Σ_{j<i} M_j`` (original order) ``[n]``;
    meaningless where M = 0. Cost: local prefix sum. Reveals: nothing.
    """
    keep = jnp.asarray(keep)
    return jnp.cumsum(keep) - keep


def selection_hits(keep: jnp.ndarray, dest: jnp.ndarray, *, k: int, offset: int = 0) -> jnp.ndarray:
    """One-hot ``P[r, i] = M_i ∧ [dest_i = r]`` ``[k, n]`` bool (each kept token to its row).

    ``dest`` must be an exact integer (a prefix sum of exact 0/1 values: no fixed-point
    product, whose truncation error would break the equality test).
    Cost: k·n equality tests (≈ comparisons) + k·n AND gates. Reveals: nothing.
    """
    rows = np.arange(offset, offset + k, dtype=np.float32)[:, None]
    return jnp.logical_and(dest[None, :] == rows, jnp.asarray(keep)[None, :] > 0.5)


def selection(keep: jnp.ndarray, dest: jnp.ndarray, *, k: int, offset: int = 0) -> jnp.ndarray:
    """``selection_hits`` as 0/1 of ``dest``'s dtype ``[k, n]``."""
    return selection_hits(keep, dest, k=k, offset=offset).astype(dest.dtype)


def compact(p: jnp.ndarray, h: jnp.ndarray, valid: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Gather the kept rows: ``h' = P h`` ``[k, d]``, ``valid' = P valid`` ``[k]``.

    Cost: one secret k×n×n×d matmul (Cheetah: HE, O(k·d + n·d) ciphertext bytes) + k·n
    products. Reveals: nothing.
    """
    return p @ h, p @ valid


def prune_select(h: jnp.ndarray, keep: jnp.ndarray, valid: jnp.ndarray, *, k: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Π_prune's compaction in one program: destinations, selection, matmul → ``[k, d]``, ``[k]``."""
    return compact(selection(keep, destinations(keep), k=k), h, valid)


def reduce_hits(keep: jnp.ndarray, high: jnp.ndarray, *, k: int, k_high: int) -> jnp.ndarray:
    """Π_reduce's one-hot selection ``[k, n]`` bool: the high group's rows (in order, row 0 first
    when it is high) above the low group's. Cost: k·n equality tests. Reveals: nothing."""
    low = jnp.asarray(keep) - high                       # exact 0/1 (difference of exact 0/1)
    return jnp.concatenate([selection_hits(high, destinations(high), k=k_high),
                            selection_hits(low, destinations(low), k=k - k_high)], axis=0)


def reduce_select(h: jnp.ndarray, keep: jnp.ndarray, high: jnp.ndarray, valid: jnp.ndarray, *,
                  k: int, k_high: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Π_reduce's compaction: high group (original order, [CLS] first) then low group."""
    return compact(reduce_hits(keep, high, k=k, k_high=k_high).astype(h.dtype), h, valid)


def bolt_we_select(h: jnp.ndarray, scores: jnp.ndarray, valid: jnp.ndarray, *, keep: int,
                   algorithm: str = "bitonic", forced_index: int = 0) -> tuple[jnp.ndarray, jnp.ndarray]:
    """BOLT WE in one program: top-``keep`` mask (``algorithm``, row ``forced_index`` forced: 0 is
    BERT's [CLS], −1 GPT-2's last position), then the same selection matmul → ``[keep, d]``."""
    m = bolt_we_mask(scores, keep=keep, cls_index=forced_index, algorithm=algorithm)
    return compact(selection(m, destinations(m), k=keep), h, valid)
