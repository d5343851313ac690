"""Whole-model secure cost composed from measured per-layer costs at a token schedule.

A layer is priced in two blocks, each from least-squares fits ``c + a·n + b·n²`` of costs
measured at several token counts (seconds, bytes and rounds separately; LAN/WAN time is
compute + bytes / bandwidth + rounds × RTT, as the meter's):

* attention block at ``n`` tokens entering the layer: ``attn/Linear`` (QKV, scores, output
  projection), ``Softmax``, ``attn/LayerNorm``;
* FFN block at the ``k`` tokens kept after the layer's prune: ``ffn/Linear``, ``GELU``,
  ``ffn/LayerNorm``.

Π_reduce's gain: with ``h`` high rows out of ``m``, a non-linear op costs
``f_high(m)·h/m + f_high(m)·ρ(m)·(m − h)/m`` where ``ρ = f_low / f_high`` is the ratio of
the low- to the high-degree kernel measured side by side (``Softmax``: query rows of layer
l + 1 after layer l's grouping; ``GELU``: rows of layer l's FFN). Pruning programs are
fitted as ``c + a·n + b·k·n``.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from models import methods
from protocols.meter import LAN, OP_CLASSES, WAN

ATTN_PARTS = ("attn/Linear", "Softmax", "attn/LayerNorm")
FFN_PARTS = ("ffn/Linear", "GELU", "ffn/LayerNorm")
LAYER_PARTS = ATTN_PARTS + FFN_PARTS
REDUCED = ("Softmax", "GELU")            # ops with a low-degree form; ``<op>_low``/``<op>_high`` kernels
PRUNE_PROGRAMS = ("prune", "reduce", "bolt_we")
QUANTITIES = ("s", "bytes", "rounds")    # what each measurement holds, in this order
Fits = dict[str, list[np.ndarray]]       # name → coefficients per QUANTITIES entry


@dataclass
class Schedule:
    """Per layer: tokens entering, tokens kept after the prune, high-group size after Π_reduce."""

    entering: list[float]
    kept: list[float]
    high: list[float]

    def stretched(self, layers: int) -> "Schedule":
        """The same schedule at ``layers`` depth. Layer 0 keeps its size (every method runs it
        on all n0 tokens; its prune drops the padding); the entering sizes of source layers
        1…L−1 are interpolated linearly over target layers 1…layers−1, and the high share of
        the kept tokens at the same relative depth."""
        src_layers = len(self.entering)
        if src_layers == 1 or layers == 1:
            return Schedule(*([v[0]] * layers for v in (self.entering, self.kept, self.high)))
        depth = np.concatenate([[0.0], np.linspace(1.0, src_layers - 1, layers - 1)])
        src = np.arange(src_layers)
        entering = np.interp(depth, src, self.entering)
        kept = np.append(entering[1:], self.kept[-1])
        share = np.interp(depth, src, np.array(self.high) / np.maximum(np.array(self.kept), 1e-9))
        return Schedule(entering.tolist(), kept.tolist(), (share * kept).tolist())


def part_of(op: str, after_ffn_start: bool) -> str:
    """Map a measured program of one layer (its op class, before/after the FFN's first
    matmul) to its ``LAYER_PARTS`` key."""
    if op in ("Softmax", "GELU"):
        return op
    return f"{'ffn' if after_ffn_start else 'attn'}/{op}"


def fit(points: list[tuple[float, float, float]]) -> np.ndarray:
    """Non-negative least-squares fit of value = c + a·x1 + b·x2 over ``(x1, x2, value)``.

    Exact NNLS for three coefficients: the best feasible least-squares solution over every
    subset of free coefficients (clipping an unconstrained solution would not be a fit).
    The constant matters: Cheetah's HE matmul costs grow with the weight matrix, not with
    n, when n is small.
    """
    a = np.array([[1.0, p[0], p[1]] for p in points])
    y = np.array([p[2] for p in points])
    best, best_err = np.zeros(3), float(np.sum(y * y))
    for mask in itertools.product((False, True), repeat=3):
        cols = [i for i in range(3) if mask[i]]
        if not cols:
            continue
        sol, *_ = np.linalg.lstsq(a[:, cols], y, rcond=None)
        if (sol < 0).any():
            continue
        coef = np.zeros(3)
        coef[cols] = sol
        err = float(np.sum((a @ coef - y) ** 2))
        if err < best_err - 1e-12 * max(1.0, best_err):
            best, best_err = coef, err
    return best


def fit_measurements(measured: dict[str, dict[str, list[float]]]) -> tuple[Fits, Fits]:
    """Fits of the layer parts and reduced kernels (in n, n²) and of the pruning programs (in n, k·n, k = n/2)."""
    sizes = sorted(int(n) for n in measured)
    layer_keys = LAYER_PARTS + tuple(f"{op}_{deg}" for op in REDUCED for deg in ("low", "high"))
    quantities = range(len(QUANTITIES))
    layer_fit = {key: [fit([(n, n * n, measured[str(n)][key][q]) for n in sizes]) for q in quantities]
                 for key in layer_keys}
    prune_fit = {key: [fit([(n, max(1, n // 2) * n, measured[str(n)][key][q]) for n in sizes]) for q in quantities]
                 for key in PRUNE_PROGRAMS}
    return layer_fit, prune_fit


def _at(coef: np.ndarray, n: float) -> float:
    return float(coef @ np.array([1.0, n, n * n]))


def _reduced(layer_fit: Fits, op: str, q: int, rows: float, high: float) -> float:
    """Cost of ``op`` on ``rows`` rows of which ``high`` use the high-degree polynomial."""
    full = _at(layer_fit[op][q], rows)
    if rows <= 0 or high >= rows:
        return full
    hi, lo = _at(layer_fit[f"{op}_high"][q], rows), _at(layer_fit[f"{op}_low"][q], rows)
    rho = lo / hi if hi > 0 else 1.0
    return full * (high + rho * (rows - high)) / rows


def method_sizes(schedule: Schedule, method: str, n0: int) -> list[tuple[float, float]]:
    """``(n entering, k kept)`` per layer for ``method`` (``MethodSpec.sizes``: ``unpruned``, n0
    throughout; ``halved_once``, halves once after layer 0's attention; ``schedule``, the schedule's)."""
    layers = len(schedule.entering)
    sizes = methods.get(method).sizes
    if sizes == "unpruned":
        return [(n0, n0)] * layers
    if sizes == "halved_once":
        half = math.ceil(n0 / 2)
        return [(n0, half)] + [(half, half)] * (layers - 1)
    return list(zip(schedule.entering, schedule.kept))


def compose(schedule: Schedule, method: str, layer_fit: Fits, prune_fit: Fits, n0: int) -> dict[str, float]:
    """Whole-model ``{"<quantity>/<op class>"}`` (``QUANTITIES``: s, bytes, rounds) for ``method`` at ``schedule``."""
    totals = {f"{q}/{op}": 0.0 for q in QUANTITIES for op in OP_CLASSES}
    spec = methods.get(method)
    reduce = spec.reduce
    high_prev: float | None = None
    for l, (n, k) in enumerate(method_sizes(schedule, method, n0)):
        high = schedule.high[l] if reduce else k
        for qi, q in enumerate(QUANTITIES):
            for part in ATTN_PARTS:
                cost = (_reduced(layer_fit, part, qi, n, high_prev) if part == "Softmax" and high_prev is not None
                        else _at(layer_fit[part][qi], n))
                totals[f"{q}/{part.split('/')[-1]}"] += cost
            for part in FFN_PARTS:
                cost = _reduced(layer_fit, part, qi, k, high) if part == "GELU" and reduce else _at(layer_fit[part][qi], k)
                totals[f"{q}/{part.split('/')[-1]}"] += cost
            for name in spec.programs if spec.prunes_at(l) else ():
                totals[f"{q}/{'Reduce' if name == 'reduce' else 'Prune'}"] += float(
                    prune_fit[name][qi] @ np.array([1.0, n, k * n]))
        high_prev = high if reduce else None
    return totals


def ideal(schedule: Schedule, method: str, n0: int) -> tuple[float, float]:
    """Σ n and Σ n² of ``method``'s entering sizes relative to the unpruned run (ideal speed-ups)."""
    ns = [n for n, _ in method_sizes(schedule, method, n0)]
    layers = len(ns)
    return layers * n0 / sum(ns), layers * n0 * n0 / sum(n * n for n in ns)


