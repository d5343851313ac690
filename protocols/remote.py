"""The coordinator's side of parties on any hosts (``SessionSpec.transport="remote"``).

``RemoteParties`` connects to each party daemon (``protocols.party``) at ``spec.parties`` with
the shared key, learns their SPU link addresses, and has them build their runtimes; from then on
it drives them like local processes (``ConnectedParties``): a party that errs, disconnects or
stays silent past ``recv_timeout_s`` fails the session with ``PartyFailure`` at once, an
unreachable one after ``connect_timeout_s``, a wrong key immediately. What the coordinator
receives: acknowledgements, party 0's SPU profile text, value metadata, the public part of
each ``provide`` and the shares of values it reveals (``Session.reveals``), nothing else.

``local_parties`` starts two daemons on this machine (optionally each in its own network
namespace) for tests and single-host runs.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from contextlib import contextmanager
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from protocols.parties import ConnectedParties
from protocols.spec import PartyFailure, SessionSpec, parse_address, read_authkey


def _connect(address: str, key: bytes, timeout_s: float) -> Any:
    """An authenticated connection to the daemon at ``address``, retried until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return Client(parse_address(address), authkey=key)
        except AuthenticationError as err:
            raise PartyFailure(f"party at {address} refused the control-channel key ({err}): both sides must "
                               "read the same authkey file") from err
        except OSError as err:
            if time.monotonic() > deadline:
                raise PartyFailure(f"party at {address} unreachable for {timeout_s:.0f} s ({err.strerror or err}); "
                                   "is `python -m protocols.party` running there?") from err
            time.sleep(0.2)


class RemoteParties(ConnectedParties):
    """Party daemons at ``spec.parties`` (rank order), one authenticated socket each."""

    def __init__(self, spec: SessionSpec) -> None:
        super().__init__(spec)
        key = read_authkey(spec.authkey_file)
        try:
            for address in spec.parties:
                self._conns.append(_connect(address, key, spec.connect_timeout_s))
            hellos = self._send_all([("hello", None)] * len(self._conns))
            ranks = [h["rank"] for h in hellos]
            if ranks != list(range(spec.world_size)):
                raise PartyFailure(f"parties {list(spec.parties)} answered as ranks {ranks}: list them in rank "
                                   "order (client, rank 0, first)")
            # each party binds its own link address and reaches the other at the address it advertises
            hosts = [[h["bind"] if r == rank else h["link"] for r, h in enumerate(hellos)] for rank in ranks]
            self._send_all([("init", (spec, hosts[rank])) for rank in ranks])
        except PartyFailure:
            self._kill()
            raise


def new_authkey(path: Path) -> Path:
    """Write a fresh random key (hex, 64 bytes) readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    return path


@contextmanager
def local_parties(authkey_file: Path, control: Sequence[str], link: Sequence[str],
                  netns: Optional[Sequence[str]] = None, log_dir: Optional[Path] = None,
                  bind: Optional[Sequence[str]] = None) -> Iterator[list[subprocess.Popen]]:
    """Two party daemons on this machine (each ``ip netns exec <ns>`` when ``netns`` is given),
    listening on ``control[r]`` with SPU link ``link[r]`` (bound at ``bind[r]`` when given); killed on exit."""
    procs, logs = [], []
    try:
        for rank in range(len(control)):
            cmd = [sys.executable, "-m", "protocols.party", "--rank", str(rank), "--listen", control[rank],
                   "--link", link[rank], "--authkey-file", str(authkey_file)]
            if bind:
                cmd += ["--link-bind", bind[rank]]
            if netns:
                cmd = ["ip", "netns", "exec", netns[rank], *cmd]
            out: Any = subprocess.DEVNULL
            if log_dir:
                out = open(log_dir / f"party{rank}.log", "w")  # closed in finally
                logs.append(out)
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1]))
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
        for fh in logs:
            fh.close()
