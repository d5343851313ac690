"""Cost meter: bytes, messages, time and estimated rounds per program, op class and layer.

Source of truth is SPU itself: party 0 runs with ``enable_pphlo_profile``; after every
program SPU logs per-pphlo-op lines and a ``Link details`` total for that party, which
the meter parses (party 0's send bytes are party 1's receive bytes and vice versa).
Rounds are an estimate: SPU reports messages ("actions"), not rounds; a program's rounds are
its party-0 send actions × ``ROUNDS_PER_SEND_ACTION``, a factor measured against a real delayed
link (``benchmarks/link.py``). The MPC
kernels SPU ran (``mmul_sv``: secret × private matmul, one HE product under Cheetah;
``mmul_aa``: secret × secret, two) are recorded per program with their execution counts.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Optional

OP_CLASSES = ("Linear", "Softmax", "GELU", "LayerNorm", "Prune", "Reduce", "Other")


@dataclass(frozen=True)
class Network:
    """A network for the time model: ``compute + bytes / bandwidth + rounds × rtt``."""

    name: str
    bandwidth_bps: float
    rtt_s: float


LAN = Network("lan", 3e9, 0.8e-3)  # the paper's LAN: 3 Gbps, 0.8 ms
WAN = Network("wan", 200e6, 40e-3)  # the paper's WAN: 200 Mbps, 40 ms
NETWORKS = (LAN, WAN)

# Sequential rounds per message party 0 sends. Measured (``python -m pipeline stage=benchmark
# benchmark=link``, CHEETAH, 2-layer tiny BERT, 32 tokens, prune_reduce; parties' link relayed
# with 20 ms per direction, ≈ 41 ms added RTT probed; docs/archive/benchmarks.md): over the 26 programs
# the rounds implied by the slow-down, (t(RTT) − t(0)) / RTT, are 0.49-0.50 × party 0's send
# actions (R² 0.97; a per-pphlo-op table of rounds fits worse, R² 0.93). On a MiniLM-shaped layer
# at 16 tokens the factor is 0.38 (whole pass modelled +13 %). Off by op
# class: GELU's messages overlap (0.19-0.28 rounds per send action).
ROUNDS_PER_SEND_ACTION = 0.5

_KERNEL_LINE = re.compile(r"- (?P<op>\w+), executed (?P<n>\d+) times")
_OP_LINE = re.compile(
    r"- (?P<op>pphlo\.\w+), executed (?P<n>\d+) times, duration [\d.e+-]+s, send bytes (?P<sent>\d+) "
    r"recv bytes (?P<recv>\d+), send actions (?P<sa>\d+), recv actions (?P<ra>\d+)"
)
_LINK_LINE = re.compile(
    r"Link details: total send bytes (?P<sent>\d+), recv bytes (?P<recv>\d+), "
    r"send actions (?P<sa>\d+), recv actions (?P<ra>\d+)"
)


@dataclass
class ProgramCost:
    """Cost of one program run, from party 0's profile: ``sent = (party 0 send, party 0 recv)``
    bytes and ``messages`` likewise (send / recv actions). With two parties that is exactly
    each party's outgoing traffic; with ABY3 (three parties) traffic between parties 1 and 2
    is not seen, so totals are party 0's links only."""

    op: str
    layer: Optional[int]
    wall_s: float
    sent: tuple[int, int]
    messages: tuple[int, int]
    rounds: int
    pphlo_sent: dict[str, int] = field(default_factory=dict)
    program: str = ""          # the kernel's qualified name (e.g. ``gelu``), for profiles
    kernels: dict[str, int] = field(default_factory=dict)   # SPU MPC kernel -> executions

    @property
    def bytes_total(self) -> int:
        return self.sent[0] + self.sent[1]

    def network_time(self, net: Network | float, rtt_s: Optional[float] = None) -> float:
        """Modelled time: compute (wall time here) + both directions' bytes / bandwidth + rounds × RTT.

        ``net`` is a ``Network`` or a bandwidth in bit/s (then ``rtt_s`` is required).
        """
        bw, rtt = _net_params(net, rtt_s)
        return self.wall_s + 8.0 * self.bytes_total / bw + self.rounds * rtt