def table_rows(seq: int, schedules: dict[str, Schedule], layer_fit: Fits, prune_fit: Fits) -> list[dict[str, float | str]]:
    """One row per method: seconds, GB, LAN/WAN estimates, ratios, pruning share, ideal ratios."""
    rows: list[dict[str, float | str]] = []
    for method in (m.name for m in methods.registered() if m.name in schedules):
        t = compose(schedules[method], method, layer_fit, prune_fit, seq)
        secs = sum(t[f"s/{op}"] for op in OP_CLASSES)
        nbytes = sum(t[f"bytes/{op}"] for op in OP_CLASSES)
        rounds = sum(t[f"rounds/{op}"] for op in OP_CLASSES)
        row: dict[str, float | str] = {"seq": seq, "method": method, "time_s": secs, "comm_gb": nbytes / 2**30,
                                       "rounds": rounds,
                                       "lan_s": secs + 8 * nbytes / LAN.bandwidth_bps + rounds * LAN.rtt_s,
                                       "wan_s": secs + 8 * nbytes / WAN.bandwidth_bps + rounds * WAN.rtt_s,
                                       "prune_share": (t["s/Prune"] + t["s/Reduce"]) / secs}
        row["ideal_sum_n"], row["ideal_sum_n2"] = ideal(schedules[method], method, seq)
        for op in OP_CLASSES:
            row[f"s/{op}"] = t[f"s/{op}"]
        rows.append(row)
    base = {r["method"]: r for r in rows}
    for r in rows:
        for ref in (m for m in methods.registered() if m.reference and m.name in base):
            r[f"x_{ref.name}"] = float(base[ref.name]["lan_s"]) / float(r["lan_s"])
    return rows
