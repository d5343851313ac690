"""Engine cost on the paper's threat model: one transformer layer under CHEETAH, measured side by
side for token counts × batch sizes × ownership, in one run.

    python benchmarks/bench_engine.py --tokens 16 128 --batch 1 8 --owners server none

For every configuration one session runs ``--batch`` random inputs of ``--tokens`` tokens as
one batch (their rows stacked, ``protocols.batch``) through one unpruned layer of the shape
(BERT-base by default: 768 hidden, 12 heads, FFN 3072; random weights, as cost does not depend
on weight values), after a warm-up that absorbs Cheetah's one-time setup. Reported per op class
of the layer (attention-block Linear, Softmax, FFN Linear, GELU, LayerNorm, Other), seconds
and MB for the batch, then the whole layer per input (batch cost / batch size). Ownership
``server``: weights private to the server (secret × private matmuls, ``mmul_sv``); ``none``:
weights secret-shared (``mmul_aa``); ``server_client``: the client's embedded sequence private
to the client as well. The embedding LayerNorm and the classifier head are reported apart.

Latency (batch 1) and cost per input at a batch size are different figures: the table keeps
them in separate rows and the ratios name the batch sizes they compare.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_e2e import random_weights, warm_up  # noqa: E402
from protocols.model_spec import PruningSpec, TransformerSpec  # noqa: E402
from protocols.secure_model import run_batch  # noqa: E402
from protocols.session import SessionSpec, TwoPartySession  # noqa: E402

console = Console(width=200)
PARTS = ("attn/Linear", "Softmax", "ffn/Linear", "GELU", "LayerNorm", "Other")
OWNERS = {"server": ("server",), "none": (), "server_client": ("server", "client")}
SHAPES = {"base": dict(vocab_size=30522, hidden=768, layers=1, heads=12, intermediate=3072, max_positions=512),
          "minilm": dict(vocab_size=30522, hidden=384, layers=1, heads=12, intermediate=1536, max_positions=512),
          "tiny": dict(vocab_size=1000, hidden=64, layers=1, heads=2, intermediate=128, max_positions=512)}


def measure(spec: SessionSpec, shape: TransformerSpec, tokens: int, batch: int) -> dict[str, float]:
    """One layer for ``batch`` inputs of ``tokens`` tokens: ``{part/s, part/mb, ...}`` for the batch,
    ``layer_s``/``layer_mb`` (layer 0 only), ``emb_ln_*`` and ``head_*`` (outside the layer), kernels."""
    weights = random_weights(shape)
    rng = np.random.default_rng(tokens * 100 + batch)
    examples = [(rng.integers(1, shape.vocab_size, tokens), np.ones(tokens, np.float32), np.zeros(tokens, np.int64))
                for _ in range(batch)]
    with TwoPartySession(spec) as s:
        warm_up(s)
        with s.meter.measure() as measured:
            run_batch(s, shape, weights, examples, PruningSpec("none"))
        cost = measured.report
    out: dict[str, float] = {f"{p}/{q}": 0.0 for p in PARTS for q in ("s", "mb")}
    in_ffn = False
    for p in cost.programs:
        if p.layer is None:
            key = "emb_ln" if p.op == "LayerNorm" else "head"
            out[f"{key}_s"] = out.get(f"{key}_s", 0.0) + p.wall_s
            out[f"{key}_mb"] = out.get(f"{key}_mb", 0.0) + p.bytes_total / 2**20
            continue
        in_ffn = in_ffn or p.program == "linear"       # the FFN starts with its first plain linear
        part = p.op if p.op in ("Softmax", "GELU", "LayerNorm", "Other") else f"{'ffn' if in_ffn else 'attn'}/{p.op}"
        out[f"{part}/s"] += p.wall_s
        out[f"{part}/mb"] += p.bytes_total / 2**20
    layer = [p for p in cost.programs if p.layer == 0]
    out["layer_s"] = sum(p.wall_s for p in layer)
    out["layer_mb"] = sum(p.bytes_total for p in layer) / 2**20
    out["per_input_s"] = out["layer_s"] / batch
    out["per_input_mb"] = out["layer_mb"] / batch
    for name, count in cost.kernel_counts().items():
        if name.startswith("mmul"):
            out[f"kernel/{name}"] = float(count)
    return out


def _three(x, wq, wk, wv):
    """Q, K, V as three matmuls (the engine's ``qkv``)."""
    return x @ wq, x @ wk, x @ wv


def _fused(x, w):
    """Q, K, V as one matmul with the weights side by side ``[d, 3d]``."""
    return x @ w


LEVERS = {"three": (_three, ("wq", "wk", "wv")), "fused": (_fused, ("wqkv",))}


def measure_matmuls(rows: int, hidden: int, field: str, fraction_bits: int, disable_split: bool) -> dict[str, tuple]:
    """Q/K/V projections of ``rows`` rows with server-private weights under CHEETAH, as three
    matmuls and as one fused ``[d, 3d]`` one: ``{variant: (seconds, MB, kernels)}``."""
    rng = np.random.default_rng(rows)
    # the activation is secret (as inside a layer), the weights private to the server
    spec = SessionSpec(protocol="CHEETAH", field=field, fraction_bits=fraction_bits, recv_timeout_s=1800.0,
                       private_owners=("server",),
                       runtime_options=(("experimental_disable_mmul_split", True),) if disable_split else ())
    ws = {n: rng.normal(0, 0.02, (hidden, hidden)).astype(np.float32) for n in ("wq", "wk", "wv")}
    ws["wqkv"] = np.concatenate([ws["wq"], ws["wk"], ws["wv"]], axis=1)
    out = {}
    with TwoPartySession(spec) as s:
        warm_up(s)
        s.share("x", rng.normal(size=(rows, hidden)).astype(np.float32), "client")
        for name, value in ws.items():
            s.share(name, value, "server")
        for variant, (fn, names) in LEVERS.items():
            with s.meter.measure() as measured:
                s.run(fn, ["x", *names], [f"{variant}{i}" for i in range(len(names))], op="Linear")
            cost = measured.report
            out[variant] = (cost.wall_s, cost.bytes_total / 2**20, cost.kernel_counts())
    return out


def matmul_levers(args: argparse.Namespace, shape: TransformerSpec) -> None:
    """``--matmuls``: the projection variants side by side; Markdown to ``--results``, MLflow run."""
    started, lines, metrics = time.time(), [], {}
    lines += ["| rows | field | mmul split | three matmuls | one fused [d, 3d] | kernels (fused) |", "|---|---|---|---|---|---|"]
    for field in args.field:
        bits = 12 if field == "FM32" else 18
        for disable in (False, True):
            for rows in args.matmuls:
                try:
                    m = measure_matmuls(rows, shape.hidden, field, bits, disable)
                except Exception as err:  # noqa: BLE001 - a failing variant is a result too
                    lines.append(f"| {rows} | {field} ({bits} bits) | {'off' if disable else 'on'} | failed: "
                                 f"{str(err).splitlines()[0][:120]} | | |")
                    continue
                (t3, b3, _), (tf, bf, kf) = m["three"], m["fused"]
                lines.append(f"| {rows} | {field} ({bits} bits) | {'off' if disable else 'on'} | {t3:.1f} s / {b3:.1f} MB "
                             f"| {tf:.1f} s / {bf:.1f} MB | {', '.join(f'{k} {v}' for k, v in sorted(kf.items()) if k.startswith('mmul'))} |")
                console.print(lines[-1])
                key = f"{field}/split_{'off' if disable else 'on'}/{rows}"
                metrics.update({f"{key}/three_s": t3, f"{key}/three_mb": b3, f"{key}/fused_s": tf, f"{key}/fused_mb": bf})
    report = (f"`{' '.join(sys.argv)}` (hidden {shape.hidden}, server-private weights, CHEETAH over threads, "
              f"{time.time() - started:.0f} s; measured)\n\n" + "\n".join(lines) + "\n")
    if args.results:
        with open(args.results, "a") as fh:
            fh.write("\n" + report)
    from pipeline.tracking import log_standalone_run

    run_id = log_standalone_run("benchmarks", "bench_engine_matmuls", vars(args), metrics, {"results.md": report},
                                ROOT / "outputs")
    console.print(f"logged to MLflow run {run_id} (experiment 'benchmarks')")


def render(rows: list[dict]) -> tuple[Table, str]:
    cols = ["tokens", "batch", "owners"] + [f"{p}" for p in PARTS] + ["layer (batch)", "per input", "matmul kernels"]
    table = Table(title="one layer, CHEETAH: seconds / MB")
    for c in cols:
        table.add_column(c, justify="right")
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        m = r["m"]
        kernels = ", ".join(f"{k.split('/')[1]} {v:.0f}" for k, v in sorted(m.items()) if k.startswith("kernel/"))
        cells = [str(r["tokens"]), str(r["batch"]), r["owners"]] + \
                [f"{m[f'{p}/s']:.1f} s / {m[f'{p}/mb']:.1f}" for p in PARTS] + \
                [f"{m['layer_s']:.1f} s / {m['layer_mb']:.1f}", f"{m['per_input_s']:.1f} s / {m['per_input_mb']:.1f}",
                 kernels]
        table.add_row(*cells)
        md.append("| " + " | ".join(cells) + " |")
    return table, "\n".join(md)


def ratios(rows: list[dict]) -> list[str]:
    """Per-input cost at the largest token count (batch 1) over that at each smaller count and batch,
    per ownership: how far a pruned (small) layer is from the ideal ratio of the token counts."""
    lines = []
    for owners in dict.fromkeys(r["owners"] for r in rows):
        mine = [r for r in rows if r["owners"] == owners]
        big = max(r["tokens"] for r in mine)
        ref = next((r for r in mine if r["tokens"] == big and r["batch"] == 1), None)
        if ref is None:
            continue
        for r in mine:
            if r["tokens"] == big:
                continue
            lines.append(f"- weights/owners `{owners}`: layer at {big} tokens (batch 1) / per input at {r['tokens']} "
                         f"tokens, batch {r['batch']}: **{ref['m']['layer_s'] / r['m']['per_input_s']:.2f}x** time, "
                         f"{ref['m']['layer_mb'] / r['m']['per_input_mb']:.2f}x bytes (ideal {big / r['tokens']:.0f}x)")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="base")
    ap.add_argument("--tokens", type=int, nargs="+", default=[16, 128])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--owners", nargs="+", choices=sorted(OWNERS), default=["server", "none"])
    ap.add_argument("--transport", default="threads", choices=["threads", "processes"])
    ap.add_argument("--max-rows", type=int, default=128,
                    help="skip (tokens, batch) pairs with more stacked rows than this (memory, time)")
    ap.add_argument("--matmuls", type=int, nargs="*", default=None,
                    help="instead of layers: Q/K/V projections of these row counts, three matmuls vs one fused, "
                         "per --field and with/without SPU's mmul split")
    ap.add_argument("--field", nargs="+", default=["FM64"], help="rings for --matmuls, e.g. FM64 FM32")
    ap.add_argument("--results", type=Path, default=None, help="append the Markdown table to this file")
    ap.add_argument("--save", type=Path, default=None, help="write the measurements as JSON here")
    args = ap.parse_args()
    shape = TransformerSpec(**SHAPES[args.shape])
    if args.matmuls:
        return matmul_levers(args, shape)
    rows, started = [], time.time()
    for owners in args.owners:
        spec = SessionSpec(protocol="CHEETAH", transport=args.transport, recv_timeout_s=1800.0,
                           private_owners=OWNERS[owners])
        for tokens in args.tokens:
            for batch in args.batch:
                if tokens * batch > args.max_rows and batch > 1:
                    continue
                t0 = time.time()
                with console.status(f"{owners}: {batch} x {tokens} tokens"):
                    m = measure(spec, shape, tokens, batch)
                rows.append({"tokens": tokens, "batch": batch, "owners": owners, "m": m})
                console.print(f"{owners} {batch}x{tokens}: layer {m['layer_s']:.1f} s / {m['layer_mb']:.1f} MB, "
                              f"per input {m['per_input_s']:.1f} s ({time.time() - t0:.0f} s)")
                if args.save:
                    args.save.parent.mkdir(parents=True, exist_ok=True)
                    args.save.write_text(json.dumps(rows, indent=1))
    table, md = render(rows)
    console.print(table)
    summary = ratios(rows)
    for line in summary:
        console.print(line)
    report = (f"`{' '.join(sys.argv)}` ({args.shape} shape, random weights, CHEETAH over {args.transport}, "
              f"{time.time() - started:.0f} s; all measured, none composed)\n\n{md}\n\n" + "\n".join(summary) + "\n")
    if args.results:
        with open(args.results, "a") as fh:
            fh.write("\n" + report)
    from pipeline.tracking import log_standalone_run

    metrics = {f"{r['owners']}/{r['tokens']}x{r['batch']}/{k}": v for r in rows for k, v in r["m"].items()}
    run_id = log_standalone_run("benchmarks", "bench_engine", vars(args) | {"shape_dims": SHAPES[args.shape]},
                                metrics, {"results.md": report}, ROOT / "outputs")
    console.print(f"logged to MLflow run {run_id} (experiment 'benchmarks')")


if __name__ == "__main__":
    main()
