"""Several inputs in one program: their tokens stacked along axis 0, and the pruning
programs per input on that stack.

Why: under Cheetah a matmul with the server's weights has a per-call constant (about
d_out output polynomials whatever the number of rows), so a 16-token input pays almost
what a 128-token one does. Stacking B inputs' rows into one ``[Σ n_b, d]`` operand pays it
once per batch. Attention, pruning and compaction stay per input (input b only attends to
its own tokens; its kept count ``k_b`` is its own), so the decisions are exactly those of
running the inputs one at a time.

``Layout`` is the static (public) row layout: input b owns rows ``[offset_b, offset_b +
sizes[b])``; with Π_reduce the first ``high[b]`` of them are its high group. A causal model's
rows after Π_reduce (``shuffled``) are in an order only a secret *visibility* matrix knows:
``vis`` flat ``[Σ_b n_b²]`` int (input b's ``[n_b, n_b]`` block in batch order, ``vis[j, i] = 1``
when query row j may attend to key row i), which replaces the public causal mask. Inputs of equal
``(size, high)`` form one group whose attention runs as one batched op (``[g, H, n, n]``):
the same number of SPU ops, hence rounds, as a single input. Every row movement here is a
static slice or concatenation: local on shares, no communication.

Costs are those of ``protocols.pruning`` per input; the per-input kept counts ``k_b`` (and
``k_high_b``) are the only values revealed, as a ``[B]`` vector per layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import jax.numpy as jnp
import numpy as np

from protocols import pruning as pr


@dataclass(frozen=True)
class Layout:
    """Public row layout of a stacked batch: ``sizes[b]`` rows per input, optional Π_reduce
    high-group sizes ``high[b]`` (``None``: every row uses the high-degree approximations)."""

    sizes: tuple[int, ...]
    high: Optional[tuple[int, ...]] = None
    shuffled: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", tuple(int(n) for n in self.sizes))
        if not self.sizes or min(self.sizes) < 1:
            raise ValueError(f"Layout.sizes={self.sizes}: expected at least one input of at least one row")
        if self.high is not None:
            object.__setattr__(self, "high", tuple(int(k) for k in self.high))
            if len(self.high) != len(self.sizes) or any(not 0 <= k <= n for k, n in zip(self.high, self.sizes)):
                raise ValueError(f"Layout.high={self.high}: expected 0 <= high[b] <= sizes[b]={self.sizes}")

    @property
    def batch(self) -> int:
        return len(self.sizes)

    @property
    def total(self) -> int:
        return sum(self.sizes)

    @property
    def offsets(self) -> tuple[int, ...]:
        return tuple(int(o) for o in np.cumsum((0,) + self.sizes[:-1]))

    def high_of(self, b: int) -> Optional[int]:
        return None if self.high is None else self.high[b]

    def rows(self, x: Any, b: int) -> Any:
        """Input b's rows of a stacked array (jax or numpy; a static slice)."""
        o = self.offsets[b]
        return x[o:o + self.sizes[b]]

    def split(self, x: Any) -> list[Any]:
        """Every input's rows, in batch order."""
        return [self.rows(x, b) for b in range(self.batch)]

    def groups(self) -> list[tuple[int, Optional[int], tuple[int, ...]]]:
        """``(size, high, members)`` for inputs of equal size and high-group size, in order of
        first appearance (one group when all inputs are alike)."""
        keys: dict[tuple[int, Optional[int]], list[int]] = {}
        for b, n in enumerate(self.sizes):
            keys.setdefault((n, self.high_of(b)), []).append(b)
        return [(n, k, tuple(members)) for (n, k), members in keys.items()]

    def row_scale(self, heads: int, causal: bool = False) -> np.ndarray:
        """``R = S·scale``, public ``[total]``: ``H·n_b`` on each row of input b, or (``causal``) on
        its row i ``H·(n_b − i)``, the heads times the query rows that can see token i. A shuffled
        causal layout's scale is secret (``visible_scale``)."""
        if causal and self.shuffled:
            raise ValueError("Layout.row_scale: a shuffled causal layout's scale is secret (visible_scale)")
        if causal:
            return np.concatenate([heads * np.arange(n, 0, -1, dtype=np.float32) for n in self.sizes])
        return np.concatenate([np.full(n, float(heads * n), np.float32) for n in self.sizes])

    def forced_offsets(self, causal: bool = False) -> list[int]:
        """Row of each input's always-kept token: its first ([CLS]), or, ``causal``, the position
        whose logits predict the next token: its last row, or its first once Π_reduce has moved it
        there (``shuffled``)."""
        last = causal and not self.shuffled
        return [o + n - 1 if last else o for o, n in zip(self.offsets, self.sizes)]

    def forced_rows(self, causal: bool = False) -> np.ndarray:
        """1 on each input's always-kept row (``forced_offsets``), else 0: ``[total]`` public."""
        out = np.zeros(self.total, bool)
        out[self.forced_offsets(causal)] = True
        return out


