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

A ``NonlinearFamily`` (``FAMILIES``; a run's ``nonlinear=`` choice) fixes the high forms every
token gets: ``bolt`` (the paper's engine, the default) or ``bumblebee`` (SPU's own Cheetah
engine: exp by repeated squaring, a 3-segment GELU). Π_reduce gives the kept tokens of low
importance one of the ``REDUCE_FORMS`` the family allows (named in each checkpoint's
``thresholds.json`` with the family):

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
    ``x_min`` (``clip``; None: ``−2^r``, where the base and so the result is 0). A clip above
    ``−2^r`` leaves ``(1 + x_min/2^r)^(2^r)`` below it: BumbleBee's ``−14`` with ``r = 5`` leaves
    1.0e-8, under the fixed point's 2^-18 (3.8e-6). Cost per element: 1 comparison (the clip) and
    ``r`` products."""

    squarings: int
    clip: float | None = None

    def __post_init__(self) -> None:
        if self.squarings < 1 or (self.clip is not None and not -float(2**self.squarings) <= self.clip < 0):
            raise ValueError(f"SquaringExp(squarings={self.squarings}, clip={self.clip}): need squarings >= 1 "
                             f"and -2^squarings <= clip < 0 (below -2^squarings the base turns negative)")

    @property
    def x_min(self) -> float:
        return -float(2**self.squarings) if self.clip is None else self.clip


@dataclass(frozen=True)
class ReduceForms:
    """Π_reduce's low-group forms: ``gelu`` (``None``: ReLU) and the softmax's ``exp``."""

    gelu: GeluApprox | None
    exp: ExpApprox | SquaringExp


@dataclass(frozen=True)
class NonlinearFamily:
    """A secure engine's non-linearities: the GELU and softmax exp every token gets (Π_reduce's high
    group included), the Π_reduce low forms that stay cheaper than them (``REDUCE_FORMS`` keys), and
    the SPU runtime options the family runs with (``(field, value)``; a dotted field names a nested
    config, e.g. ``cheetah_2pc_config.enable_mul_lsb_error``)."""

    name: str
    gelu: GeluApprox
    exp: ExpApprox | SquaringExp
    reduce_forms: tuple[str, ...]
    runtime_options: tuple[tuple[str, bool | int], ...] = ()


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
GELU_BOLT = GeluApprox(
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
EXP_BOLT = ExpApprox(
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

# BumbleBee (NDSS'25; OpenBumbleBee's seg3 GELU): BOLT's degree-4 polynomial in |x| on |x| < 3, 0
# below −3 and x above 3 (ReLU outside, as BOLT's). Error against the exact GELU: max |Δ| 0.0052
# on the 1e-4 grid over [-8, 8] and on all-MiniLM-L6-v2's own GELU inputs (BOLT's: 0.0094 on both;
# tests/protocols/test_real_weights.py). OpenBumbleBee computes it on a 32-bit ring with 12
# fraction bits and a batched three-point comparison, C++ kernels SPU 0.9.5 does not have: here it
# runs in the session's ring with SPU's comparisons, the same operations as BOLT's GELU.
GELU_BUMBLEBEE = GeluApprox(coeffs=GELU_BOLT.coeffs, clip=3.0)

# BumbleBee's softmax exp: (1 + x/32)^32, inputs below −14 set to 0 (here clipped at −14, which
# leaves 1.0e-8, under the fixed point's resolution). Max |Δ| against exp over x <= 0: 0.0085 (at
# x ≈ −2); the softmax it gives is within 0.036 of the exact one on all-MiniLM-L6-v2's attention
# rows (BOLT's exp: 0.0008), which are close to one-hot, so a relative error of the exp shows.
EXP_BUMBLEBEE = SquaringExp(squarings=5, clip=-14.0)

FAMILIES: dict[str, NonlinearFamily] = {
    # the paper's (BOLT, S&P'24): both low-form sets are cheaper than its range-reduced exp
    "bolt": NonlinearFamily("bolt", GELU_BOLT, EXP_BOLT, reduce_forms=("fast", "polynomial")),
    # BumbleBee's: only the `fast` low forms (ReLU, 3 squarings) are cheaper than its own exp
    # (5 squarings); `polynomial`'s range reduction would cost more than the high form. Of its
    # published SPU settings, Cheetah's multiplication with an error in the last bit is the one SPU
    # 0.9.5 exposes that changes these programs (benchmark=reduce: fewer bytes for every form);
    # `fxp_exp_iters` sets SPU's own exp, which no program here calls; `approx_less_precision` is
    # OpenBumbleBee's, not SPU 0.9.5's; Cheetah's OT kind cannot be set from SPU 0.9.5's Python
    # binding (its enum is unregistered there).
    "bumblebee": NonlinearFamily("bumblebee", GELU_BUMBLEBEE, EXP_BUMBLEBEE, reduce_forms=("fast",),
                                 runtime_options=(("cheetah_2pc_config.enable_mul_lsb_error", True),)),
}
DEFAULT_FAMILY = "bolt"                # reproduces the paper's Table 1


def family_of(name: str, reduce_forms: str | None = None) -> NonlinearFamily:
    """``FAMILIES[name]``; ValueError naming the bad value for an unknown family, or for
    ``reduce_forms`` the family does not pair with its high forms."""
    if name not in FAMILIES:
        raise ValueError(f"nonlinear family {name!r}: expected one of {sorted(FAMILIES)}")
    family = FAMILIES[name]
    if reduce_forms is not None and reduce_forms not in family.reduce_forms:
        raise ValueError(f"reduce_forms={reduce_forms!r} with the {name} family: expected one of "
                         f"{list(family.reduce_forms)} (Π_reduce's low forms must cost less than the family's high forms)")
    return family


# SPU default encoding used by every secure run and by fixed-point emulation in torch.
FIXED_POINT = FixedPoint(field="FM64", fraction_bits=18)

LAYERNORM_EPS = 1e-12
# Additive attention bias for padding keys; exp(x) is 0 below EXP_*.x_min, so any value
# below that (and well inside FIXED_POINT.max_abs) removes a key exactly.
ATTENTION_MASK_BIAS = -64.0
