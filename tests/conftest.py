"""Shared fixtures: secure sessions parameterised over protocol (REF2K and SEMI2K by default)."""
from __future__ import annotations

from typing import Iterator

import pytest

from protocols.session import Session, SessionSpec, TwoPartySession

FAST_PROTOCOLS = ("REF2K", "SEMI2K")


@pytest.fixture(scope="module", params=FAST_PROTOCOLS)
def secure_session(request: pytest.FixtureRequest) -> Iterator[Session]:
    """A threads-transport session per fast protocol, shared by a test module."""
    with TwoPartySession(SessionSpec(protocol=request.param)) as s:
        yield s