def stack_group(x: jnp.ndarray, layout: Layout, members: tuple[int, ...]) -> jnp.ndarray:
    """Rows of ``members`` (all of one size n) as ``[g, n, ...]``."""
    return jnp.stack([layout.rows(x, b) for b in members])


def unstack_groups(parts: dict[int, jnp.ndarray], layout: Layout) -> jnp.ndarray:
    """Per-input arrays ``{b: [n_b, ...]}`` back to the stacked ``[total, ...]`` order."""
    return jnp.concatenate([parts[b] for b in range(layout.batch)], axis=0)


def segment_sums(x: jnp.ndarray, layout: Layout) -> jnp.ndarray:
    """``[B]``: the sum of each input's rows of ``x`` ``[total]`` (local)."""
    return jnp.stack([jnp.sum(part) for part in layout.split(x)])


def visibility_blocks(vis: jnp.ndarray, layout: Layout) -> list[jnp.ndarray]:
    """Input b's ``[n_b, n_b]`` block of the flat visibility ``vis`` (module doc), in batch order."""
    out, start = [], 0
    for n in layout.sizes:
        out.append(vis[start:start + n * n].reshape(n, n))
        start += n * n
    return out


def visible_scale(vis: jnp.ndarray, layout: Layout, heads: int) -> jnp.ndarray:
    """A shuffled causal layout's ``scale`` ``[total]`` int: ``H·Σ_j vis[j, i]``, the heads times
    the rows that see token i (``Layout.row_scale``'s ``H·(n − i)`` in the original order).
    Cost: local (sums of shares)."""
    return jnp.concatenate([heads * jnp.sum(v, axis=0) for v in visibility_blocks(vis, layout)])


def _scale(layout: Layout, heads: int, causal: bool, vis: Optional[jnp.ndarray]) -> Any:
    """``Layout.row_scale`` (public), or ``visible_scale`` (secret) when ``vis`` is given."""
    return layout.row_scale(heads, causal) if vis is None else visible_scale(vis, layout, heads)