def _net_params(net: Network | float, rtt_s: Optional[float]) -> tuple[float, float]:
    if isinstance(net, Network):
        return net.bandwidth_bps, net.rtt_s
    if rtt_s is None:
        raise ValueError("network_time(bandwidth_bps, rtt_s): rtt_s is required with a bare bandwidth")
    if net <= 0 or rtt_s < 0:
        raise ValueError(f"bandwidth_bps must be > 0 and rtt_s >= 0, got {net}, {rtt_s}")
    return float(net), float(rtt_s)


def parse_profile(text: str) -> tuple[dict[str, tuple[int, int, int, int, int]], tuple[int, int, int, int]]:
    """Per-op ``{op: (executions, sent, recv, send actions, recv actions)}`` and the link total
    ``(sent, recv, send actions, recv actions)`` of the last program in ``text`` (party 0's log)."""
    links = list(_LINK_LINE.finditer(text))
    if not links:
        raise RuntimeError("SPU profile not found in the log: was enable_pphlo_profile set on party 0?")
    last = links[-1]
    start = text.rfind("HLO profiling", 0, last.start())
    ops: dict[str, tuple[int, int, int, int, int]] = {}
    for m in _OP_LINE.finditer(text, max(start, 0), last.start()):
        prev = ops.get(m["op"], (0, 0, 0, 0, 0))
        ops[m["op"]] = tuple(a + int(b) for a, b in zip(prev, (m["n"], m["sent"], m["recv"], m["sa"], m["ra"])))  # type: ignore[assignment]
    return ops, (int(last["sent"]), int(last["recv"]), int(last["sa"]), int(last["ra"]))


def parse_kernels(text: str) -> dict[str, int]:
    """``{MPC kernel: executions}`` of the last program in ``text`` (SPU's "MPC profiling"
    section, logged with ``enable_hal_profile``; empty if the section is absent)."""
    links = list(_LINK_LINE.finditer(text))
    if not links:
        return {}
    last = links[-1]
    start = text.rfind("MPC profiling", 0, last.start())
    if start < 0 or start < text.rfind("HLO profiling", 0, last.start()):
        return {}
    out: dict[str, int] = {}
    for m in _KERNEL_LINE.finditer(text, start, last.start()):
        out[m["op"]] = out.get(m["op"], 0) + int(m["n"])
    return out


def estimate_rounds(send_actions: int) -> int:
    """Sequential rounds of a program that made party 0 send ``send_actions`` messages."""
    return round(send_actions * ROUNDS_PER_SEND_ACTION)


