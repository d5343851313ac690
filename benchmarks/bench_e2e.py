"""CipherPrune vs. unpruned vs. BOLT word elimination, side by side, on one engine.

    python benchmarks/bench_e2e.py --checkpoint DIR [--seq 128 512] [--quick]

Method, in one run on this machine:
1. Token schedules from real thresholds on real sentences: the fine-tuned checkpoint in
   ``--checkpoint`` (with its ``thresholds.json``) runs the plaintext twin of the secure
   forward pass (same code, same decisions) on ``--sentences`` real SST-2 dev sentences at
   each ``--seq``; the mean tokens entering each layer (and the Π_reduce high-group sizes)
   are stretched over the target depth by linear interpolation at the same relative depth.
2. Per-layer secure costs of the target shape (BERT-base: 12 × 768, 12 heads; random
   weights: cost does not depend on weight values) measured under CHEETAH at several
   token counts, per op class, and fitted as ``c + a·n + b·n²`` (bytes and seconds);
   Π_prune / Π_reduce / BOLT-WE programs measured at (n → k) and fitted as ``c + a·n + b·k·n``.
3. Whole-model figures = Σ over layers of the fitted costs at the schedule's sizes, plus
   the pruning programs; ratios to ``none`` and ``bolt_we``; the ideal ratios implied by
   the schedule (Σ n and Σ n² against the unpruned run); the pruning protocol's share.
``--quick`` uses a small shape and also runs every method end to end (``--validate``) to
compare the composed prediction with a direct measurement.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import jax.numpy as jnp

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocols import pruning as pr  # noqa: E402
from protocols.meter import LAN, OP_CLASSES, WAN  # noqa: E402
from protocols.model_spec import PruningSpec, TransformerSpec  # noqa: E402
from protocols.secure_model import plaintext_forward, prune_step, reduce_step, secure_forward  # noqa: E402
from protocols.session import SessionSpec, TwoPartySession  # noqa: E402

console = Console(width=240)
METHODS = ("none", "bolt_we", "prune", "prune_reduce")
LAYER_OPS = ("Linear", "Softmax", "GELU", "LayerNorm")


@dataclass
class Schedule:
    """Tokens entering each layer and the Π_reduce high-group size after each layer."""

    entering: list[float]
    high: list[float]


def random_weights(spec: TransformerSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """HF-named BERT weights of ``spec``'s shape, N(0, 0.02) (timing only)."""
    rng = np.random.default_rng(seed)
    d, f, e = spec.hidden, spec.intermediate, "bert.embeddings."
    w = {e + "word_embeddings.weight": (spec.vocab_size, d), e + "position_embeddings.weight": (spec.max_positions, d),
         e + "token_type_embeddings.weight": (spec.type_vocab, d), "bert.pooler.dense.weight": (d, d),
         "classifier.weight": (spec.num_labels, d)}
    out = {k: rng.normal(0, 0.02, s).astype(np.float32) for k, s in w.items()}
    out.update({e + "LayerNorm.weight": np.ones(d, np.float32), e + "LayerNorm.bias": np.zeros(d, np.float32),
                "bert.pooler.dense.bias": np.zeros(d, np.float32), "classifier.bias": np.zeros(spec.num_labels, np.float32)})
    for l in range(spec.layers):
        p = f"bert.encoder.layer.{l}."
        for name, shape in (("attention.self.query", (d, d)), ("attention.self.key", (d, d)),
                            ("attention.self.value", (d, d)), ("attention.output.dense", (d, d)),
                            ("intermediate.dense", (f, d)), ("output.dense", (d, f))):
            out[p + name + ".weight"] = rng.normal(0, 0.02, shape).astype(np.float32)
            out[p + name + ".bias"] = np.zeros(shape[0], np.float32)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            out[p + ln + ".weight"] = np.ones(d, np.float32)
            out[p + ln + ".bias"] = np.zeros(d, np.float32)
    return out


