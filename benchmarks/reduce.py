"""Every family's high forms and Π_reduce's low forms per kernel, side by side (default CHEETAH,
BERT-base shapes, secret-shared inputs).

    python -m pipeline stage=benchmark benchmark=reduce [benchmark.tokens=128 benchmark.rows=16]
    python -m pipeline stage=benchmark benchmark=reduce 'benchmark.option_sets=[[],[cheetah_2pc_config.enable_mul_lsb_error]]'

The softmax of ``rows`` query rows of every head over ``tokens`` keys (``[H, rows, tokens]``) and
GELU of ``rows`` FFN rows (``[rows, f]``): the high forms of each ``models.approx.FAMILIES`` entry
(BOLT's, BumbleBee's) and the low form of each entry of ``models.approx.REDUCE_FORMS``. Each set of
SPU runtime options in ``option_sets`` (boolean fields set true; ``[]`` is SPU's defaults) gets
its own session, every kernel of it run ``1 + repeats`` times back to back, the first a warm-up, the
figures the median of the others: Cheetah's background traffic (OT refills) lands in whichever
program runs when it happens (measured: the same ReLU counted 21 estimated rounds in one run and
662 in another), so one run's round count is not the kernel's. The inputs are secret-shared, as in
the engine (they are outputs of secure matmuls there). Both kernels are elementwise plus per-row
reductions, so their cost is linear in the rows: the table gives the measured figures of the slice
and the ratios to BOLT's high form under the first option set, which hold per row. LAN and WAN are
the meter's model (compute + bytes / bandwidth + rounds × RTT, ``protocols.meter``).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

from benchmarks.common import BenchResult, LogMetrics, markdown, shape_spec, warm_up
from benchmarks.configs import ReduceBench
from models.approx import FAMILIES, REDUCE_FORMS
from protocols import nonlinear as nl
from protocols.meter import LAN, WAN
from protocols.session import SessionSpec, TwoPartySession

log = logging.getLogger(__name__)


def kernels() -> list[tuple[str, str, Callable[..., Any], dict[str, Any]]]:
    """``(kernel, form, program, static)``: each family's high forms, then each low form."""
    out: list[tuple[str, str, Callable[..., Any], dict[str, Any]]] = []
    for name, family in FAMILIES.items():
        out += [("softmax", f"high: {name}", nl.softmax, {"bias": None, "approx": family.exp}),
                ("gelu", f"high: {name}", nl.gelu, {"approx": family.gelu})]
    for name, forms in REDUCE_FORMS.items():
        out += [("softmax", f"low: {name}", nl.softmax, {"bias": None, "approx": forms.exp}),
                ("gelu", f"low: {name}", nl.gelu_form, {"approx": forms.gelu})]
    return out


def _measure(cfg: ReduceBench, options: tuple[str, ...], inputs: dict[str, np.ndarray]) -> dict[tuple[str, str], list[Any]]:
    """Every kernel's measured reports in one session with the boolean SPU fields ``options`` set."""
    spec = SessionSpec(protocol=cfg.protocol, private_owners=("server",), recv_timeout_s=cfg.recv_timeout_s,
                       runtime_options=tuple((name, True) for name in options))
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
                reports.append((m.report, np.asarray(s.reveal("y", to="both", purpose="benchmark: accuracy"))))
                s.delete("y")
            measured[(kernel, form)] = reports[1:]
    return measured


def run(cfg: ReduceBench, log_metrics: LogMetrics) -> BenchResult:
    """One row per (option set, kernel, form): seconds, MB, rounds, LAN/WAN seconds, the largest
    error against the exact function on the benchmark's inputs, and the ratios to BOLT's high form
    under the first option set."""
    if cfg.repeats < 1:
        raise ValueError(f"benchmark.repeats={cfg.repeats}: expected >= 1 measured run per kernel")
    if not cfg.option_sets:
        raise ValueError("benchmark.option_sets is empty: give at least [] (SPU's defaults)")
    shape = shape_spec(cfg.shape)
    rng = np.random.default_rng(0)
    inputs = {"softmax": (3.0 * rng.standard_normal((shape.heads, cfg.rows, cfg.tokens))).astype(np.float32),
              "gelu": (2.0 * rng.standard_normal((cfg.rows, shape.intermediate))).astype(np.float32)}
    exact = {"softmax": _softmax(inputs["softmax"]), "gelu": _gelu(inputs["gelu"])}
    rows: list[dict[str, Any]] = []
    for options in map(tuple, cfg.option_sets):
        for (kernel, form), reports in _measure(cfg, options, inputs).items():
            costs = [r for r, _ in reports]
            rows.append({"options": "__".join(options) or "defaults", "kernel": kernel, "form": form,
                         "max_err": float(max(np.max(np.abs(y - exact[kernel])) for _, y in reports)),
                         **{q: float(np.median([get(r) for r in costs])) for q, get in (
                             ("s", lambda r: r.wall_s), ("mb", lambda r: r.bytes_total / 2**20),
                             ("rounds", lambda r: r.rounds), ("lan_s", lambda r: r.network_time(LAN)),
                             ("wan_s", lambda r: r.network_time(WAN)))}})
    return _result(cfg, shape, rows, log_metrics)


def _result(cfg: ReduceBench, shape: Any, rows: list[dict[str, Any]], log_metrics: LogMetrics) -> BenchResult:
    """The table and metrics of ``run``'s rows."""
    base = {r["kernel"]: r for r in rows if r["form"] == "high: bolt" and r["options"] == rows[0]["options"]}
    quantities = ("s", "mb", "rounds", "lan_s", "wan_s", "max_err")
    metrics = {f"{r['options']}/{r['kernel']}/{_key(r['form'])}/{q}": float(r[q]) for r in rows for q in quantities}
    log_metrics(metrics)
    cells = []
    for r in rows:
        ratio = " / ".join(f"{r[q] / base[r['kernel']][q]:.2f}" for q in ("s", "mb", "lan_s", "wan_s"))
        cells.append([r["options"], r["kernel"], r["form"], f"{r['s']:.2f}", f"{r['mb']:.2f}", f"{r['rounds']:.0f}",
                      f"{r['lan_s']:.2f}", f"{r['wan_s']:.2f}", f"{r['max_err']:.4f}", ratio])
    table = markdown(cells, ["SPU options", "kernel", "form", "s", "MB", "rounds", "LAN s", "WAN s", "max |err|",
                             "÷ BOLT high (s / MB / LAN / WAN)"])
    text = (f"{cfg.protocol}, {cfg.shape.value} shapes: softmax [{shape.heads}, {cfg.rows}, {cfg.tokens}], GELU "
            f"[{cfg.rows}, {shape.intermediate}]; secret-shared inputs; median of {cfg.repeats} warm runs each; "
            f"max |err| against the exact softmax / GELU (erf) on these inputs; measured\n\n{table}\n")
    return BenchResult(text, metrics, rows)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _gelu(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _key(form: str) -> str:
    """Metric-name part of a form: ``high_<family>``, or the ``REDUCE_FORMS`` key of a low form."""
    return form.replace("high: ", "high_") if form.startswith("high") else form.removeprefix("low: ")