def _above(received: jnp.ndarray, threshold: jnp.ndarray, member: jnp.ndarray, layout: Layout,
           heads: int, causal: bool, vis: Optional[jnp.ndarray] = None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``[R_i > t·scale_i] ∧ member_i`` (``_scale``) with each input's forced row in: exact 0/1
    ``[total]`` and the per-input counts ``[B]``. Ties ``S_i == t`` are dropped (strict ``>``), as
    in ``models.token_pruning.hard_prune_mask``. ``R`` is an exact sum of shares and, with a public
    scale, ``t·scale`` a secret × public integer (exact), so no truncation decides a tie; with a
    secret scale (shuffled causal rows) ``t·scale`` is one secret product per row, whose
    truncation (±1 ulp = 2^-18) may flip a score within that of the bound.
    Cost: ``total`` comparisons (n·O(ℓ) OT bits, O(log ℓ) rounds), + ``total`` secret products
    with ``vis``; boolean logic after them."""
    bound = threshold * _scale(layout, heads, causal, vis)
    mb = jnp.logical_or(jnp.logical_and(received > bound, member > 0.5), layout.forced_rows(causal))
    m = mb.astype(received.dtype)
    return m, segment_sums(m, layout)


def received_rows(probs: jnp.ndarray, layout: Layout, heads: int, valid: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """``R`` ``[total]``: attention each token received from its own input's queries, summed
    over heads (``probs`` flat, in ``Layout.groups`` order, as ``attention_probs`` returns it);
    with ``valid`` (the client's secret padding mask ``[total]``) over its real query rows only:
    ``R_i = Σ_j valid_j Σ_h A_h[j, i]``, so padding does not move a token's score. Cost: local
    sums; with ``valid`` one secret ``[1, n] × [n, n]`` product per input (n² multiplications)."""
    rows = layout.split(valid) if valid is not None else None
    parts: dict[int, jnp.ndarray] = {}
    for _, members, a in iter_groups(probs, layout, heads):
        if rows is None:
            sums = jnp.sum(a, axis=(1, 2))                    # [g, n]
        else:
            weights = jnp.stack([rows[b] for b in members])   # [g, n] query rows
            sums = jnp.einsum("gj,gji->gi", weights, jnp.sum(a, axis=1))
        parts.update({b: sums[i] for i, b in enumerate(members)})
    return unstack_groups(parts, layout)


def per_row(values: jnp.ndarray, layout: Layout) -> jnp.ndarray:
    """``[total]``: input b's entry of ``values`` ``[B]`` on each of its rows (local copies)."""
    return jnp.concatenate([jnp.broadcast_to(values[b], (n,)) for b, n in enumerate(layout.sizes)])


def iter_groups(flat: jnp.ndarray, layout: Layout, heads: int) -> list[tuple[int, tuple[int, ...], jnp.ndarray]]:
    """Split a flat ``[Σ_groups g·H·n·n]`` attention tensor into ``(n, members, [g, H, n, n])``."""
    out, start = [], 0
    for n, _, members in layout.groups():
        size = len(members) * heads * n * n
        out.append((n, members, flat[start:start + size].reshape(len(members), heads, n, n)))
        start += size
    return out


def _as_flat(probs: jnp.ndarray, layout: Optional[Layout], heads: Optional[int]) -> tuple[jnp.ndarray, Layout, int]:
    """One input's ``[H, n, n]`` probs (layout and heads read off the shape) or a flat batch."""
    if probs.ndim == 3:
        return probs.reshape(-1), layout or Layout((probs.shape[-1],)), probs.shape[0]
    if layout is None or heads is None:
        raise ValueError("flat attention probs need the batch's layout and heads")
    return probs, layout, heads


def prune_step(probs: jnp.ndarray, theta: jnp.ndarray, valid: jnp.ndarray, vis: Optional[jnp.ndarray] = None, *,
               layout: Optional[Layout] = None, heads: Optional[int] = None, relative: bool = False,
               all_valid: bool = False, causal: bool = False) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Π_prune's scores and mask: ``D`` ``[total]``, ``M`` ``[total]``, ``k`` ``[B]`` from
    ``probs`` flat (a batch) or ``[H, n, n]`` (one input). ``D`` is the decision score scaled so
    that ``D > θ·H·n`` (``_above``, a public bound) decides ``S > θ`` (absolute) or ``c·S > θ``
    (``relative``: the score relative to uniform attention), with ``S_i`` the attention token i
    receives averaged over heads and over the ``c`` real query rows.

    With ``all_valid`` (every row is a real token: any layer after a Π_prune, which drops padding)
    ``c = n`` is public: ``D = R`` (absolute) or ``R·n`` (relative), exact. Otherwise (layer 0 of a
    padded input; not causal) the padding query rows are left out (``received_rows`` with ``valid``)
    and ``c = Σ valid`` is the client's secret count: ``D = R·n`` (relative, exact: ``c·S = R/H``)
    or ``R·n/c`` (absolute: one secret reciprocal per input and one product per row, a fixed-point
    truncation, so scores within an ulp of θ may fall either way). Causal models (no padding)
    average over the rows that see each token. ``vis``: a shuffled causal layout's visibility
    (module doc), the scale then secret.
    Cost: ``total`` comparisons, + layer 0 of a padded input one ``[1, n] × [n, n]`` secret product
    per input (+ ``total`` products when absolute), + ``total`` products with ``vis``. Reveals:
    nothing (the runner reveals ``k``)."""
    if relative and causal:
        raise ValueError("prune_step: the relative criterion is not defined for causal models")
    probs, layout, heads = _as_flat(probs, layout, heads)
    padded = not (all_valid or causal)
    r = received_rows(probs, layout, heads, valid if padded else None)
    if relative:
        r = r * layout.row_scale(1)
    elif padded:
        r = r * per_row(jnp.asarray(layout.sizes, dtype=r.dtype) / segment_sums(valid, layout), layout)
    m, k = _above(r, theta[0], valid, layout, heads, causal, vis)
    return r, m, k


def reduce_step(received: jnp.ndarray, beta: jnp.ndarray, keep: jnp.ndarray, vis: Optional[jnp.ndarray] = None, *,
                layout: Layout, heads: int, causal: bool = False) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Π_reduce's grouping ``high = [S > β] ∧ M`` ``[total]`` and ``k_high`` ``[B]`` (``received`` as
    ``prune_step`` returns it, so β compares with what θ did: S or c·S; ``layout``, ``causal`` and
    ``vis`` as for ``prune_step``; the forced row is always high). Cost: ``total`` comparisons
    (+ ``total`` secret products with ``vis``)."""
    return _above(received, beta[0], keep, layout, heads, causal, vis)


def score_step(probs: jnp.ndarray, vis: Optional[jnp.ndarray] = None, *, layout: Optional[Layout] = None,
               heads: Optional[int] = None, causal: bool = False) -> jnp.ndarray:
    """Importance ``S = R / scale`` ``[total]`` (BOLT WE; ``Layout.row_scale``) where every row is a
    real token. Cost: local (one public scaling); with ``vis`` (shuffled causal rows: the plaintext
    reference's scores only) a secret division per row."""
    probs, layout, heads = _as_flat(probs, layout, heads)
    scale = layout.row_scale(heads, causal) if vis is None else visible_scale(vis, layout, heads).astype(probs.dtype)
    return received_rows(probs, layout, heads) * (1.0 / scale)


def padded_score_step(probs: jnp.ndarray, valid: jnp.ndarray, *, layout: Optional[Layout] = None,
                      heads: Optional[int] = None) -> jnp.ndarray:
    """``score_step`` at layer 0 of a padded input: the attention each token receives from the real
    query rows over ``H·c`` (``c = Σ valid``, as ``prune_step``). Cost: one ``[1, n] × [n, n]`` secret
    product and one reciprocal per input, a product per row."""
    probs, layout, heads = _as_flat(probs, layout, heads)
    inverse = 1.0 / (heads * segment_sums(valid, layout))
    return received_rows(probs, layout, heads, valid) * per_row(inverse, layout)


def prune_select(h: jnp.ndarray, keep: jnp.ndarray, valid: jnp.ndarray, *, layout: Layout,
                 k: tuple[int, ...]) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per input, ``pr.prune_select`` of its rows to its ``k_b`` kept (unchanged where
    ``k_b = n_b``) → ``[Σ k_b, d]``, ``[Σ k_b]``. Cost: Σ_b (k_b·n_b equality tests + one
    k_b×n_b×d matmul) over inputs that prune."""
    hs, vs = [], []
    for b, (hb, mb, vb) in enumerate(zip(layout.split(h), layout.split(keep), layout.split(valid))):
        if k[b] < layout.sizes[b]:
            hb, vb = pr.prune_select(hb, mb, vb, k=k[b])
        hs.append(hb)
        vs.append(vb)
    return jnp.concatenate(hs, axis=0), jnp.concatenate(vs)


def reduce_select(h: jnp.ndarray, keep: jnp.ndarray, high: jnp.ndarray, valid: jnp.ndarray, *, layout: Layout,
                  k: tuple[int, ...], k_high: tuple[int, ...]) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per input, ``pr.reduce_select`` (high group first, then the low group)."""
    parts = [pr.reduce_select(hb, mb, gb, vb, k=k[b], k_high=k_high[b])
             for b, (hb, mb, gb, vb) in enumerate(zip(layout.split(h), layout.split(keep), layout.split(high),
                                                      layout.split(valid)))]
    return jnp.concatenate([p[0] for p in parts], axis=0), jnp.concatenate([p[1] for p in parts])


def causal_reduce_select(h: jnp.ndarray, keep: jnp.ndarray, high: jnp.ndarray, valid: jnp.ndarray,
                         vis: Optional[jnp.ndarray] = None, *, layout: Layout, k: tuple[int, ...],
                         k_high: tuple[int, ...]) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Π_reduce's compaction for a causal model: per input the high group (the forced last position
    first, then the other high rows in their current order), then the low group, as for BERT
    (``pr.reduce_select``), and the visibility of the new order ``vis' = P·V·Pᵀ`` ``[k_b, k_b]``
    (``P`` the one-hot selection, ``V`` the public causal mask while the rows are in their original
    order, else input b's block of ``vis``). Before the first Π_reduce (``layout.shuffled`` False)
    the rows are first rotated by one (a public permutation: the last row first), so the forced
    position leads its high group and stays at row 0 from then on (``Layout.forced_offsets``).
    Returns ``h'`` ``[Σ k_b, d]``, ``valid'`` ``[Σ k_b]`` and the flat ``vis'`` ``[Σ k_b²]`` int.
    Cost per input beyond ``pr.reduce_select``: k·n bit-to-integer conversions of ``P``, the
    product ``P·V`` (local for the public ``V``; a k×n×n secret integer matmul otherwise) and one
    k×n×k secret integer matmul (exact: no truncation). Reveals: nothing."""
    blocks = None if vis is None else visibility_blocks(vis, layout)
    hs, vs, viss = [], [], []
    for b, (hb, mb, gb, vb) in enumerate(zip(layout.split(h), layout.split(keep), layout.split(high),
                                             layout.split(valid))):
        n = layout.sizes[b]
        seen: Any
        if blocks is None:                                 # original order: rotate the last row first
            hb, mb, gb, vb = (jnp.roll(x, 1, axis=0) for x in (hb, mb, gb, vb))
            seen = np.roll(np.tril(np.ones((n, n), np.int32)), (1, 1), axis=(0, 1))
        else:
            seen = blocks[b]
        hits = pr.reduce_hits(mb, gb, k=k[b], k_high=k_high[b])
        h2, v2 = pr.compact(hits.astype(hb.dtype), hb, vb)
        p = hits.astype(jnp.int32)
        hs.append(h2)
        vs.append(v2)
        viss.append(((p @ seen) @ p.T).reshape(-1))
    return jnp.concatenate(hs, axis=0), jnp.concatenate(vs), jnp.concatenate(viss)


def bolt_we_select(h: jnp.ndarray, scores: jnp.ndarray, valid: jnp.ndarray, *, layout: Layout,
                   keep: tuple[int, ...], causal: bool = False) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per input, ``pr.bolt_we_select`` keeping its top ``keep[b]`` tokens (its first row forced,
    or, ``causal``, its last), in their original order."""
    parts = [pr.bolt_we_select(hb, sb, vb, keep=keep[b], forced_index=-1 if causal else 0)
             for b, (hb, sb, vb) in enumerate(zip(layout.split(h), layout.split(scores), layout.split(valid)))]
    return jnp.concatenate([p[0] for p in parts], axis=0), jnp.concatenate([p[1] for p in parts])
