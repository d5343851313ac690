"""How a secure session runs (``SessionSpec``), who owns what, and the failure it raises.

Kept apart from ``protocols.session`` so that ``protocols.parties`` (the party runtimes)
and the session both import it without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol, runtime_checkable

from models.approx import FIXED_POINT, RING_BITS

PROTOCOLS = ("REF2K", "SEMI2K", "CHEETAH", "ABY3")
FIELDS = tuple(RING_BITS)
TRANSPORTS = ("threads", "processes", "remote")
OWNERS = ("client", "server")
# SPU rank of each data owner: the client is party 0, the server party 1.
OWNER_RANK = {"client": 0, "server": 1}
# Protocols on which SPU 0.9.5 keeps a value private to its owner (``Priv2k``, with
# ``experimental_enable_colocated_optimization``). Measured: under SEMI2K, REF2K and ABY3
# ``make_shares(..., owner_rank=r)`` still yields an additive sharing (the profile shows
# ``mmul_aa`` / ``mmul_ss`` for a matmul with a "private" weight), so there the session
# secret-shares and records that in ``Session.ownership``.
PRIVATE_PROTOCOLS = ("CHEETAH",)


def _is_address(text: str) -> bool:
    host, _, port = str(text).rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` → ``(host, port)``; ValueError naming the text otherwise."""
    if not _is_address(text):
        raise ValueError(f"party address {text!r}: expected host:port")
    host, _, port = text.rpartition(":")
    return host, int(port)


def read_authkey(path: Optional[str]) -> bytes:
    """The control channel's key: the bytes of ``path`` (stripped), else ``$CIPHERPRUNE_AUTHKEY``.
    There is no default; a missing, unreadable or short key is refused naming its source."""
    import os

    if path:
        try:
            key = Path(path).read_bytes().strip()
        except OSError as err:
            raise ValueError(f"authkey file {path!r}: {err.strerror}") from err
        source = f"authkey file {path!r}"
    else:
        key = os.environ.get("CIPHERPRUNE_AUTHKEY", "").encode()
        source = "$CIPHERPRUNE_AUTHKEY"
    if len(key) < 16:
        raise ValueError(f"{source}: a control-channel key of at least 16 bytes is required (got {len(key)})")
    return key


class PartyFailure(RuntimeError):
    """A party died, timed out or raised; the session is closed and its processes reaped."""


