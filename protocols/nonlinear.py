"""Secure-friendly non-linear ops in JAX, parameterised by ``models.approx``.

The same functions run in plain JAX (the plaintext reference) and compiled by SPU (the
secure run); constants are never retyped here. Inputs are float arrays of any shape.
Costs are per element under Cheetah (ℓ = 64-bit ring): a comparison ≈ O(ℓ) OT bits and
O(log ℓ) rounds, a multiplication ≈ one OT-based product plus truncation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from models.approx import EXP_BOLT, GELU_BOLT, LN2, REDUCE_FORMS, ExpApprox, GeluApprox, SquaringExp, family_of


def polyval(coeffs: tuple[float, ...], x: jnp.ndarray) -> jnp.ndarray:
    """Horner evaluation, ``coeffs`` highest degree first. Cost: deg multiplications."""
    acc = jnp.full_like(x, coeffs[0])
    for c in coeffs[1:]:
        acc = acc * x + c
    return acc


def gelu(x: jnp.ndarray, approx: GeluApprox = GELU_BOLT) -> jnp.ndarray:
    """GELU as BOLT computes it: ``0.5 x + P(|x|)`` on ``|x| < clip``, else ``relu(x)`` (BumbleBee's
    seg3 GELU is this form with clip 3, ``models.approx.GELU_BUMBLEBEE``).

    Cost: 2 comparisons (|x|, the range test) and ``degree`` multiplications per element.
    """
    ax = jnp.abs(x)
    inner = 0.5 * x + polyval(approx.coeffs, ax)
    return jnp.where(ax < approx.clip, inner, 0.5 * (x + ax))


def relu(x: jnp.ndarray) -> jnp.ndarray:
    """``max(x, 0)``. Cost: 1 comparison and 1 multiplexer per element."""
    return jnp.maximum(x, 0.0)


def gelu_form(x: jnp.ndarray, approx: GeluApprox | None) -> jnp.ndarray:
    """``gelu(x, approx)``, or ReLU for ``None`` (Π_reduce's ``fast`` low form)."""
    return relu(x) if approx is None else gelu(x, approx)


def _pow2_neg(zi: jnp.ndarray, bits: int, dtype: jnp.dtype) -> jnp.ndarray:
    """``2**-z`` for an integer array ``0 <= zi < 2**bits`` by its binary digits:
    ``Π_b (1 - z_b (1 - 2**-(2**b)))``. Cost: ``bits`` bit extractions + ``bits`` products."""
    out = jnp.ones(zi.shape, dtype)
    for b in range(bits):
        bit = ((zi >> b) & 1).astype(dtype)
        out = out * (1.0 - bit * (1.0 - 2.0 ** -(2**b)))
    return out


def exp_nonpositive(x: jnp.ndarray, approx: ExpApprox = EXP_BOLT) -> jnp.ndarray:
    """``exp(x)`` for ``x <= 0`` by range reduction (BOLT), 0 below ``approx.x_min``.

    ``z = floor(-x / ln2)`` (clipped to ``[0, z_max]``), ``p = x + z ln2 ∈ (-ln2, 0]``,
    ``exp(x) ≈ Q(p) · 2**-z``. The floor is the fixed-point → int conversion itself (exact
    for ``t >= 0``), which saves SPU's separate ``floor`` (measured SEMI2K, 512 elements:
    0.80 MB → 0.59 MB, 62 → 55 estimated rounds). Cost per element: 3 comparisons (clip
    below/above, ``x < x_min``), 1 conversion, ``degree`` + ⌈log2(z_max+1)⌉ products,
    ⌈log2(z_max+1)⌉ bit extractions. Reveals: nothing.
    """
    # max(., 0): probabilistic truncation (Cheetah) may turn -x = 0 into -2^-f, whose floor is -1
    t = jnp.maximum(jnp.minimum(-x, -approx.x_min) * (1.0 / LN2), 0.0)
    zi = t.astype(jnp.int32)
    p = x + zi.astype(x.dtype) * LN2
    bits = max(1, int(approx.z_max).bit_length())
    value = polyval(approx.coeffs, p) * _pow2_neg(zi, bits, x.dtype)
    return jnp.where(x < approx.x_min, 0.0, value)


def exp_squaring(x: jnp.ndarray, approx: SquaringExp) -> jnp.ndarray:
    """``exp(x) ≈ (1 + x/2^r)^(2^r)`` for ``x <= 0``, ``x`` clipped at ``approx.x_min = −2^r`` (0 there).

    Cost per element: 1 comparison + 1 multiplexer (the clip), 1 public-constant product and ``r``
    secret products (squarings); no range reduction, conversion or bit extraction. Reveals: nothing.
    """
    y = 1.0 + jnp.maximum(x, approx.x_min) * (1.0 / 2**approx.squarings)
    for _ in range(approx.squarings):
        y = y * y
    return y


def softmax(x: jnp.ndarray, bias: jnp.ndarray | None = None,
            approx: ExpApprox | SquaringExp = EXP_BOLT) -> jnp.ndarray:
    """Row softmax over the last axis: subtract the row max, approximate exp (BOLT's range
    reduction for an ``ExpApprox``, repeated squaring for a ``SquaringExp``), divide.

    ``bias`` is added to the logits first (broadcast; padding keys get
    ``ATTENTION_MASK_BIAS``). Cost per row of n: n−1 comparisons (max), n exps, 1
    reciprocal, n products. Reveals: nothing.
    """
    if bias is not None:
        x = x + bias
    shifted = x - jnp.max(x, axis=-1, keepdims=True)
    e = exp_squaring(shifted, approx) if isinstance(approx, SquaringExp) else exp_nonpositive(shifted, approx)
    # One reciprocal per row, then a product: ``e / sum`` would make SPU divide every element
    # (measured SEMI2K, 2x32x32: 4.67 MB → 2.76 MB).
    return e * (1.0 / jnp.sum(e, axis=-1, keepdims=True))


def softmax_split(x: jnp.ndarray, bias: jnp.ndarray | None, k_high: int | None, forms: str,
                  family: str) -> jnp.ndarray:
    """Query rows (axis −2) ``[0:k_high]`` with the exp of ``FAMILIES[family]``, the rest with the
    low exp of ``REDUCE_FORMS[forms]``; a ``bias`` with query rows (a causal mask) is split with them."""
    high_exp = family_of(family).exp
    if k_high is None or k_high >= x.shape[-2]:
        return softmax(x, bias, high_exp)
    bias_high = bias_low = bias
    if bias is not None and bias.shape[-2] > 1:
        bias_high, bias_low = bias[..., :k_high, :], bias[..., k_high:, :]
    high = softmax(x[..., :k_high, :], bias_high, high_exp)
    low = softmax(x[..., k_high:, :], bias_low, REDUCE_FORMS[forms].exp)
    return jnp.concatenate([high, low], axis=-2)


def layernorm(x: jnp.ndarray, gamma: jnp.ndarray, beta: jnp.ndarray, eps: float) -> jnp.ndarray:
    """LayerNorm over the last axis with a reciprocal square root.

    Cost per row of d: d products (variance), 1 rsqrt (SPU: iterative), d products.
    """
    mu = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mu
    var = jnp.mean(centred * centred, axis=-1, keepdims=True)
    return centred * jax.lax.rsqrt(var + eps) * gamma + beta