class LogTail:
    """Reads what SPU appended to its log file since the previous call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def read_new(self) -> str:
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        self.offset += len(data)
        return data.decode("utf-8", errors="replace")


@dataclass
class CostReport:
    """An immutable view of program costs with totals, per-op sums and MLflow metrics."""

    programs: list[ProgramCost]

    @property
    def bytes_total(self) -> int:
        return sum(p.bytes_total for p in self.programs)

    @property
    def rounds(self) -> int:
        return sum(p.rounds for p in self.programs)

    @property
    def wall_s(self) -> float:
        return sum(p.wall_s for p in self.programs)

    def by_op(self) -> dict[str, "CostReport"]:
        return {op: CostReport([p for p in self.programs if p.op == op]) for op in OP_CLASSES}

    def by_layer(self) -> dict[Optional[int], "CostReport"]:
        layers = sorted({p.layer for p in self.programs}, key=lambda v: -1 if v is None else v)
        return {layer: CostReport([p for p in self.programs if p.layer == layer]) for layer in layers}

    def reducible(self) -> "CostReport":
        """The programs Π_reduce can make cheaper: every layer's GELU (it runs after the layer's
        decision) and the Softmax of layers ≥ 1 (layer 0's attention is what the first decision is
        made from, so its softmax runs at full precision on every token)."""
        return CostReport([p for p in self.programs
                           if p.op == "GELU" or (p.op == "Softmax" and p.layer is not None and p.layer >= 1)])

    def with_layers_repeated(self, measured: int, total: int) -> "CostReport":
        """The cost of a ``total``-layer pass composed from a run of its first ``measured`` layers:
        the programs outside layers (embedding, head) once, layers ``0..measured-1`` as run, and
        for each layer ``measured..total-1`` a copy of layer ``measured-1``'s programs relabelled.
        Only sound where the layers are identical programs on identical shapes (the unpruned pass):
        bytes then agree with an end-to-end run to 0.0002 % on MiniLM-L6, rounds to 1.6 % (the
        copied layer's send actions), times as noisy as the copied layer's (docs/archive/benchmarks.md)."""
        if not 1 <= measured <= total:
            raise ValueError(f"layers measured={measured}: must be in [1, total={total}]")
        ran = {p.layer for p in self.programs if p.layer is not None}
        if ran != set(range(measured)):
            raise ValueError(f"layers measured={measured} but the report has programs of layers {sorted(ran)}")
        template = [p for p in self.programs if p.layer == measured - 1]
        copies = [replace(p, layer=layer) for layer in range(measured, total) for p in template]
        return CostReport([*self.programs, *copies])

    def kernel_counts(self) -> dict[str, int]:
        """Executions of each SPU MPC kernel over these programs (e.g. ``mmul_sv``, ``mmul_aa``)."""
        out: dict[str, int] = {}
        for p in self.programs:
            for name, count in p.kernels.items():
                out[name] = out.get(name, 0) + count
        return out

    @property
    def messages(self) -> int:
        return sum(p.messages[0] + p.messages[1] for p in self.programs)

    def network_time(self, net: Network | float, rtt_s: Optional[float] = None) -> float:
        """Σ programs' ``compute + bytes / bandwidth + rounds × rtt`` (see ``ProgramCost``)."""
        return sum(p.network_time(net, rtt_s) for p in self.programs)

    def to_metrics(self) -> dict[str, float]:
        """Stable names: ``comm_mb/{op}``, ``time_s/{op}``, ``time_s/{lan,wan}/{op}``, totals, and
        ``comm_mb/reducible`` / ``time_s/{lan,wan}/reducible`` (``reducible``: what Π_reduce can
        touch; a ``prune`` run's ``time / (time − reducible)`` bounds any Π_reduce's speed-up over it)."""
        out: dict[str, float] = {}
        for op, part in self.by_op().items():
            out[f"comm_mb/{op}"] = part.bytes_total / 2**20
            out[f"time_s/{op}"] = part.wall_s
            for net in NETWORKS:
                out[f"time_s/{net.name}/{op}"] = part.network_time(net)
        reducible = self.reducible()
        out["comm_mb/reducible"] = reducible.bytes_total / 2**20
        for net in NETWORKS:
            out[f"time_s/{net.name}/reducible"] = reducible.network_time(net)
        out["comm_mb/total"] = self.bytes_total / 2**20
        out["time_s/total"] = self.wall_s
        out["rounds/total"] = float(self.rounds)
        for net in NETWORKS:
            out[f"time_s/{net.name}"] = self.network_time(net)
        return out


@dataclass
class Measurement:
    """What ``CostMeter.measure`` saw: the programs run inside the ``with`` block (set on exit)."""

    report: CostReport = field(default_factory=lambda: CostReport([]))


class CostMeter:
    """Collects ``ProgramCost`` records; the session feeds it after each program."""

    def __init__(self) -> None:
        self._programs: list[ProgramCost] = []

    @contextmanager
    def measure(self) -> Iterator[Measurement]:
        """``with meter.measure() as m: ...`` then ``m.report``: the cost of the block alone."""
        start, m = self.mark(), Measurement()
        try:
            yield m
        finally:
            m.report = self.since(start)

    def mark(self) -> int:
        """A position in the record, for ``since``."""
        return len(self._programs)

    def since(self, mark: int) -> CostReport:
        """The programs recorded after ``mark`` (``mark()``), e.g. one layer's."""
        return CostReport(self._programs[mark:])

    def record(self, cost: ProgramCost) -> None:
        if cost.op not in OP_CLASSES:
            raise ValueError(f"unknown op class {cost.op!r}; expected one of {OP_CLASSES}")
        self._programs.append(cost)

    def report(self) -> CostReport:
        return CostReport(list(self._programs))