@dataclass(frozen=True)
class SessionSpec:
    """How to run: protocol, ring and fixed-point bits, transport, timeouts, sort method, and
    which owners keep their values private.

    ``private_owners``: the owners whose shared values stay private to them. The default is
    both: the server's weights, biases, LayerNorm parameters and thresholds are the server's
    own (the paper's threat model), and the client's embedded sequence and mask the client's
    until they meet the server's data (measured, one BERT-base layer batch of 8 × 16 tokens
    under CHEETAH: the embedding LayerNorm then runs mostly locally, 55.0 → 20.8 MB, and the
    layer itself is unchanged at 804.0 MB). A value of an owner listed here is a ``Priv2k``
    value of that party on protocols in ``PRIVATE_PROTOCOLS`` and secret-shared elsewhere;
    ``()`` secret-shares everything (the comparison ``benchmark=engine`` measures). Under
    CHEETAH a matmul of a secret activation with a server-private weight
    is ``mmul_sv`` (one HE product) instead of ``mmul_aa`` (two).
    """

    protocol: str = "SEMI2K"
    field: str = FIXED_POINT.field
    fraction_bits: int = FIXED_POINT.fraction_bits
    transport: str = "threads"
    connect_timeout_s: float = 30.0
    recv_timeout_s: float = 60.0   # SPU's link: a party waiting longer on its peer's message fails
    # the coordinator fails a party that sends nothing (no reply, no heartbeat) for this long
    # (None: recv_timeout_s + 30 s, so that SPU's own link timeout, more telling, fires first);
    # a busy party sends a heartbeat every heartbeat_s (at most a quarter of that limit)
    silence_timeout_s: Optional[float] = None
    heartbeat_s: float = 5.0
    sort_method: str = "SORT_RADIX"
    private_owners: tuple[str, ...] = ("server", "client")
    # further SPU RuntimeConfig fields (a non-linearity family's, experiments'), e.g.
    # (("experimental_disable_mmul_split", True),); a dotted name sets a nested config's field
    runtime_options: tuple[tuple[str, Any], ...] = ()
    # transport "remote": the control address ``host:port`` of each party daemon, in rank order
    # (``python -m protocols.party``), and the file holding the shared control-channel key
    parties: tuple[str, ...] = ()
    authkey_file: Optional[str] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "private_owners", tuple(self.private_owners))
        object.__setattr__(self, "parties", tuple(self.parties))
        if self.transport == "remote":
            if len(self.parties) != self.world_size or not all(_is_address(a) for a in self.parties):
                raise ValueError(f"session transport=remote needs {self.world_size} party addresses host:port in rank "
                                 f"order (client first), got parties={list(self.parties)}")
        bad = [o for o in self.private_owners if o not in OWNERS]
        if bad:
            raise ValueError(f"session private_owners={list(self.private_owners)}: {bad} not in {list(OWNERS)}")
        for name, value, allowed in (("protocol", self.protocol, PROTOCOLS), ("field", self.field, FIELDS),
                                     ("transport", self.transport, TRANSPORTS)):
            if value not in allowed:
                raise ValueError(f"session {name}={value!r}: expected one of {list(allowed)}")
        ring = RING_BITS[self.field]
        if not 0 < self.fraction_bits < ring // 2:
            raise ValueError(f"fraction_bits={self.fraction_bits}: must be in 1..{ring // 2 - 1} for {self.field}")
        if self.connect_timeout_s <= 0 or self.recv_timeout_s <= 0:
            raise ValueError(f"timeouts must be > 0, got connect={self.connect_timeout_s}, recv={self.recv_timeout_s}")
        if not self.heartbeat_s > 0 or (self.silence_timeout_s is not None and not self.silence_timeout_s > 0):
            raise ValueError(f"heartbeat_s={self.heartbeat_s} and silence_timeout_s={self.silence_timeout_s} must be > 0")

    @property
    def silence_limit_s(self) -> float:
        """Seconds the coordinator waits on a party that sends nothing before failing the session."""
        return self.recv_timeout_s + 30.0 if self.silence_timeout_s is None else self.silence_timeout_s

    @property
    def heartbeat_every_s(self) -> float:
        """How often a busy party reports: ``heartbeat_s``, at most a quarter of the silence limit."""
        return min(self.heartbeat_s, self.silence_limit_s / 4)

    @property
    def world_size(self) -> int:
        return 3 if self.protocol == "ABY3" else 2

    @property
    def supports_private(self) -> bool:
        """Whether this protocol keeps owner-private values private (else they are secret-shared)."""
        return self.protocol in PRIVATE_PROTOCOLS

    def keeps_private(self, owner: str) -> bool:
        """Whether a value of ``owner`` stays private to it in this session."""
        return owner in self.private_owners and self.supports_private

    def ownership_of(self, owner: str) -> str:
        """The leakage record's description of how a value of ``owner`` is held."""
        if self.keeps_private(owner):
            return f"private to the {owner} (party {OWNER_RANK[owner]})"
        if owner in self.private_owners:
            return f"secret-shared ({self.protocol} in SPU 0.9.5 has no private values; asked private to the {owner})"
        return "secret-shared"

    def runtime_config(self, profile: bool) -> Any:
        """SPU runtime config; ``profile`` turns on SPU's per-op (pphlo, HAL and MPC kernel) profile."""
        import spu.libspu as libspu

        cfg = libspu.RuntimeConfig(protocol=getattr(libspu.ProtocolKind, self.protocol),
                                   field=getattr(libspu.FieldType, self.field), fxp_fraction_bits=self.fraction_bits)
        cfg.sort_method = getattr(libspu.RuntimeConfig.SortMethod, self.sort_method)
        cfg.enable_pphlo_profile = profile
        cfg.enable_hal_profile = profile
        # needed on every runtime and on the Io, or make_shares silently drops the owner
        cfg.experimental_enable_colocated_optimization = bool(self.private_owners) and self.supports_private
        for name, value in self.runtime_options:
            *path, leaf = name.split(".")
            target = cfg
            for part in path:                  # a nested config, e.g. cheetah_2pc_config.enable_mul_lsb_error
                target = getattr(target, part, None)
            if target is None or not hasattr(target, leaf):
                raise ValueError(f"session runtime_options: SPU RuntimeConfig has no field {name!r}")
            setattr(target, leaf, value)
        return cfg


@runtime_checkable
class LoadsOwnData(Protocol):
    """Parties that load their own inputs and run jobs on their own side (``ConnectedParties``: one
    process or host per party), as opposed to ``ThreadParties``, where this process holds both."""

    def provide(self, owner_rank: int, request: Any, private: bool) -> tuple[list[tuple[str, tuple[int, ...], str]], Any]: ...

    def job(self, rank: int, job: Any) -> None: ...
