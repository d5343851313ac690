"""Π_reduce's forms per kernel, side by side (default CHEETAH, BERT-base shapes, secret-shared inputs).

    python -m pipeline stage=benchmark benchmark=reduce [benchmark.tokens=128 benchmark.rows=16]

The softmax of ``rows`` query rows of every head over ``tokens`` keys (``[H, rows, tokens]``) and
GELU of ``rows`` FFN rows (``[rows, f]``): BOLT's high form and the low form of each entry of
``models.approx.REDUCE_FORMS``, all in one session, each program run ``1 + repeats`` times back
to back, the first a warm-up, the figures the median of the others: Cheetah's background traffic
(OT refills) lands in whichever program runs when it happens (measured: the same ReLU counted 21
estimated rounds in one run and 662 in another), so one run's round count is not the kernel's. The
inputs are secret-shared, as in the engine (they are outputs of secure matmuls there). Both
kernels are elementwise plus per-row reductions, so their cost is linear in the rows: the table
gives the measured figures of the slice and the low/high ratios, which hold per row. LAN and WAN
are the meter's model (compute + bytes / bandwidth + rounds × RTT, ``protocols.meter``).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

from benchmarks.common import BenchResult, LogMetrics, markdown, shape_spec, warm_up
from benchmarks.configs import ReduceBench
from models.approx import EXP_HIGH, GELU_HIGH, REDUCE_FORMS
from protocols import nonlinear as nl
from protocols.meter import LAN, WAN
from protocols.session import SessionSpec, TwoPartySession

log = logging.getLogger(__name__)


def kernels() -> list[tuple[str, str, Callable[..., Any], dict[str, Any]]]:
    """``(kernel, form, program, static)``: BOLT's high forms, then each low form."""
    out: list[tuple[str, str, Callable[..., Any], dict[str, Any]]] = [
        ("softmax", "high (BOLT)", nl.softmax, {"bias": None, "approx": EXP_HIGH}),
        ("gelu", "high (BOLT)", nl.gelu, {"approx": GELU_HIGH})]
    for name, forms in REDUCE_FORMS.items():
        out += [("softmax", f"low: {name}", nl.softmax, {"bias": None, "approx": forms.exp}),
                ("gelu", f"low: {name}", nl.gelu_form, {"approx": forms.gelu})]
    return out


def run(cfg: ReduceBench, log_metrics: LogMetrics) -> BenchResult:
    """One row per (kernel, form): seconds, MB, rounds, LAN/WAN seconds and the ratios to the high form."""
    if cfg.repeats < 1:
        raise ValueError(f"benchmark.repeats={cfg.repeats}: expected >= 1 measured run per kernel")
    shape = shape_spec(cfg.shape)
    rng = np.random.default_rng(0)
    inputs = {"softmax": (3.0 * rng.standard_normal((shape.heads, cfg.rows, cfg.tokens))).astype(np.float32),
              "gelu": (2.0 * rng.standard_normal((cfg.rows, shape.intermediate))).astype(np.float32)}
    spec = SessionSpec(protocol=cfg.protocol, private_owners=("server",), recv_timeout_s=cfg.recv_timeout_s)
    measured: dict[tuple[str, str], Any] = {}
    with TwoPartySession(spec) as s:
        warm_up(s)
        for kernel, x in inputs.items():
            s.share(kernel, x, owner="client")           # secret-shared: only the server's values stay private
        for kernel, form, fn, static in kernels():
            reports = []
            for _ in range(1 + cfg.repeats):          # back to back; the first warms the program up
                with s.meter.measure() as m:
                    s.run(fn, [kernel], ["y"], op="Softmax" if kernel == "softmax" else "GELU", static=static)
                s.delete("y")
                reports.append(m.report)
            measured[(kernel, form)] = reports[1:]
    rows: list[dict[str, Any]] = []
    for (kernel, form), reports in measured.items():
        rows.append({"kernel": kernel, "form": form, **{q: float(np.median([get(r) for r in reports])) for q, get in (
            ("s", lambda r: r.wall_s), ("mb", lambda r: r.bytes_total / 2**20), ("rounds", lambda r: r.rounds),
            ("lan_s", lambda r: r.network_time(LAN)), ("wan_s", lambda r: r.network_time(WAN)))}})
    high = {r["kernel"]: r for r in rows if r["form"].startswith("high")}
    cells = []
    for r in rows:
        h = high[r["kernel"]]
        ratio = {q: r[q] / h[q] for q in ("s", "mb", "lan_s", "wan_s")}
        log_metrics({f"{r['kernel']}/{_key(r['form'])}/{q}": float(r[q]) for q in ("s", "mb", "rounds", "lan_s", "wan_s")})
        cells.append([r["kernel"], r["form"], f"{r['s']:.2f}", f"{r['mb']:.2f}", f"{r['rounds']:.0f}", f"{r['lan_s']:.2f}",
                      f"{r['wan_s']:.2f}", " / ".join(f"{ratio[q]:.2f}" for q in ("s", "mb", "lan_s", "wan_s"))])
    table = markdown(cells, ["kernel", "form", "s", "MB", "rounds", "LAN s", "WAN s", "÷ high (s / MB / LAN / WAN)"])
    text = (f"{cfg.protocol}, {cfg.shape.value} shapes: softmax [{shape.heads}, {cfg.rows}, {cfg.tokens}], GELU "
            f"[{cfg.rows}, {shape.intermediate}]; secret-shared inputs; median of {cfg.repeats} warm runs each; "
            f"measured\n\n{table}\n")
    return BenchResult(text, {f"{r['kernel']}/{_key(r['form'])}/{q}": float(r[q]) for r in rows
                              for q in ("s", "mb", "rounds", "lan_s", "wan_s")}, rows)


def _key(form: str) -> str:
    """Metric-name part of a form: ``high``, or the ``REDUCE_FORMS`` key of a low form."""
    return "high" if form.startswith("high") else form.removeprefix("low: ")
