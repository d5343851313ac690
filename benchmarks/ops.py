"""Per-op-class cost of one layer on SPU (default CHEETAH, BERT-base shape), beside BOLT.

    python -m pipeline stage=benchmark benchmark=ops [benchmark.shape=tiny benchmark.tokens=16]

Runs every program of one layer (Linear: QKV, scores, context, out proj, FFN1, FFN2; Softmax;
GELU; LayerNorm ×2) with the activation from the client and weights from the server, and
reports time and bytes per program and per op class next to BOLT's per-layer communication
(whole-model BERT-base, 12 layers, divided by 12; shown for the base shape only) and
BumbleBee (≈ BOLT / 10). Bytes are SPU's own link counters (the session's meter), both
directions summed; the LAN/WAN figures are the meter's model (compute + bytes/bandwidth + rounds·RTT).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from benchmarks.common import BenchResult, LogMetrics, markdown, shape_spec, warm_up
from benchmarks.configs import OpsBench, Shape
from protocols import nonlinear as nl
from protocols.session import SessionSpec, TwoPartySession

log = logging.getLogger(__name__)
# BOLT's whole-model BERT-base communication per non-linear op class (GB, 12 layers).
BOLT_GB_12_LAYERS = {"Softmax": 2.84, "GELU": 4.89, "LayerNorm": 1.83}
BUMBLEBEE_OVER_BOLT = 0.1


def matmul(x: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
    """``[n, a] @ [a, b]``."""
    return x @ w


def scores(q: jnp.ndarray, k: jnp.ndarray, heads: int) -> jnp.ndarray:
    """``q, k: [n, d]`` → ``[H, n, n]`` scaled dot products."""
    n, d = q.shape
    qh = q.reshape(n, heads, d // heads).transpose(1, 0, 2)
    kh = k.reshape(n, heads, d // heads).transpose(1, 2, 0)
    return (qh @ kh) * (1.0 / np.sqrt(d // heads))


def context(a: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
    """``a: [H, n, n]``, ``v: [n, d]`` → ``[n, d]``."""
    heads, n, _ = a.shape
    vh = v.reshape(n, heads, -1).transpose(1, 0, 2)
    return (a @ vh).transpose(1, 0, 2).reshape(n, -1)


def run(cfg: OpsBench, log_metrics: LogMetrics) -> BenchResult:
    """Each program of the layer measured on its own; per-program and per-op-class tables."""
    shape = shape_spec(cfg.shape)
    n, d, h, f = cfg.tokens, shape.hidden, shape.heads, shape.intermediate
    rng = np.random.default_rng(0)
    programs: list[list[Any]] = []
    with TwoPartySession(SessionSpec(protocol=cfg.protocol, recv_timeout_s=cfg.recv_timeout_s)) as s:
        warm_up(s)
        s.share("x", rng.normal(size=(n, d)).astype(np.float32), "client")
        for name, dims in (("wqkv", (d, 3 * d)), ("wo", (d, d)), ("w1", (d, f)), ("w2", (f, d))):
            s.share(name, (rng.normal(size=dims) * 0.05).astype(np.float32), "server")
        s.share("g", np.ones(d, np.float32), "server")
        s.share("b", np.zeros(d, np.float32), "server")

        def step(label: str, fn: Callable[..., Any], ins: list[str], outs: list[str], op: str,
                 static: dict[str, Any] | None = None) -> None:
            with s.meter.measure() as measured:
                s.run(fn, ins, outs, op=op, layer=0, static=static)
            cost = measured.report
            programs.append([label, op, f"{cost.wall_s:.2f}", f"{cost.bytes_total / 2**20:.2f}"])
            log_metrics({f"program/{label}/s": cost.wall_s, f"program/{label}/mb": cost.bytes_total / 2**20})
            log.info(f"{label:<10} {op:<10} {cost.wall_s:8.2f} s {cost.bytes_total / 2**20:10.2f} MB")

        with s.meter.measure() as layer:
            step("QKV", matmul, ["x", "wqkv"], ["qkv"], "Linear")
            s.run(lambda t: (t[:, :d], t[:, d:2 * d], t[:, 2 * d:]), ["qkv"], ["q", "k", "v"], op="Other", layer=0)
            step("scores", scores, ["q", "k"], ["sc"], "Linear", {"heads": h})
            step("softmax", nl.softmax, ["sc"], ["A"], "Softmax")
            step("context", context, ["A", "v"], ["c"], "Linear")
            step("out_proj", matmul, ["c", "wo"], ["a"], "Linear")
            s.run(lambda a, x: a + x, ["a", "x"], ["r"], op="Other", layer=0)
            step("LN1", nl.layernorm, ["r", "g", "b"], ["h1"], "LayerNorm", {"eps": 1e-12})
            step("FFN1", matmul, ["h1", "w1"], ["u"], "Linear")
            step("GELU", nl.gelu, ["u"], ["gu"], "GELU")
            step("FFN2", matmul, ["gu", "w2"], ["o"], "Linear")
            s.run(lambda o, x: o + x, ["o", "h1"], ["r2"], op="Other", layer=0)
            step("LN2", nl.layernorm, ["r2", "g", "b"], ["out"], "LayerNorm", {"eps": 1e-12})
        report = layer.report
    classes, metrics = [], report.to_metrics()
    for op, part in report.by_op().items():
        if not part.programs:
            continue
        bolt_mb = BOLT_GB_12_LAYERS[op] * 1e9 / 12 / 2**20 if op in BOLT_GB_12_LAYERS and cfg.shape is Shape.base else None
        mb = part.bytes_total / 2**20
        bolt = [f"{bolt_mb:.0f}", f"{bolt_mb * BUMBLEBEE_OVER_BOLT:.0f}", f"{mb / bolt_mb:.2f}"] if bolt_mb else ["—"] * 3
        classes.append([op, f"{part.wall_s:.2f}", f"{mb:.1f}", *bolt])
    classes.append(["total", f"{metrics['time_s/total']:.2f}", f"{metrics['comm_mb/total']:.1f}", "", "", ""])
    text = (f"{cfg.protocol}, n={n}, d={d}, H={h}, FFN={f} ({cfg.shape.value} shape); measured per program\n\n"
            + markdown(programs, ["program", "op class", "time s", "comm MB"]) + "\n\n"
            + markdown(classes, ["op class", "time s", "comm MB", "BOLT MB/layer", "BumbleBee MB/layer", "ours / BOLT"])
            + f"\n\nmodelled (meter): LAN {metrics['time_s/lan']:.2f} s, WAN {metrics['time_s/wan']:.2f} s, "
              f"rounds≈{metrics['rounds/total']:.0f}\n")
    return BenchResult(text, metrics, [dict(zip(("program", "op", "s", "mb"), p)) for p in programs])
