"""Sessions: spec validation, share/run/reveal/delete, program cache, reveal log, processes
transport == threads transport (values and bytes), and party failure without hangs."""
from __future__ import annotations

import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protocols import nonlinear as nl
from protocols.session import PartyFailure, PlainSession, Session, SessionSpec, TwoPartySession


@pytest.mark.parametrize("kwargs, bad", [({"protocol": "SPDZ"}, "SPDZ"), ({"field": "FM16"}, "FM16"),
                                         ({"transport": "tcp"}, "tcp"), ({"fraction_bits": 40}, "40"),
                                         ({"recv_timeout_s": 0}, "0"), ({"heartbeat_s": 0}, "heartbeat_s=0"),
                                         ({"silence_timeout_s": -1.0}, "silence_timeout_s=-1.0")])
def test_spec_validation_names_bad_value(kwargs: dict, bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        SessionSpec(**kwargs)


def test_spec_defaults_come_from_approx() -> None:
    from models.approx import FIXED_POINT

    spec = SessionSpec()
    assert (spec.field, spec.fraction_bits, spec.protocol, spec.transport) == (FIXED_POINT.field, FIXED_POINT.fraction_bits,
                                                                             "SEMI2K", "threads")
    assert SessionSpec(protocol="ABY3").world_size == 3


def test_runtime_options_set_nested_fields_and_name_unknown_ones() -> None:
    """A family's SPU options reach the runtime config, a dotted name a nested config's field."""
    spec = SessionSpec(protocol="CHEETAH", runtime_options=(("cheetah_2pc_config.enable_mul_lsb_error", True),
                                                            ("experimental_disable_mmul_split", True)))
    cfg = spec.runtime_config(profile=False)
    assert cfg.cheetah_2pc_config.enable_mul_lsb_error and cfg.experimental_disable_mmul_split
    assert not SessionSpec(protocol="CHEETAH").runtime_config(profile=False).cheetah_2pc_config.enable_mul_lsb_error
    for name in ("cheetah_2pc_config.no_such_field", "no_such_config.enable_mul_lsb_error"):
        with pytest.raises(ValueError, match=f"RuntimeConfig has no field '{name}'"):
            SessionSpec(runtime_options=((name, True),)).runtime_config(profile=False)


def _two_outputs(x: jnp.ndarray, w: jnp.ndarray, scale: float) -> tuple[jnp.ndarray, jnp.ndarray]:
    y = x @ w
    return y * scale, jnp.sum(y, axis=0)


def test_share_run_reveal_delete(secure_session: Session) -> None:
    s = secure_session
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(4, 2)).astype(np.float32)
    s.share("x", x, "client")
    s.share("w", w, "server")
    assert s.shape("x") == (3, 4)
    with pytest.raises(ValueError, match="owner"):
        s.share("z", x, "eve")
    n_before = len(s.reveals)
    s.run(_two_outputs, ["x", "w"], ["y", "colsum"], op="Linear", layer=2, static={"scale": 0.5})
    assert s.shape("y") == (3, 2) and s.shape("colsum") == (2,)
    y = s.reveal("y", to="client", purpose="unit test")
    np.testing.assert_allclose(y, 0.5 * x @ w, atol=1e-3)
    np.testing.assert_allclose(s.reveal("colsum", purpose="unit test"), (x @ w).sum(0), atol=1e-3)
    rec = s.reveals[n_before]
    assert (rec.name, rec.to, rec.purpose, rec.shape) == ("y", "client", "unit test", (3, 2))
    np.testing.assert_allclose(rec.value, y)
    assert len(s.reveals) == n_before + 2
    # Program cache: same fn, static and shapes → no recompilation; new static → new program.
    n_prog = len(s._programs)
    s.run(_two_outputs, ["x", "w"], ["y2", "c2"], op="Linear", static={"scale": 0.5})
    assert len(s._programs) == n_prog
    s.run(_two_outputs, ["x", "w"], ["y3", "c3"], op="Linear", static={"scale": 2.0})
    assert len(s._programs) == n_prog + 1
    np.testing.assert_allclose(s.reveal("y3", purpose="t"), 2.0 * x @ w, atol=1e-3)
    s.delete("y", "colsum", "y2", "c2", "y3", "c3")
    with pytest.raises(KeyError):
        s.reveal("y", purpose="gone")
    with pytest.raises(ValueError, match="returns 2 values"):
        s.run(_two_outputs, ["x", "w"], ["only_one"], op="Linear", static={"scale": 1.0})
    with pytest.raises(ValueError, match="op class"):
        s.run(jnp.abs, ["x"], ["ax"], op="Bogus")


def test_plain_session_same_interface() -> None:
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    with PlainSession() as p:
        p.share("x", x, "client")
        p.run(nl.gelu, ["x"], ["y"], op="GELU")
        np.testing.assert_allclose(p.reveal("y", purpose="t"), np.asarray(nl.gelu(x)))


