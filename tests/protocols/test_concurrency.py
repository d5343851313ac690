"""Two secure sessions at once on one machine (processes transport) do not collide."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from protocols import nonlinear as nl
from protocols.session import SessionSpec, TwoPartySession


def _gelu(x):
    return nl.gelu(x)


def _one(seed: int) -> float:
    x = np.random.default_rng(seed).normal(size=(8, 8)).astype(np.float32)
    with TwoPartySession(SessionSpec("SEMI2K", transport="processes")) as s:
        s.share("x", x, "client")
        s.run(_gelu, ["x"], ["y"], op="GELU")
        y = s.reveal("y", purpose="test")
    return float(np.max(np.abs(y - np.asarray(nl.gelu(x)))))


def test_two_sessions_at_once():
    with ThreadPoolExecutor(2) as pool:
        errors = list(pool.map(_one, [0, 1]))
    assert max(errors) < 1e-3
