"""Per-op-class cost of one BERT-base layer on SPU (default CHEETAH, threads transport).

Usage: ``python -m benchmarks.bench_ops [--quick] [--protocol CHEETAH] [--tokens 128]``.
Prints time and bytes per program (Linear: QKV, scores, context, out proj, FFN1, FFN2;
Softmax; GELU; LayerNorm ×2) and per op class, next to BOLT's per-layer communication
(whole-model BERT-base, 12 layers, divided by 12) and BumbleBee (≈ BOLT / 10).
Bytes come from SPU's own Link details (the session's meter), both directions summed.
"""
from __future__ import annotations

import argparse
import time

import jax.numpy as jnp
import numpy as np

from protocols import nonlinear as nl
from protocols.session import SessionSpec, TwoPartySession

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny shapes (n=16, d=64, H=2, FFN 256)")
    ap.add_argument("--protocol", default="CHEETAH")
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    n, d, h, f = (16, 64, 2, 256) if args.quick else (args.tokens, 768, 12, 3072)
    rng = np.random.default_rng(0)
    rnd = lambda *s: (rng.normal(size=s) * 0.05).astype(np.float32)  # noqa: E731
    rows: list[tuple[str, str, float, int]] = []
    t0 = time.perf_counter()
    # HE matmuls of BERT-base shapes on 2 shared cores exceed the 60 s default receive timeout
    with TwoPartySession(SessionSpec(protocol=args.protocol, recv_timeout_s=3600.0)) as s:
        s.share("x", rng.normal(size=(n, d)).astype(np.float32), "client")
        for name, shape in (("wqkv", (d, 3 * d)), ("wo", (d, d)), ("w1", (d, f)), ("w2", (f, d))):
            s.share(name, rnd(*shape), "server")
        s.share("g", np.ones(d, np.float32), "server")
        s.share("b", np.zeros(d, np.float32), "server")

        def step(label: str, fn, ins: list[str], outs: list[str], op: str, static=None) -> None:
            before = len(s.meter.report().programs)
            s.run(fn, ins, outs, op=op, layer=0, static=static)
            p = s.meter.report().programs[before]
            rows.append((label, op, p.wall_s, p.bytes_total))
            print(f"  {label:<10} {op:<10} {p.wall_s:8.2f} s {p.bytes_total / 2**20:10.2f} MB", flush=True)

        step("QKV", matmul, ["x", "wqkv"], ["qkv"], "Linear")
        s.run(lambda t: (t[:, :d], t[:, d:2 * d], t[:, 2 * d:]), ["qkv"], ["q", "k", "v"], op="Other")
        step("scores", scores, ["q", "k"], ["sc"], "Linear", {"heads": h})
        step("softmax", nl.softmax, ["sc"], ["A"], "Softmax")
        step("context", context, ["A", "v"], ["c"], "Linear")
        step("out_proj", matmul, ["c", "wo"], ["a"], "Linear")
        s.run(lambda a, x: a + x, ["a", "x"], ["r"], op="Other")
        step("LN1", nl.layernorm, ["r", "g", "b"], ["h1"], "LayerNorm", {"eps": 1e-12})
        step("FFN1", matmul, ["h1", "w1"], ["u"], "Linear")
        step("GELU", nl.gelu, ["u"], ["gu"], "GELU")
        step("FFN2", matmul, ["gu", "w2"], ["o"], "Linear")
        s.run(lambda o, x: o + x, ["o", "h1"], ["r2"], op="Other")
        step("LN2", nl.layernorm, ["r2", "g", "b"], ["out"], "LayerNorm", {"eps": 1e-12})
        report = s.meter.report()
    print(f"\n{args.protocol}, n={n}, d={d}, H={h}, FFN={f}; total wall {time.perf_counter() - t0:.1f} s")
    print("| op class | time s | comm MB | BOLT MB/layer | BumbleBee MB/layer | ours / BOLT |")
    print("|---|---:|---:|---:|---:|---:|")
    for op, part in report.by_op().items():
        if not part.programs:
            continue
        bolt = BOLT_GB_12_LAYERS.get(op)
        bolt_mb = bolt * 1e9 / 12 / 2**20 if bolt and not args.quick else None
        cols = (f"{bolt_mb:.0f}", f"{bolt_mb * BUMBLEBEE_OVER_BOLT:.0f}",
                f"{part.bytes_total / 2**20 / bolt_mb:.2f}") if bolt_mb else ("-", "-", "-")
        print(f"| {op} | {part.wall_s:.2f} | {part.bytes_total / 2**20:.1f} | " + " | ".join(cols) + " |")
    m = report.to_metrics()
    print(f"| total | {m['time_s/total']:.2f} | {m['comm_mb/total']:.1f} | | | |")
    print(f"modelled LAN {m['time_s/lan']:.2f} s, WAN {m['time_s/wan']:.2f} s, rounds≈{m['rounds/total']:.0f}")


if __name__ == "__main__":
    main()
