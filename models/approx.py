"""The one place where approximation constants live.

Every execution of the model imports these numbers: the torch model in ``models/``
(``exact`` / ``emulated`` ops used for crypto-aware fine-tuning) and the JAX model that
runs in plaintext or on SPU in ``protocols/``.  Nothing here imports torch, JAX, Hydra
or MLflow: only the standard library, so that both sides can import it cheaply.

Forms (x is a real number; all polynomials are in Horner-friendly coefficient order,
highest degree first, as ``numpy.polyval`` expects):

* GELU (BOLT): ``gelu(x) = 0.5 x + P(|x|)`` for ``|x| < clip``, else ``relu(x)``.
* exp for ``x <= 0`` (softmax after subtracting the row max; BOLT): ``z = floor(-x / ln2)``,
  ``p = x + z ln2`` in ``(-ln2, 0]``, ``exp(x) ~= Q(p) / 2**z``; for ``x < x_min = -z_max ln2``
  the result is 0 (so masked logits vanish instead of saturating at ``2**-z_max``).
* LayerNorm: mean, variance, then reciprocal square root of ``var + eps``.

``HIGH`` forms are BOLT's. Π_reduce gives the kept tokens of low importance one of the
``REDUCE_FORMS`` (named in each checkpoint's ``thresholds.json``):

* ``fast`` (the default): ReLU for GELU, and for exp the repeated squaring
  ``exp(x) ≈ (1 + x/2^r)^(2^r)`` (``SquaringExp``; x clipped at ``−2^r``, where it reaches 0): no
  range reduction, no fixed-point → integer conversion, no bit extraction. Measured under CHEETAH
  (BERT-base shapes, secret-shared inputs, ``benchmark=reduce``): the cheap forms' time and bytes
  are a fraction of BOLT's (see docs/archive/benchmarks.md).
* ``polynomial``: the lower-degree polynomials ``GELU_LOW`` / ``EXP_LOW``
  with BOLT's range reduction; they saved bytes but no time in this engine (SPU's exp cost is the
  range reduction, not the polynomial's degree).
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class GeluApprox:
    """``0.5 x + P(|x|)`` on ``|x| < clip``, ``relu(x)`` outside. ``coeffs`` highest degree first."""

    coeffs: tuple[float, ...]
    clip: float

    @property
    def degree(self) -> int:
        return len(self.coeffs) - 1


@dataclass(frozen=True)
class ExpApprox:
    """``exp(x)`` for ``x <= 0`` by range reduction to ``p`` in ``(-ln2, 0]``.

    ``coeffs`` is the polynomial ``Q(p)`` (highest degree first); results for
    ``x < -z_max * ln2`` are 0.
    """

    coeffs: tuple[float, ...]
    z_max: int

    @property
    def degree(self) -> int:
        return len(self.coeffs) - 1

    @property
    def x_min(self) -> float:
        """Smallest input with a non-zero result."""
        return -self.z_max * LN2


@dataclass(frozen=True)
class SquaringExp:
    """``exp(x) ≈ (1 + x/2^r)^(2^r)`` for ``x <= 0`` (``r = squarings``), with ``x`` clipped at
    ``x_min = −2^r``, where the base and so the result is 0. Cost per element: 1 comparison (the clip)
    and ``r`` products."""

    squarings: int

    @property
    def x_min(self) -> float:
        return -float(2**self.squarings)


@dataclass(frozen=True)
class ReduceForms:
    """Π_reduce's low-group forms: ``gelu`` (``None``: ReLU) and the softmax's ``exp``."""

    gelu: GeluApprox | None
    exp: ExpApprox | SquaringExp


# SPU's rings: field name -> bits (the one statement of it; sessions and config checks use it)
RING_BITS: dict[str, int] = {"FM32": 32, "FM64": 64, "FM128": 128}


@dataclass(frozen=True)
class FixedPoint:
    """SPU's fixed-point encoding: ring ``field`` (``FM64``: 64-bit) with ``fraction_bits``."""

    field: str
    fraction_bits: int

    @property
    def ring_bits(self) -> int:
        return RING_BITS[self.field]

    @property
    def scale(self) -> float:
        return float(2**self.fraction_bits)

    @property
    def max_abs(self) -> float:
        """Largest magnitude representable without wrap-around (sign bit reserved)."""
        return 2.0 ** (self.ring_bits - 1 - self.fraction_bits)


LN2 = math.log(2.0)

# BOLT's degree-4 GELU polynomial (EzPC `bert` branch), |x| < 2.7. Error against the exact
# (erf) GELU over all x: max |Δ| = 0.0094 (measured on a 1e-4 grid over [-8, 8]).
GELU_HIGH = GeluApprox(
    coeffs=(
        0.020848611754127593,
        -0.18352506127082727,
        0.5410550166368381,
        -0.03798164612714154,
        0.001620808531841547,
    ),
    clip=2.7,
)

# Degree-2 least-squares fit of GELU(x) - x/2 on |x| in [0, 2.7] (max error 0.084).
GELU_LOW = GeluApprox(coeffs=(0.058236, 0.38950313, -0.08375522), clip=2.7)

# BOLT's quadratic for exp on (-ln2, 0]: 0.3585 (p + 1.353)^2 + 0.344, expanded. With the range
# reduction, for -13 ln2 <= x <= 0: max relative error 0.0031, max |Δ| 0.0021 (same grid).
EXP_HIGH = ExpApprox(
    coeffs=(0.3585, 0.3585 * 2 * 1.353, 0.3585 * 1.353**2 + 0.344),
    z_max=13,
)

# Linear least-squares fit of exp on (-ln2, 0] (max error 0.031).
EXP_LOW = ExpApprox(coeffs=(0.71564515, 0.96938556), z_max=13)

# (1 + x/8)^8 on [-8, 0], 0 below: max |Δ| against exp over x <= 0 is 0.0353 (at x = -1.91; a 1e-4 grid).
EXP_SQUARING = SquaringExp(squarings=3)

REDUCE_FORMS: dict[str, ReduceForms] = {
    "fast": ReduceForms(gelu=None, exp=EXP_SQUARING),
    "polynomial": ReduceForms(gelu=GELU_LOW, exp=EXP_LOW),
}
DEFAULT_REDUCE_FORMS = "fast"          # what fine-tuning uses unless told otherwise

# SPU default encoding used by every secure run and by fixed-point emulation in torch.
FIXED_POINT = FixedPoint(field="FM64", fraction_bits=18)

LAYERNORM_EPS = 1e-12
# Additive attention bias for padding keys; exp(x) is 0 below EXP_*.x_min, so any value
# below that (and well inside FIXED_POINT.max_abs) removes a key exactly.
ATTENTION_MASK_BIAS = -64.0
