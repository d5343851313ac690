"""Fixed-point safety: secure ops against the plaintext reference over adversarially scaled inputs.

FM64 with 18 fraction bits holds |x| < 2^45 and products of two values need |x·y| < 2^45
before truncation, i.e. |x|, |y| ≲ 2^22 ≈ 4·10^6. The documented safe input ranges
(docs/testing.md), measured here: attention logits |s| ≤ 1e4 (the exp's
range reduction clips; masked keys add −64), GELU inputs |x| ≤ 1e4, LayerNorm rows with
standard deviation in [0.1, 300] (variance ≤ 1e5: SPU's reciprocal square root loses the
result at variance 1e6). Inside those ranges secure == plaintext within the tolerances
below; outside, the comparison with the plaintext reference exposes the failure.
"""
from __future__ import annotations

import numpy as np
import pytest

from protocols import nonlinear as nl
from protocols.session import PlainSession, SessionSpec, TwoPartySession


def _both(fn, *arrays: np.ndarray, **static) -> tuple[np.ndarray, np.ndarray]:
    outs = []
    for session in (PlainSession(), TwoPartySession(SessionSpec("SEMI2K"))):
        with session as s:
            names = [f"x{i}" for i in range(len(arrays))]
            for name, a in zip(names, arrays):
                s.share(name, a.astype(np.float32), "client")
            s.run(fn, names, ["y"], op="Other", static=static)
            outs.append(np.asarray(s.reveal("y", purpose="test")))
    return outs[0], outs[1]


def _softmax(x):
    return nl.softmax(x)


def _gelu(x):
    return nl.gelu(x)


def _layernorm(x, g, b):
    return nl.layernorm(x, g, b, 1e-5)


@pytest.mark.parametrize("scale", [1.0, 100.0, 1e4])
def test_softmax_safe_range(scale):
    rng = np.random.default_rng(0)
    x = rng.uniform(-scale, scale, (4, 64))
    plain, secure = _both(_softmax, x)
    assert np.max(np.abs(plain - secure)) < 2e-3


@pytest.mark.parametrize("scale", [1.0, 1e2, 1e4])
def test_gelu_safe_range(scale):
    x = np.random.default_rng(1).uniform(-scale, scale, (8, 64))
    plain, secure = _both(_gelu, x)
    assert np.max(np.abs(plain - secure) / np.maximum(1.0, np.abs(plain))) < 1e-3


@pytest.mark.parametrize("std", [1e-1, 1.0, 300.0])
def test_layernorm_safe_range(std):
    x = np.random.default_rng(2).normal(0, std, (4, 64))
    plain, secure = _both(_layernorm, x, np.ones(64), np.zeros(64))
    assert np.max(np.abs(plain - secure)) < 5e-3


@pytest.mark.parametrize("std", [1e3, 1e7])
def test_layernorm_outside_the_range_is_detected(std):
    """Variance ≥ 1e6 (and x² overflow at 1e7): the secure result is wrong, and the test sees it."""
    x = np.random.default_rng(3).normal(0, std, (4, 64))
    plain, secure = _both(_layernorm, x, np.ones(64), np.zeros(64))
    assert np.max(np.abs(plain - secure)) > 0.5
