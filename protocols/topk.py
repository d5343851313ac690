"""Oblivious top-k selection over secret scores: a bitonic network, and a comparison counter.

BOLT's word elimination keeps the ``keep = ⌈n/2⌉`` highest-scoring tokens. BOLT itself sorts the
n scores with a bitonic network, ``½·m·log m·(log m + 1)/2`` compare-exchanges for ``m`` (n rounded
up to a power of two), in ``log m·(log m + 1)/2`` sequential stages. This module finds the
``keep``-th largest score ``t`` with *part* of that network and then marks the kept tokens:

1. pad the scores to ``m`` with the public value ``PAD_SCORE`` (below every real score);
2. run the bitonic sort's stages up to block size ``m/2``: the first half ends ascending and
   the second descending, i.e. the whole vector is bitonic;
3. one half-cleaner (``m/2`` comparisons): ``max(x_i, x_{i+m/2})`` is exactly the multiset of
   the ``m/2`` largest scores (a bitonic sequence's half-cleaner property);
4. ``t`` = the ``keep``-th largest of those: their minimum when ``keep = m/2`` (a min-tree,
   ``m/2 − 1`` comparisons), otherwise a bitonic merge of that (bitonic) half, ``(m/4)·log(m/2)``
   comparisons, and the element at the public index ``m/2 − keep``;
5. ``M_i = [s_i > t] + [s_i = t]·[e_i < keep − g]`` with ``g = Σ[s > t]`` and ``e_i`` the ties
   before i (a local prefix sum): ``n`` comparisons, ``n`` equality tests and ``n`` comparisons on
   small integers. Ties go to the lower index, as in the n×n ranking (``pruning.bolt_we_mask``).

Comparisons at n = 128: 1,344 + 64 + 63 + 128 + 128 = 1,727 (+128 equality tests) against the
bitonic sort's 1,792; at n = 512: 10,751 (+512) against 11,520; the n×n ranking: n² + n = 16,512
and 262,656. Each stage is one vectorised comparison (``O(log ℓ)`` rounds), so the selection takes
``log(m/2)·(log(m/2)+1)/2 + 1 + log(m/2) + 2`` comparison rounds (28 at n = 128, 48 at n = 512)
where the ranking takes 2. Compare-exchanges move only the score (no payload: the kept tokens are
gathered afterwards by the same one-hot selection matmul as Π_prune), with two multiplexers each
(``jnp.where`` on the comparison bit: an integer-times-fixed-point product, no truncation, so
scores stay exact and ties stay ties). Reveals: nothing.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

# Below every importance score (scores are ≥ 0; [CLS] is forced to pruning.CLS_FORCE_SCORE).
PAD_SCORE: float = -1.0
# Primitives SPU evaluates with a secure comparison (one per output element) or an equality test.
COMPARISON_PRIMITIVES = frozenset({"lt", "gt", "le", "ge", "max", "min", "reduce_max", "reduce_min",
                                   "argmax", "argmin"})
EQUALITY_PRIMITIVES = frozenset({"eq", "ne"})


def _stage(x: jnp.ndarray, block: int, stride: int) -> jnp.ndarray:
    """One network stage of bitonic sort at (block size, stride): every ``i`` with ``i & stride == 0``
    is compared with ``i + stride`` and the smaller goes first where ``i & block == 0`` (ascending),
    last elsewhere. The pairs are the two halves of a ``[m/(2·stride), 2, stride]`` view (slices, no
    gather). One vectorised comparison and two multiplexers per pair (not ``a + b − min``: exact on
    shares but not in the plaintext twin's floats, where ties must stay ties)."""
    m = x.shape[0]
    pairs = x.reshape(m // (2 * stride), 2, stride)
    a, b = pairs[:, 0, :], pairs[:, 1, :]
    less = a < b
    smaller, larger = jnp.where(less, a, b), jnp.where(less, b, a)
    first_index = np.arange(m).reshape(m // (2 * stride), 2, stride)[:, 0, :]
    ascending = (first_index & block) == 0                      # public
    first = jnp.where(ascending, smaller, larger)               # public choice: local
    second = jnp.where(ascending, larger, smaller)
    return jnp.stack([first, second], axis=1).reshape(m)


def _merge(x: jnp.ndarray, block: int) -> jnp.ndarray:
    """Bitonic merge stages of one block size (strides block/2, …, 1)."""
    stride = block // 2
    while stride >= 1:
        x = _stage(x, block, stride)
        stride //= 2
    return x


def kth_largest(scores: jnp.ndarray, keep: int) -> jnp.ndarray:
    """The ``keep``-th largest entry of ``scores`` ``[n]`` (``1 ≤ keep ≤ ⌈n/2⌉``), as a ``[]`` value.

    Cost (m = n rounded up to a power of two): ``(m/2)·log(m/2)·(log(m/2)+1)/2 + m/2`` comparisons,
    then ``m/2 − 1`` (keep = m/2) or ``(m/4)·log(m/2)`` (other keep). Reveals: nothing.
    """
    n = scores.shape[0]
    if not 1 <= keep <= (n + 1) // 2:
        raise ValueError(f"keep={keep}: expected 1 <= keep <= ceil(n/2) = {(n + 1) // 2} for n={n}")
    m = 1 << max(1, (n - 1).bit_length())
    x = jnp.concatenate([scores, jnp.full((m - n,), PAD_SCORE, scores.dtype)]) if m > n else scores
    block = 2
    while block <= m // 2:
        x = _merge(x, block)
        block *= 2
    half = m // 2
    top = jnp.maximum(x[:half], x[half:])                        # the m/2 largest, as a bitonic sequence
    if keep == half:
        return jnp.min(top)
    ordered = _merge(top, half) if half > 1 else top             # ascending (block = half: all ascending)
    return ordered[half - keep]


def top_mask(scores: jnp.ndarray, keep: int) -> jnp.ndarray:
    """``M_i = [rank_i < keep]``, ``rank_i = #{j: s_j > s_i} + #{j < i: s_j = s_i}``, ``[n]`` → ``[n]``
    (0/1 in the scores' dtype), via ``kth_largest``. Cost: see the module docstring. Reveals: nothing.
    """
    t = kth_largest(scores, keep)
    greater = (scores > t).astype(scores.dtype)
    tied = (scores == t).astype(scores.dtype)
    before = jnp.cumsum(tied) - tied                              # exact small integers (local)
    room = keep - jnp.sum(greater)                                # ties still to keep (≥ 1)
    return greater + tied * (before < room).astype(scores.dtype)


def count_comparisons(fn: Callable[..., Any], *args: Any, **static: Any) -> dict[str, int]:
    """Secure comparisons and equality tests the program ``fn(*args, **static)`` asks SPU for: output
    elements of every comparison / equality primitive of its jaxpr (``jax.make_jaxpr``, nested
    jaxprs included) with at least one input derived from ``args`` (every arg is taken as secret;
    comparisons of public constants, e.g. index bounds checks, are free). A min/max reduction over
    N elements to M counts N − M. Returns ``{"comparisons": …, "equalities": …}``."""
    counts = {"comparisons": 0, "equalities": 0}

    def walk(jaxpr: Any, secret: set[Any]) -> None:
        for eqn in jaxpr.eqns:
            if not any(not isinstance(v, jax.core.Literal) and v in secret for v in eqn.invars):
                continue
            secret.update(eqn.outvars)
            name = eqn.primitive.name
            size = sum(int(np.prod(v.aval.shape)) for v in eqn.outvars)
            if name in ("reduce_max", "reduce_min"):
                size = int(np.prod(eqn.invars[0].aval.shape)) - size
            if name in COMPARISON_PRIMITIVES:
                counts["comparisons"] += size
            elif name in EQUALITY_PRIMITIVES:
                counts["equalities"] += size
            for param in eqn.params.values():          # pjit / custom_jvp bodies: their inputs as secret
                body = param.jaxpr if isinstance(param, jax.core.ClosedJaxpr) else param
                if isinstance(body, jax.core.Jaxpr):
                    walk(body, set(body.invars))

    closed = jax.make_jaxpr(lambda *a: fn(*a, **static))(*args)
    walk(closed.jaxpr, set(closed.jaxpr.invars))
    return counts


def bitonic_sort_comparisons(n: int) -> int:
    """Compare-exchanges of a full bitonic sort of n values (padded to m = 2^⌈log₂ n⌉):
    ``(m/2)·log m·(log m + 1)/2`` (BOLT's word elimination)."""
    m = 1 << max(1, (n - 1).bit_length())
    log_m = m.bit_length() - 1
    return m // 2 * log_m * (log_m + 1) // 2