def real_schedules(checkpoint: Path, glue_dir: Path, seq: int, count: int, layers: int) -> dict[str, Schedule]:
    """Schedules of the fine-tuned model on real SST-2 dev sentences, stretched to ``layers``."""
    from transformers import AutoTokenizer

    from models.data import load_glue_raw
    from models.thresholds import read_thresholds
    from models.weights import load_checkpoint, to_numpy_weights

    model, _ = load_checkpoint(checkpoint)
    th = read_thresholds(checkpoint / "thresholds.json")
    spec = TransformerSpec.from_hf_config(json.loads((checkpoint / "config.json").read_text()))
    weights = to_numpy_weights(model)
    tok = AutoTokenizer.from_pretrained(str(checkpoint))
    sentences = load_glue_raw("sst2", glue_dir, ("dev",))["dev"]["text_a"][:count]
    out: dict[str, Schedule] = {}
    for method in METHODS:
        pruning = PruningSpec(method=method, theta=tuple(th.theta), beta=tuple(th.beta))
        entering, high = np.zeros(spec.layers), np.zeros(spec.layers)
        for text in sentences:
            enc = tok(text, max_length=seq, truncation=True, padding="max_length")
            res = plaintext_forward(spec, weights, np.array(enc["input_ids"]), np.array(enc["attention_mask"]),
                                    np.array(enc["token_type_ids"]), pruning)
            entering += np.array(res.entering_per_layer, float) / len(sentences)
            high += np.array([h if h is not None else k for h, k in zip(res.high_per_layer, res.kept_per_layer)],
                             float) / len(sentences)
        depth = np.linspace(0.0, spec.layers - 1, layers)  # same relative depth, linear interpolation
        src = np.arange(spec.layers)
        out[method] = Schedule(np.interp(depth, src, entering).tolist(), np.interp(depth, src, high).tolist())
    return out


def _warm_up_program(x, w):
    """Touches HE matmul, comparison, product, equality: Cheetah's one-time key/OT setup."""
    y = x @ w
    return jnp.maximum(y, 0.0) * y + (y == 0.0)


def warm_up(session: Any) -> None:
    """Run ``_warm_up_program`` so that per-session setup is not billed to the first measured op."""
    session.share("warm_x", np.ones((4, 4), np.float32), "client")
    session.share("warm_w", np.ones((4, 4), np.float32), "server")
    session.run(_warm_up_program, ["warm_x", "warm_w"], ["warm_y"], op="Other")
    session.delete("warm_x", "warm_w", "warm_y")


def measure_layer(session_spec: SessionSpec, shape: TransformerSpec, n: int) -> dict[str, tuple[float, float]]:
    """One unpruned layer of ``shape`` at ``n`` tokens, after a warm-up: ``{op: (seconds, bytes)}``."""
    one = TransformerSpec(**{**shape.__dict__, "layers": 1})
    weights = random_weights(one)
    ids = np.random.default_rng(n).integers(1, one.vocab_size, n)
    with TwoPartySession(session_spec) as s:
        warm_up(s)
        secure_forward(s, one, weights, ids, np.ones(n, np.float32), np.zeros(n, np.int64), PruningSpec("none", (0.0,), (0.0,)))
        layer = s.meter.report().by_layer()[0]
    return {op: (part.wall_s, float(part.bytes_total)) for op, part in layer.by_op().items()}


