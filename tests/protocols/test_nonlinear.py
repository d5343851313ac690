"""The non-linear ops of every family (BOLT's, BumbleBee's) and Π_reduce's low forms: plain JAX ==
numpy reference of the same formula; secure == reference within fixed-point tolerance (REF2K,
SEMI2K; one CHEETAH check); approximation error vs exact."""
from __future__ import annotations

import math
from itertools import count

import numpy as np
import pytest

from models.approx import (
    EXP_BOLT,
    EXP_BUMBLEBEE,
    EXP_LOW,
    EXP_SQUARING,
    FAMILIES,
    GELU_BOLT,
    GELU_BUMBLEBEE,
    GELU_LOW,
    LN2,
    REDUCE_FORMS,
    ExpApprox,
    GeluApprox,
    SquaringExp,
)
from protocols import nonlinear as nl
from protocols import transformer as tf
from protocols.batch import Layout
from protocols.session import Session, SessionSpec, TwoPartySession

_ids = count()
FXP_TOL = 2e-3  # 18 fraction bits; a few truncations per op
# every (family, Π_reduce low forms) pair a run may use
PAIRS = [(f, r) for f, family in sorted(FAMILIES.items()) for r in family.reduce_forms]


def ref_gelu(x: np.ndarray, a: GeluApprox | None) -> np.ndarray:
    if a is None:
        return np.maximum(x, 0.0)
    ax = np.abs(x)
    return np.where(ax < a.clip, 0.5 * x + np.polyval(a.coeffs, ax), np.maximum(x, 0.0))


def ref_exp(x: np.ndarray, a: ExpApprox | SquaringExp) -> np.ndarray:
    if isinstance(a, SquaringExp):
        r = a.squarings
        return (1.0 + np.maximum(x, a.x_min) / 2.0**r) ** (2**r)
    z = np.floor(-x / LN2)
    val = np.polyval(a.coeffs, x + z * LN2) * 2.0 ** -z
    return np.where(x < a.x_min, 0.0, val)


def ref_softmax(x: np.ndarray, a: ExpApprox | SquaringExp, bias: np.ndarray | None = None) -> np.ndarray:
    if bias is not None:
        x = x + bias
    e = ref_exp(x - x.max(-1, keepdims=True), a)
    return e / e.sum(-1, keepdims=True)


def exact_gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def secure(s: Session, fn, *arrays: np.ndarray, op: str = "Other", static=None) -> np.ndarray:
    tag = next(_ids)
    names = [f"in{tag}_{i}" for i in range(len(arrays))]
    for n, a in zip(names, arrays):
        s.share(n, a.astype(np.float32), "client")
    s.run(fn, names, [f"out{tag}"], op=op, static=static)
    out = s.reveal(f"out{tag}", purpose="test")
    s.delete(*names, f"out{tag}")
    return out


GRID = np.linspace(-6.0, 6.0, 97, dtype=np.float32)
NEG = np.concatenate([np.linspace(-12.0, 0.0, 80), [-0.0, -LN2, -2 * LN2, EXP_BOLT.x_min + 0.01,
                                                   EXP_BOLT.x_min - 0.01, -30.0]]).astype(np.float32)


@pytest.mark.parametrize(("a", "stated"), [(GELU_BOLT, 0.0094), (GELU_BUMBLEBEE, 0.0053), (GELU_LOW, 0.09)],
                         ids=["bolt", "bumblebee", "low"])
def test_gelu_plain_matches_reference_and_exact(a: GeluApprox, stated: float) -> None:
    """Each GELU form against its numpy formula and the exact GELU (approx.py: BOLT's max |Δ|
    0.0094, BumbleBee's 0.0053 with the same polynomial out to |x| < 3, LOW's 0.084)."""
    got = np.asarray(nl.gelu(GRID, a))
    np.testing.assert_allclose(got, ref_gelu(GRID, a), atol=1e-5)
    assert np.abs(got - exact_gelu(GRID.astype(np.float64))).max() < stated


def test_bumblebee_exp_plain_matches_reference_and_stated_error() -> None:
    """(1 + x/32)^32 clipped at −14: max |Δ| to exp 0.0085 (at x ≈ −2), and 1.0e-8 at and below −14,
    under the fixed point's 2^-18."""
    got = np.asarray(nl.exp_squaring(NEG, EXP_BUMBLEBEE)).astype(np.float64)
    np.testing.assert_allclose(got, ref_exp(NEG.astype(np.float64), EXP_BUMBLEBEE), rtol=1e-5, atol=1e-7)
    assert 0.008 < np.abs(got - np.exp(NEG.astype(np.float64))).max() < 0.0086
    assert np.all(got[NEG <= -14.0] < 2.0**-18)


