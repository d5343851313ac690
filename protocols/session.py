"""Two-party sessions on SPU, and a plaintext session with the same interface.

A session holds named secret values in each party's SPU runtime across programs, so a
program can reveal a count and the next one can be compiled for a smaller static shape.
Programs are JAX functions ``fn(*inputs, **static)`` when ``static`` is a dict (the
convention used across ``protocols/``) or ``fn(*inputs, *static)`` when it is a tuple;
static values are Python constants (ints, floats, approx objects) baked into the program; compiled code is cached by
(function, static arguments, input shapes) and re-labelled with the variable names.

``PlainSession`` runs the very same programs in plain JAX: it is the plaintext reference
that secure runs are compared with (same code path, same pruning decisions).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from protocols.meter import CostMeter, ProgramCost, estimate_rounds, parse_kernels, parse_profile
from protocols.parties import ProcessParties, ThreadParties, make_shares, process_log
from protocols.spec import OWNER_RANK, OWNERS, LoadsOwnData, PartyFailure, SessionSpec

Static = Optional[dict[str, Any] | tuple[Any, ...]]


@dataclass(frozen=True)
class RevealRecord:
    """One opened value: the leakage log of a session."""

    name: str
    to: str
    purpose: str
    layer: Optional[int]
    value: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "to": self.to, "purpose": self.purpose, "layer": self.layer,
                "shape": list(self.value.shape), "value": self.value.tolist()}


@dataclass
class _Program:
    code: bytes
    outputs: list[tuple[tuple[int, ...], np.dtype]]


@dataclass
class Session:
    """Common bookkeeping: variable shapes, program cache, reveals, meter."""

    meter: CostMeter = field(default_factory=CostMeter)
    reveals: list[RevealRecord] = field(default_factory=list)
    ownership: dict[str, str] = field(default_factory=dict)   # variable -> how it is held (leakage record)
    _meta: dict[str, tuple[tuple[int, ...], np.dtype]] = field(default_factory=dict)
    _programs: dict[tuple, _Program] = field(default_factory=dict)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._meta[name][0]

    def has(self, name: str) -> bool:
        return name in self._meta

    def _check_inputs(self, inputs: Sequence[str]) -> None:
        missing = [n for n in inputs if n not in self._meta]
        if missing:
            raise KeyError(f"session has no variable(s) {missing}")

    def _record_reveal(self, name: str, to: str, purpose: str, layer: Optional[int], value: np.ndarray) -> np.ndarray:
        self.reveals.append(RevealRecord(name, to, purpose, layer, np.array(value, copy=True)))
        return value

    def share(self, name: str, value: np.ndarray, owner: str) -> None:
        """Bring ``owner``'s ``value`` into the session as variable ``name``."""
        raise NotImplementedError

    def run(self, fn: Callable[..., Any], inputs: Sequence[str], outputs: Sequence[str], *, op: str,
            layer: Optional[int] = None, static: Static = None) -> None:
        """Run the program ``fn`` on variables ``inputs``, binding its results to ``outputs``."""
        raise NotImplementedError

    def reveal(self, name: str, *, to: str = "both", purpose: str, layer: Optional[int] = None) -> np.ndarray:
        """Open ``name`` to ``to`` (recorded in ``reveals``)."""
        raise NotImplementedError

    def provide(self, owner: str, request: Any) -> dict[str, Any]:
        """Bring ``owner``'s inputs named by ``request`` (``protocols.provision``) into the session;
        returns the request's public part. Here the request is loaded by this process and shared;
        a session whose parties load their own data (transports ``processes``, ``remote``) overrides it."""
        provided = request.load()
        for name, value in provided.values.items():
            self.share(name, value, owner)
        return dict(provided.public)

    def run_on(self, owner: str, job: Any) -> None:
        """Have ``owner`` run ``job.run()`` on its own data (here: in this process)."""
        job.run()

    def delete(self, *names: str) -> None:
        """Drop variables."""
        raise NotImplementedError

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release resources (nothing for plaintext)."""


class PlainSession(Session):
    """Plain JAX execution of the same programs: the plaintext reference (no secrecy, no cost)."""

    def __init__(self) -> None:
        super().__init__()
        self._values: dict[str, Any] = {}

    def share(self, name: str, value: np.ndarray, owner: str) -> None:
        if owner not in OWNERS:
            raise ValueError(f"owner={owner!r}: expected one of {list(OWNERS)}")
        arr = np.asarray(value)
        self._values[name] = arr
        self._meta[name] = (arr.shape, arr.dtype)
        self.ownership[name] = f"plaintext (reference run; owner: {owner})"

    def run(self, fn: Callable[..., Any], inputs: Sequence[str], outputs: Sequence[str], *, op: str,
            layer: Optional[int] = None, static: Static = None) -> None:
        self._check_inputs(inputs)
        result = _bind(fn, static)(*(self._values[n] for n in inputs))
        result = result if isinstance(result, (tuple, list)) else (result,)
        for name, value in zip(outputs, result, strict=True):
            arr = np.asarray(value)
            self._values[name] = arr
            self._meta[name] = (arr.shape, arr.dtype)

    def reveal(self, name: str, *, to: str = "both", purpose: str, layer: Optional[int] = None) -> np.ndarray:
        return self._record_reveal(name, to, purpose, layer, np.asarray(self._values[name]))

    def delete(self, *names: str) -> None:
        for n in names:
            self._values.pop(n, None)
            self._meta.pop(n, None)




def _bind(fn: Callable[..., Any], static: Static) -> Callable[..., Any]:
    """``fn`` with its static arguments bound: keywords for a dict, trailing positionals for a tuple."""
    import functools

    if not static:
        return fn
    if isinstance(static, dict):
        return functools.partial(fn, **static)
    return lambda *arrays: fn(*arrays, *static)


def _static_key(static: Static) -> tuple[Any, ...]:
    if isinstance(static, dict):
        return tuple(sorted(static.items()))
    return ("__positional__", *(static or ()))


class SecureSession(Session):
    """Secret-shared execution on SPU, parties as threads or as OS processes on loopback.

    Data owners bring their own inputs (``share(..., owner)``): the client its token
    embeddings and mask, the server the weights and thresholds. A value of an owner in
    ``spec.private_owners`` stays private to that party where the protocol allows it,
    otherwise it is secret-shared; ``ownership`` records which. Only ``reveal`` opens a
    value, and every opening is appended to ``reveals``.
    """

    def __init__(self, spec: SessionSpec) -> None:
        super().__init__()
        from spu import api

        self.spec = spec
        self._io = api.Io(spec.world_size, spec.runtime_config(False))
        if spec.transport == "remote":
            from protocols.remote import RemoteParties

            self._parties: Any = RemoteParties(spec)
        else:
            self._parties = ThreadParties(spec) if spec.transport == "threads" else ProcessParties(spec)

    def share(self, name: str, value: np.ndarray, owner: str) -> None:
        if owner not in OWNERS:
            raise ValueError(f"owner={owner!r}: expected one of {list(OWNERS)}")
        arr, shares = make_shares(self._io, value, OWNER_RANK[owner] if self.spec.keeps_private(owner) else None)
        self._parties.set_var(name, shares)
        self._meta[name] = (arr.shape, arr.dtype)
        self.ownership[name] = self.spec.ownership_of(owner)

    def provide(self, owner: str, request: Any) -> dict[str, Any]:
        """With parties that load their own data, the owner party loads ``request`` and builds its
        shares, the peer its placeholders; this process sees names, shapes and the public part."""
        if owner not in OWNERS:
            raise ValueError(f"owner={owner!r}: expected one of {list(OWNERS)}")
        if not isinstance(self._parties, LoadsOwnData):
            return super().provide(owner, request)
        metas, public = self._parties.provide(OWNER_RANK[owner], request, self.spec.keeps_private(owner))
        for name, shape, dtype in metas:
            self._meta[name] = (tuple(shape), np.dtype(dtype))
            self.ownership[name] = self.spec.ownership_of(owner) + ("" if self.spec.keeps_private(owner) else
                                                                     "; the peer's shares relayed by the coordinator")
        return dict(public)

    def peak_rss_mb(self) -> dict[str, float]:
        """Peak resident memory of each party's process so far, MiB, by owner (``client``,
        ``server``; with the ``threads`` transport both are this one process)."""
        values = self._parties.peak_rss()
        return {owner: values[rank] / 2**20 for owner, rank in OWNER_RANK.items()}

    def run_on(self, owner: str, job: Any) -> None:
        """``job.run()`` in ``owner``'s party process where the parties hold their own data."""
        if isinstance(self._parties, LoadsOwnData):
            self._parties.job(OWNER_RANK[owner], job)
        else:
            job.run()

    def _compile(self, fn: Callable[..., Any], inputs: Sequence[str], static: Static) -> _Program:
        import spu.libspu as libspu
        from spu.utils import frontend as fe

        key = (fn, _static_key(static), tuple(self._meta[n] for n in inputs))
        if key not in self._programs:
            examples = [np.zeros(*self._meta[n]) for n in inputs]
            args = [f"in{i}" for i in range(len(inputs))]
            exe, out = fe.compile(fe.Kind.JAX, _bind(fn, static), examples, {}, args,
                                  [libspu.Visibility.VIS_SECRET] * len(inputs), lambda outs: [f"out{i}" for i in range(len(outs))])
            infos = out if isinstance(out, (tuple, list)) else [out]
            self._programs[key] = _Program(exe.code, [(tuple(o.shape), np.dtype(o.dtype)) for o in infos])
        return self._programs[key]

    def run(self, fn: Callable[..., Any], inputs: Sequence[str], outputs: Sequence[str], *, op: str,
            layer: Optional[int] = None, static: Static = None) -> None:
        import spu.libspu as libspu

        self._check_inputs(inputs)
        program = self._compile(fn, inputs, static)
        if len(program.outputs) != len(outputs):
            raise ValueError(f"{fn.__qualname__} returns {len(program.outputs)} values, {len(outputs)} names given")
        exe = libspu.Executable(name=fn.__qualname__, input_names=list(inputs), output_names=list(outputs), code=program.code)
        start = time.perf_counter()
        profile = self._parties.run(exe)
        wall = time.perf_counter() - start
        ops, (sent, recv, send_actions, recv_actions) = parse_profile(profile)
        self.meter.record(ProgramCost(op=op, layer=layer, wall_s=wall, sent=(sent, recv),
                                      messages=(send_actions, recv_actions), rounds=estimate_rounds(send_actions),
                                      pphlo_sent={k: v[1] + v[2] for k, v in ops.items()}, program=fn.__qualname__,
                                      kernels=parse_kernels(profile)))
        for name, meta in zip(outputs, program.outputs):
            self._meta[name] = meta

    def reveal(self, name: str, *, to: str = "both", purpose: str, layer: Optional[int] = None) -> np.ndarray:
        if to not in ("both", *OWNERS):
            raise ValueError(f"reveal to={to!r}: expected 'both', 'client' or 'server'")
        self._check_inputs([name])
        value = self._io.reconstruct(self._parties.get_var(name))
        return self._record_reveal(name, to, purpose, layer, value)

    def delete(self, *names: str) -> None:
        self._parties.delete([n for n in names if n in self._meta])
        for n in names:
            self._meta.pop(n, None)
            self.ownership.pop(n, None)

    def close(self) -> None:
        self._parties.close()


def TwoPartySession(spec: SessionSpec) -> Session:
    """The secure session for ``spec`` (SPU runtimes of both parties over ``spec.transport``)."""
    return SecureSession(spec)


__all__ = ["PartyFailure", "PlainSession", "RevealRecord", "SecureSession", "Session", "SessionSpec",
           "TwoPartySession", "process_log"]