def _program(s: Session, x: np.ndarray) -> tuple[np.ndarray, int]:
    s.share("x", x, "client")
    s.run(nl.softmax, ["x"], ["y"], op="Softmax", layer=0)
    return s.reveal("y", purpose="t"), s.meter.report().bytes_total


def test_processes_match_threads() -> None:
    x = np.random.default_rng(1).normal(size=(2, 6)).astype(np.float32)
    with TwoPartySession(SessionSpec(protocol="SEMI2K")) as t:
        yt, bt = _program(t, x)
    with TwoPartySession(SessionSpec(protocol="SEMI2K", transport="processes")) as p:
        pids = p._parties.pids
        assert len(pids) == 2 and os.getpid() not in pids
        yp, bp = _program(p, x)
    np.testing.assert_allclose(yp, yt, atol=2e-3)
    assert bp == bt > 0  # same protocol, same program: SPU reports the same bytes
    for pid in pids:
        assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _slow(x: jnp.ndarray) -> jnp.ndarray:
    """~400 sequential secure comparisons: long enough to kill a party mid-run."""
    return jax.lax.fori_loop(0, 400, lambda i, v: jnp.where(v > 0.5, v * 0.9, v * 1.1 + 0.01), x)


def test_killed_party_raises_party_failure_quickly() -> None:
    s = TwoPartySession(SessionSpec(protocol="SEMI2K", transport="processes", recv_timeout_s=20.0))
    pids = s._parties.pids
    s.share("x", np.full((4,), 0.3, np.float32), "client")
    s.run(_slow, ["x"], ["y"], op="Other")  # compile + warm up
    killer = threading.Timer(0.3, os.kill, (pids[1], signal.SIGKILL))
    start = time.monotonic()
    killer.start()
    with pytest.raises(PartyFailure):
        for _ in range(50):  # the kill lands during one of these runs
            s.run(_slow, ["x"], ["y"], op="Other")
    elapsed = time.monotonic() - start
    killer.join()
    assert elapsed < 60.0
    with pytest.raises(PartyFailure, match="already failed"):
        s.reveal("x", purpose="after failure")
    s.close()
    time.sleep(0.2)
    for pid in pids:
        assert not _alive(pid), f"party process {pid} left behind"


def test_stopped_party_fails_the_session_within_the_silence_limit() -> None:
    """A party that hangs without dying (SIGSTOP: no reply, no heartbeat, its sockets still open):
    the next call fails within the silence limit (4 s here; SPU's own receive timeout, 60 s, never
    fires first), naming the silent party, and closing the session leaves no process behind."""
    spec = SessionSpec(protocol="SEMI2K", transport="processes", recv_timeout_s=60.0, silence_timeout_s=4.0,
                       heartbeat_s=0.5)
    s = TwoPartySession(spec)
    pids = s._parties.pids
    s.share("x", np.full((4,), 0.3, np.float32), "client")
    s.run(_slow, ["x"], ["y"], op="Other")
    os.kill(pids[1], signal.SIGSTOP)
    start = time.monotonic()
    with pytest.raises(PartyFailure, match=r"parties \[1\] did not answer within 4 s \(no reply, no heartbeat\)"):
        s.run(_slow, ["x"], ["y"], op="Other")
    elapsed = time.monotonic() - start
    assert 4.0 <= elapsed < 15.0, elapsed
    s.close()
    time.sleep(0.2)
    for pid in pids:
        assert not _alive(pid), f"party process {pid} left behind"


class _Sleep:
    """A party job (``run_on``) that keeps the party busy for ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def run(self) -> None:
        time.sleep(self.seconds)


def test_busy_party_outlives_the_silence_limit() -> None:
    """A command may take far longer than the coordinator's silence limit (here 3 s) while the party
    sends heartbeats; the session then goes on as usual."""
    spec = SessionSpec(protocol="SEMI2K", transport="processes", silence_timeout_s=3.0, heartbeat_s=0.5)
    assert (spec.silence_limit_s, spec.heartbeat_every_s) == (3.0, 0.5)
    assert SessionSpec(recv_timeout_s=8.0).silence_limit_s == 38.0 and SessionSpec(silence_timeout_s=8.0).heartbeat_every_s == 2.0
    with TwoPartySession(spec) as s:
        start = time.monotonic()
        s.run_on("server", _Sleep(8.0))
        assert time.monotonic() - start >= 8.0
        s.share("x", np.full((4,), 0.5, np.float32), "client")
        np.testing.assert_allclose(s.reveal("x", purpose="after the long job"), 0.5, atol=1e-4)


def test_aby3_three_parties() -> None:
    x = np.linspace(-3, 3, 8, dtype=np.float32).reshape(2, 4)
    with TwoPartySession(SessionSpec(protocol="ABY3")) as s:
        s.share("x", x, "server")
        s.run(nl.gelu, ["x"], ["y"], op="GELU")
        np.testing.assert_allclose(s.reveal("y", purpose="t"), np.asarray(nl.gelu(x)), atol=2e-3)
        assert s.meter.report().bytes_total > 0