def measure_pruning(session_spec: SessionSpec, hidden: int, heads: int, n: int) -> dict[str, tuple[float, float]]:
    """Π_prune (n → n/2), Π_reduce (n → n/2, half high) and BOLT WE (n → n/2): ``{name: (s, bytes)}``."""
    rng = np.random.default_rng(n)
    probs = rng.dirichlet(np.ones(n), size=(heads, n)).astype(np.float32)
    k = max(1, n // 2)
    theta = float(np.median(probs.mean(axis=(0, 1))))
    out: dict[str, tuple[float, float]] = {}
    with TwoPartySession(session_spec) as s:
        warm_up(s)
        s.share("A", probs, "server")
        s.share("h", rng.normal(size=(n, hidden)).astype(np.float32), "client")
        s.share("valid", np.ones(n, np.float32), "client")
        s.share("theta", np.array([theta], np.float32), "server")
        s.share("beta", np.array([theta * 1.5], np.float32), "server")
        steps = [
            ("prune", prune_step, ["A", "theta", "valid"], ["R", "M", "k"], {}),
            ("prune", pr.prune_select, ["h", "M", "valid"], ["h1", "v1"], {"k": k}),
            ("reduce", reduce_step, ["R", "beta", "M"], ["high", "kh"], {"scale": heads * n}),
            ("reduce", pr.reduce_select, ["h", "M", "high", "valid"], ["h2", "v2"], {"k": k, "k_high": max(1, k // 2)}),
            ("bolt_we", pr.bolt_we_select, ["h", "R", "valid"], ["h3", "v3"], {"keep": k}),  # rank(R) = rank(S)
        ]
        for name, fn, ins, outs, static in steps:
            before = s.meter.report()
            s.run(fn, ins, outs, op="Prune", static=static)
            part = s.meter.report().since(before)
            prev = out.get(name, (0.0, 0.0))
            out[name] = (prev[0] + part.wall_s, prev[1] + part.bytes_total)
    return out


def fit(points: list[tuple[float, float, float]]) -> np.ndarray:
    """Least-squares fit of value = c + a·x1 + b·x2 over ``(x1, x2, value)``; coefficients ≥ 0.

    The constant matters: Cheetah's HE matmul costs grow with the weight matrix, not with
    n, when n is small.
    """
    a = np.array([[1.0, p[0], p[1]] for p in points])
    y = np.array([p[2] for p in points])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    return np.maximum(coef, 0.0)


def compose(schedule: Schedule, method: str, layer_fit: dict[str, np.ndarray], prune_fit: dict[str, np.ndarray],
            n0: int) -> dict[str, float]:
    """Whole-model seconds and bytes per op class for ``schedule`` (index 0: s, 1: bytes)."""
    totals = {f"{q}/{op}": 0.0 for q in ("s", "bytes") for op in OP_CLASSES}
    layers = len(schedule.entering)
    for l in range(layers):
        n = schedule.entering[l] if method != "none" else n0
        after = schedule.entering[l + 1] if l + 1 < layers else schedule.entering[l]
        if method == "bolt_we":
            n = n0 if l == 0 else math.ceil(n0 / 2)
        for op in LAYER_OPS:  # attention on n tokens, FFN on the kept ones: split Linear/LN evenly
            for qi, q in enumerate(("s", "bytes")):
                totals[f"{q}/{op}"] += float(layer_fit[op][qi] @ np.array([1.0, n, n * n]))
        k = after if method in ("prune", "prune_reduce") else math.ceil(n0 / 2)
        runs = {"prune": ["prune"], "prune_reduce": ["prune", "reduce"], "bolt_we": ["bolt_we"] if l == 0 else []}
        for name in runs.get(method, []):
            for qi, q in enumerate(("s", "bytes")):
                totals[f"{q}/{'Reduce' if name == 'reduce' else 'Prune'}"] += float(prune_fit[name][qi] @ np.array([1.0, n, k * n]))
    return totals


def ideal(schedule: Schedule, method: str, n0: int) -> tuple[float, float]:
    """Σ n and Σ n² of ``method``'s schedule relative to the unpruned run (ideal speed-ups)."""
    layers = len(schedule.entering)
    if method == "none":
        ns = [n0] * layers
    elif method == "bolt_we":
        ns = [n0] + [math.ceil(n0 / 2)] * (layers - 1)
    else:
        ns = schedule.entering
    return layers * n0 / sum(ns), layers * n0 * n0 / sum(n * n for n in ns)


def table_rows(seq: int, schedules: dict[str, Schedule], layer_fit: dict, prune_fit: dict) -> list[dict[str, float | str]]:
    """One row per method: seconds, GB, LAN/WAN estimates, ratios, pruning share, ideal ratios."""
    rows: list[dict[str, float | str]] = []
    for method in METHODS:
        t = compose(schedules[method], method, layer_fit, prune_fit, seq)
        secs = sum(t[f"s/{op}"] for op in OP_CLASSES)
        nbytes = sum(t[f"bytes/{op}"] for op in OP_CLASSES)
        # rounds are not modelled per layer here: LAN/WAN add bandwidth time to compute only
        row: dict[str, float | str] = {"seq": seq, "method": method, "time_s": secs, "comm_gb": nbytes / 2**30,
                                       "lan_s": secs + 8 * nbytes / LAN.bandwidth_bps,
                                       "wan_s": secs + 8 * nbytes / WAN.bandwidth_bps,
                                       "prune_share": (t["s/Prune"] + t["s/Reduce"]) / secs,
                                       "sum_n": sum(schedules[method].entering) if method not in ("none", "bolt_we") else float("nan")}
        row["ideal_sum_n"], row["ideal_sum_n2"] = ideal(schedules[method], method, seq)
        for op in OP_CLASSES:
            row[f"s/{op}"] = t[f"s/{op}"]
        rows.append(row)
    base = {r["method"]: r for r in rows}
    for r in rows:
        r["x_none"] = float(base["none"]["lan_s"]) / float(r["lan_s"])
        r["x_bolt"] = float(base["bolt_we"]["lan_s"]) / float(r["lan_s"])
    return rows


def render(rows: list[dict], title: str) -> tuple[Table, str]:
    """A rich table for the terminal and the same as Markdown for RESULTS.md."""
    cols = [("seq", "{:.0f}"), ("method", "{}"), ("time_s", "{:.1f}"), ("comm_gb", "{:.2f}"), ("lan_s", "{:.1f}"),
            ("wan_s", "{:.1f}"), ("x_none", "{:.2f}"), ("x_bolt", "{:.2f}"), ("ideal_sum_n", "{:.2f}"),
            ("ideal_sum_n2", "{:.2f}"), ("prune_share", "{:.1%}"),
            *[(f"s/{op}", "{:.1f}") for op in OP_CLASSES if op != "Other"]]
    table = Table(title=title)
    for name, _ in cols:
        table.add_column(name, justify="right")
    md = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [fmt.format(r[c]) for c, fmt in cols]
        table.add_row(*cells)
        md.append("| " + " | ".join(cells) + " |")
    return table, "\n".join(md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True, help="fine-tuned checkpoint dir with thresholds.json")
    ap.add_argument("--glue-dir", type=Path, default=ROOT.parent / "shared" / "data" / "glue")
    ap.add_argument("--seq", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--sentences", type=int, default=16)
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64], help="token counts measured per layer")
    ap.add_argument("--protocol", default="CHEETAH")
    ap.add_argument("--transport", default="processes")
    ap.add_argument("--quick", action="store_true", help="BERT-tiny shape (2 x 128) instead of BERT-base")
    ap.add_argument("--results", type=Path, default=None, help="append the table to this Markdown file")
    ap.add_argument("--measurements", type=Path, default=ROOT / "outputs" / "bench_e2e_measurements.json",
                    help="per-size measurements: written after measuring, read instead of measuring with --reuse")
    ap.add_argument("--reuse", action="store_true", help="compose from --measurements without measuring again")
    args = ap.parse_args()
    shape = (TransformerSpec(vocab_size=30522, hidden=128, layers=2, heads=2, intermediate=512, max_positions=512)
             if args.quick else
             TransformerSpec(vocab_size=30522, hidden=768, layers=12, heads=12, intermediate=3072, max_positions=512))
    session_spec = SessionSpec(protocol=args.protocol, transport=args.transport, recv_timeout_s=600.0)
    started = time.time()
    console.print(f"[bold]shape[/] {shape.layers} layers × {shape.hidden} hidden, {shape.heads} heads, random weights "
                  "(cost does not depend on weight values); schedules from real thresholds on real SST-2 sentences")
    schedules = {}
    for seq in args.seq:
        with console.status(f"schedule at {seq} tokens from {args.checkpoint}"):
            schedules[seq] = real_schedules(args.checkpoint, args.glue_dir, seq, args.sentences, shape.layers)
        console.print(f"schedule {seq}: prune " + "-".join(f"{n:.0f}" for n in schedules[seq]["prune"].entering))
    measured: dict[str, dict] = json.loads(args.measurements.read_text()) if args.reuse else {}
    for n in ([] if args.reuse else args.sizes):
        t0 = time.time()
        with console.status(f"{args.protocol} layer at n={n}"):
            layer = measure_layer(session_spec, shape, n)
            prunes = measure_pruning(session_spec, shape.hidden, shape.heads, n)
        console.print(f"measured n={n} in {time.time() - t0:.0f} s: " +
                      ", ".join(f"{op} {layer[op][0]:.1f}s/{layer[op][1] / 2**20:.1f}MB" for op in LAYER_OPS) +
                      ", " + ", ".join(f"{k} {v[0]:.1f}s/{v[1] / 2**20:.1f}MB" for k, v in prunes.items()))
        measured[str(n)] = {**{op: layer[op] for op in LAYER_OPS}, **prunes}
        args.measurements.parent.mkdir(parents=True, exist_ok=True)
        args.measurements.write_text(json.dumps(measured, indent=1))
    layer_pts: dict[str, list] = {op: [] for op in LAYER_OPS}
    prune_pts: dict[str, list] = {"prune": [], "reduce": [], "bolt_we": []}
    for key, values in measured.items():
        n, k = int(key), max(1, int(key) // 2)
        for op in LAYER_OPS:
            layer_pts[op].append((n, n * n, values[op]))
        for name in prune_pts:
            prune_pts[name].append((n, k * n, values[name]))
    layer_fit = {op: [fit([(a, b, v[q]) for a, b, v in pts]) for q in (0, 1)] for op, pts in layer_pts.items()}
    prune_fit = {nm: [fit([(a, b, v[q]) for a, b, v in pts]) for q in (0, 1)] for nm, pts in prune_pts.items()}
    all_rows, md_tables = [], []
    for seq in args.seq:
        rows = table_rows(seq, schedules[seq], layer_fit, prune_fit)
        table, md = render(rows, f"{seq} tokens, {shape.layers}×{shape.hidden}, {args.protocol}")
        console.print(table)
        all_rows += rows
        md_tables.append(f"Schedule (prune, tokens entering each layer): "
                         + "-".join(f"{n:.0f}" for n in schedules[seq]["prune"].entering) + "\n\n" + md)
    header = (f"## {date.today()} — `{' '.join(sys.argv)}`\n\nMachine: {platform.node()}, {platform.processor() or platform.machine()}, "
              f"2 cores; {args.protocol} over {args.transport}; measured sizes {args.sizes}; run took "
              f"{time.time() - started:.0f} s. Whole-model figures are composed from measured per-layer costs "
              "(fitted c + a·n + b·n²) at the schedule's sizes; LAN/WAN = compute + bytes/bandwidth.\n\n")
    report = header + "\n\n".join(md_tables) + "\n"
    if args.results:
        with open(args.results, "a") as fh:
            fh.write("\n" + report)
    from pipeline.tracking import log_standalone_run

    metrics = {f"{r['method']}/{r['seq']}/{k}": float(v) for r in all_rows for k, v in r.items()
               if isinstance(v, float) and not math.isnan(v)}
    run_id = log_standalone_run("benchmarks", "bench_e2e", vars(args) | {"shape": shape.__dict__}, metrics,
                                {"results.md": report}, ROOT / "outputs")
    console.print(f"logged to MLflow run {run_id} (experiment 'benchmarks')")


if __name__ == "__main__":
    main()