def test_fast_low_forms_plain_match_reference_and_stated_error() -> None:
    """Π_reduce's ``fast`` forms: ReLU (max |Δ| to GELU 0.170 at x ≈ −0.75) and (1 + x/8)^8 (stated
    in approx.py: max |Δ| to exp 0.0353 over x ≤ 0; exactly 0 at and below −8)."""
    relu = np.asarray(nl.gelu_form(GRID, REDUCE_FORMS["fast"].gelu))
    np.testing.assert_array_equal(relu, np.maximum(GRID, 0.0))
    assert 0.16 < np.abs(relu - exact_gelu(GRID.astype(np.float64))).max() < 0.171
    got = np.asarray(nl.exp_squaring(NEG, EXP_SQUARING))
    np.testing.assert_allclose(got, ref_exp(NEG.astype(np.float64), EXP_SQUARING), atol=1e-6)
    assert 0.03 < np.abs(got - np.exp(NEG.astype(np.float64))).max() < 0.0354
    assert np.all(got[NEG <= EXP_SQUARING.x_min] == 0.0)


@pytest.mark.parametrize("a", [EXP_BOLT, EXP_LOW], ids=["high", "low"])
def test_exp_plain_matches_reference_and_exact(a: ExpApprox) -> None:
    got = np.asarray(nl.exp_nonpositive(NEG, a))
    np.testing.assert_allclose(got, ref_exp(NEG.astype(np.float64), a), atol=1e-6)
    rel = np.abs(got - np.exp(NEG.astype(np.float64)))[NEG >= a.x_min]
    assert rel.max() < (0.01 if a is EXP_BOLT else 0.035)  # LOW: max error 0.031 on (-ln2, 0]
    assert np.all(got[NEG < a.x_min] == 0.0)


@pytest.mark.parametrize(("family", "forms"), PAIRS)
def test_layernorm_and_splits_plain(family: str, forms: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 16)).astype(np.float32)
    g, b = rng.normal(size=16).astype(np.float32), rng.normal(size=16).astype(np.float32)
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * g + b
    np.testing.assert_allclose(np.asarray(nl.layernorm(x, g, b, 1e-5)), ref, atol=1e-4)
    low, high = REDUCE_FORMS[forms], FAMILIES[family]
    h = 3 * rng.normal(size=(6, 8)).astype(np.float32)
    want = np.concatenate([ref_gelu(h[:2], high.gelu), ref_gelu(h[2:], low.gelu)])
    got = tf.gelu(h, layout=Layout((6,), (2,)), forms=forms, family=family)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
    sc = rng.normal(size=(2, 6, 6)).astype(np.float32)
    want = np.concatenate([ref_softmax(sc[:, :4], high.exp), ref_softmax(sc[:, 4:], low.exp)], axis=1)
    np.testing.assert_allclose(np.asarray(nl.softmax_split(sc, None, 4, forms, family)), want, atol=1e-5)


def test_secure_gelu(secure_session: Session) -> None:
    x = GRID.reshape(1, -1)
    for a in (GELU_BOLT, GELU_BUMBLEBEE, GELU_LOW):
        got = secure(secure_session, nl.gelu, x, op="GELU", static={"approx": a})
        np.testing.assert_allclose(got, ref_gelu(x, a), atol=FXP_TOL)


def test_secure_exp(secure_session: Session) -> None:
    x = NEG.reshape(1, -1)
    for a in (EXP_BOLT, EXP_LOW):
        got = secure(secure_session, nl.exp_nonpositive, x, op="Softmax", static={"approx": a})
        x64 = x.astype(np.float64)
        # At x = -k ln2 fixed-point rounding may pick z = k or k - 1: both branches are valid
        # (the approximation itself jumps there by 2^-k |Q(0) - 2 Q(-ln2)|, 0.011 for LOW at k=1).
        z = np.round(-x64 / LN2)
        edge = (np.abs(x64 + z * LN2) < 1e-4) & (z >= 1)
        lower = np.polyval(a.coeffs, -LN2) * 2.0 ** -(z - 1)
        np.testing.assert_allclose(got[~edge], ref_exp(x64, a)[~edge], atol=FXP_TOL)
        assert np.all(np.minimum(np.abs(got - ref_exp(x64, a)), np.abs(got - lower))[edge] < FXP_TOL)
        assert np.all(got[x < a.x_min] == 0.0)


