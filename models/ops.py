"""Switchable non-linear ops: ``exact`` (torch) or ``emulated`` (the polynomial forms and
constants of ``models.approx``, optionally rounded to SPU's fixed point).

All functions are differentiable: ``floor``/``round`` use straight-through gradients, so
the same ops serve crypto-aware fine-tuning. No global state: every call takes its
``OpsConfig``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from models.approx import (
    ATTENTION_MASK_BIAS,
    DEFAULT_REDUCE_FORMS,
    FIXED_POINT,
    LN2,
    REDUCE_FORMS,
    ExpApprox,
    GeluApprox,
    ReduceForms,
    SquaringExp,
    family_of,
)
from models.config import OpsConfig

__all__ = ["fixed_point", "polyval", "gelu", "exp_approx", "exp_squaring", "softmax", "layernorm", "mask_bias"]
FAST = REDUCE_FORMS[DEFAULT_REDUCE_FORMS]


def fixed_point(x: torch.Tensor, fraction_bits: int = FIXED_POINT.fraction_bits) -> torch.Tensor:
    """Round ``x`` (any shape) to multiples of ``2**-fraction_bits``; identity gradient."""
    scale = float(2**fraction_bits)
    return x + (torch.round(x * scale) / scale - x).detach()


def _fxp(x: torch.Tensor, ops: OpsConfig) -> torch.Tensor:
    return fixed_point(x) if ops.fixed_point else x


def polyval(coeffs: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    """Horner evaluation, ``coeffs`` highest degree first (``numpy.polyval`` order)."""
    out = torch.full_like(x, coeffs[0])
    for c in coeffs[1:]:
        out = out * x + c
    return out


def _gelu_poly(x: torch.Tensor, approx: GeluApprox | None) -> torch.Tensor:
    """The GELU form ``0.5x + P(|x|)`` on ``|x| < clip`` with ``approx`` (BOLT's, BumbleBee's), or ReLU
    for ``None`` (Π_reduce's ``fast`` low form)."""
    if approx is None:
        return F.relu(x)
    inside = 0.5 * x + polyval(approx.coeffs, x.abs())
    return torch.where(x.abs() < approx.clip, inside, F.relu(x))


def gelu(
    x: torch.Tensor, ops: OpsConfig, low_rows: torch.Tensor | None = None, exact_kind: str = "erf",
    forms: ReduceForms = FAST,
) -> torch.Tensor:
    """GELU of ``x`` ``[..., n, d]``.

    Emulated: ``0.5x + P(|x|)`` on ``|x| < clip`` else ``relu`` with the family's GELU; rows where
    ``low_rows`` ``[..., n]`` (bool) is true use the low form ``forms.gelu`` (Π_reduce); a float
    ``low_rows`` in [0, 1] mixes the two forms by that weight (Π_reduce's soft mask in training).
    Exact: torch GELU (``exact_kind="erf"`` for BERT, ``"tanh"`` for GPT-2's ``gelu_new``).
    """
    if ops.mode == "exact":
        return F.gelu(x, approximate="tanh" if exact_kind == "tanh" else "none")
    y = _gelu_poly(x, family_of(ops.nonlinear).gelu)
    if low_rows is not None:
        y = _low_mix(y, _gelu_poly(x, forms.gelu), low_rows.unsqueeze(-1))
    return _fxp(y, ops)


def _low_mix(high: torch.Tensor, low: torch.Tensor, low_rows: torch.Tensor) -> torch.Tensor:
    """``low`` where the (broadcast) ``low_rows`` is true, or ``high + w·(low − high)`` for a float weight ``w``."""
    if low_rows.dtype == torch.bool:
        return torch.where(low_rows, low, high)
    return high + low_rows * (low - high)


def exp_approx(x: torch.Tensor, approx: ExpApprox) -> torch.Tensor:
    """BOLT exp for ``x <= 0``: ``z = floor(-x/ln2)``, ``p = x + z ln2``, ``Q(p) / 2**z``.

    Zero below ``approx.x_min = -z_max·ln2`` (the property's contract; note that the literal
    "z > z_max" rule of approx.py's module docstring would keep ``(x_min − ln2, x_min)``). ``z`` carries no gradient, so
    ``d/dx = Q'(p) / 2**z`` (straight-through through the floor).
    """
    x = torch.clamp(x, max=0.0)
    z = torch.floor((-x / LN2).detach())
    p = x + z * LN2
    y = polyval(approx.coeffs, p) * torch.exp2(-torch.clamp(z, max=approx.z_max + 1))
    return torch.where(x < approx.x_min, torch.zeros_like(y), y)


def exp_squaring(x: torch.Tensor, approx: SquaringExp) -> torch.Tensor:
    """``(1 + x/2^r)^(2^r)`` for ``x <= 0``, ``x`` clipped at ``approx.x_min``."""
    y = 1.0 + torch.clamp(x, min=approx.x_min) * (1.0 / 2**approx.squarings)
    for _ in range(approx.squarings):
        y = y * y
    return y


def _exp_form(x: torch.Tensor, approx: ExpApprox | SquaringExp) -> torch.Tensor:
    return exp_squaring(x, approx) if isinstance(approx, SquaringExp) else exp_approx(x, approx)


def softmax(
    scores: torch.Tensor,
    ops: OpsConfig,
    bias: torch.Tensor | None = None,
    low_rows: torch.Tensor | None = None,
    forms: ReduceForms = FAST,
) -> torch.Tensor:
    """Softmax over the last axis of ``scores`` ``[B, H, n, n]`` (query rows, key columns).

    ``bias`` (broadcastable, e.g. ``[B, 1, 1, n]``) is added first (``ATTENTION_MASK_BIAS`` for
    masked keys). Emulated: subtract the row max, the family's exp (``ops.nonlinear``; query rows with
    ``low_rows`` ``[B, n]`` true use the low exp ``forms.exp``, float weights mix them as in
    :func:`gelu`), divide by the row sum.
    """
    if bias is not None:
        scores = scores + bias
    if ops.mode == "exact":
        return torch.softmax(scores, dim=-1)
    x = scores - scores.amax(dim=-1, keepdim=True).detach()
    e = _exp_form(x, family_of(ops.nonlinear).exp)
    if low_rows is not None:
        e = _low_mix(e, _exp_form(x, forms.exp), low_rows[:, None, :, None])
    e = _fxp(e, ops)
    return _fxp(e / e.sum(dim=-1, keepdim=True), ops)


def layernorm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, ops: OpsConfig
) -> torch.Tensor:
    """LayerNorm over the last axis of ``x`` ``[..., d]``: mean, variance, ``rsqrt(var+eps)``."""
    if ops.mode == "exact":
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    mu = x.mean(dim=-1, keepdim=True)
    xc = x - mu
    var = _fxp((xc * xc).mean(dim=-1, keepdim=True), ops)
    inv = _fxp(torch.rsqrt(var + eps), ops)
    return _fxp(xc * inv * weight + bias, ops)


def mask_bias(keep: torch.Tensor) -> torch.Tensor:
    """Additive key bias ``[B, 1, 1, n]`` from a key mask ``keep`` ``[B, n]``.

    ``max(log m, ATTENTION_MASK_BIAS)``: hard masks give 0 or ``ATTENTION_MASK_BIAS``; soft
    masks in (0, 1) scale the softmax weight of a key by ``m``.
    """
    m = keep.to(torch.float32)
    b = torch.log(m.clamp_min(math.exp(ATTENTION_MASK_BIAS)))
    return b[:, None, None, :]