def test_secure_squaring_exp(secure_session: Session) -> None:
    """Both squaring exps (Π_reduce's fast low form, BumbleBee's high form) on SPU, down to −30:
    the clip keeps the base non-negative, so no squaring overflows."""
    x = NEG.reshape(1, -1)
    for a in (EXP_SQUARING, EXP_BUMBLEBEE):
        got = secure(secure_session, nl.exp_squaring, x, op="Softmax", static={"approx": a})
        np.testing.assert_allclose(got, ref_exp(x.astype(np.float64), a), atol=FXP_TOL)


def test_secure_softmax_with_mask(secure_session: Session) -> None:
    rng = np.random.default_rng(1)
    x = (2 * rng.normal(size=(2, 5, 7))).astype(np.float32)
    bias = np.zeros((1, 1, 7), np.float32)
    bias[..., -2:] = -64.0  # padding keys vanish exactly
    got = secure(secure_session, nl.softmax, x, bias, op="Softmax")
    want = ref_softmax(x.astype(np.float64), EXP_BOLT, bias)
    np.testing.assert_allclose(got, want, atol=FXP_TOL)
    assert np.all(got[..., -2:] == 0.0)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=5e-3)


def test_secure_layernorm(secure_session: Session) -> None:
    rng = np.random.default_rng(2)
    x = (3 * rng.normal(size=(4, 32))).astype(np.float32)
    g, b = rng.normal(size=32).astype(np.float32), rng.normal(size=32).astype(np.float32)
    got = secure(secure_session, nl.layernorm, x, g, b, op="LayerNorm", static={"eps": 1e-5})
    np.testing.assert_allclose(got, np.asarray(nl.layernorm(x, g, b, 1e-5)), atol=1e-2)


@pytest.mark.parametrize(("family", "forms"), PAIRS)
def test_secure_splits_match_reference(secure_session: Session, family: str, forms: str) -> None:
    """Secure high/low splits against the numpy reference of each form (not the same JAX code)."""
    rng = np.random.default_rng(3)
    low, high = REDUCE_FORMS[forms], FAMILIES[family]
    h = (2 * rng.normal(size=(5, 8))).astype(np.float32)
    static = {"forms": forms, "family": family}
    got = secure(secure_session, tf.gelu, h, op="GELU", static={"layout": Layout((5,), (2,)), **static})
    np.testing.assert_allclose(got, np.concatenate([ref_gelu(h[:2], high.gelu), ref_gelu(h[2:], low.gelu)]), atol=FXP_TOL)
    sc = (3 * rng.normal(size=(2, 5, 5))).astype(np.float32)
    got = secure(secure_session, nl.softmax_split, sc, op="Softmax", static={"bias": None, "k_high": 3, **static})
    want = np.concatenate([ref_softmax(sc[:, :3].astype(np.float64), high.exp),
                           ref_softmax(sc[:, 3:].astype(np.float64), low.exp)], axis=1)
    np.testing.assert_allclose(got, want, atol=FXP_TOL)


def test_cheetah_small() -> None:
    """One small CHEETAH check of every op (the protocol the benchmarks use)."""
    rng = np.random.default_rng(4)
    x = (2 * rng.normal(size=(2, 8))).astype(np.float32)
    with TwoPartySession(SessionSpec(protocol="CHEETAH")) as s:
        np.testing.assert_allclose(secure(s, nl.gelu, x, op="GELU"), ref_gelu(x, GELU_BOLT), atol=FXP_TOL)
        np.testing.assert_allclose(secure(s, nl.softmax, x, op="Softmax"), ref_softmax(x, EXP_BOLT), atol=FXP_TOL)
        g, b = np.ones(8, np.float32), np.zeros(8, np.float32)
        np.testing.assert_allclose(secure(s, nl.layernorm, x, g, b, op="LayerNorm", static={"eps": 1e-5}),
                                   np.asarray(nl.layernorm(x, g, b, 1e-5)), atol=1e-2)
        assert s.meter.report().bytes_total > 0
