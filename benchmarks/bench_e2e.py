"""CipherPrune vs. unpruned vs. BOLT word elimination, side by side, on one engine.

    python benchmarks/bench_e2e.py --checkpoint DIR [--seq 128 512] [--quick]

Method, in one run on this machine:
1. Token schedules from real thresholds on real sentences: the fine-tuned checkpoint in
   ``--checkpoint`` (with its ``thresholds.json``) runs the plaintext twin of the secure
   forward pass (same code, same decisions) on ``--sentences`` real dev examples of ``--task`` at
   each ``--seq``; the mean tokens entering each layer (and the Π_reduce high-group sizes)
   are stretched over the target depth (``Schedule.stretched``: layer 0 as is, later layers
   interpolated at the same relative depth).
2. Per-layer secure costs of the target shape (BERT-base: 12 × 768, 12 heads; random
   weights: cost does not depend on weight values) measured under CHEETAH at ``--sizes``
   token counts, split into the attention block and the FFN block per op class, plus the
   pruning programs and the high-/low-degree Softmax and GELU kernels side by side
   (``benchmarks.composition`` says how they are fitted and composed).
3. Whole-model figures = Σ over layers of the fitted costs at the schedule's sizes (attention
   at the tokens entering, FFN at the tokens kept, Π_reduce's low group at the low-degree
   price), plus the pruning programs; ratios to ``none`` and ``bolt_we``; the ideal ratios
   implied by the schedule (Σ n and Σ n² against the unpruned run); the pruning share.
``--validate`` (implied by ``--quick``, which uses a small shape) runs every method end to end
and compares the measured run with the composition at the schedule that run took.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.composition import (  # noqa: E402
    LAYER_PARTS,
    METHODS,
    PRUNE_PROGRAMS,
    Schedule,
    compose,
    fit_measurements,
    part_of,
    table_rows,
)
from models.approx import EXP_HIGH, EXP_LOW, GELU_HIGH, GELU_LOW  # noqa: E402
from protocols import nonlinear  # noqa: E402
from protocols import pruning as pr  # noqa: E402
from protocols.batch import Layout, prune_step, reduce_step  # noqa: E402
from protocols.meter import OP_CLASSES  # noqa: E402
from protocols.model_spec import PruningSpec, TransformerSpec  # noqa: E402
from protocols.secure_model import (  # noqa: E402
    SecureResult,
    plaintext_forward,
    secure_forward,
)
from protocols.session import SessionSpec, TwoPartySession  # noqa: E402

console = Console(width=240)


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


def dev_inputs(task: str, checkpoint: Path, glue_dir: Path, seq: int, count: int) -> list[dict[str, list[int]]]:
    """The first ``count`` real dev examples of a GLUE ``task`` (pairs for pair tasks),
    tokenised by the checkpoint's tokenizer and padded to ``seq``."""
    from transformers import AutoTokenizer

    from models.data import load_glue_raw

    dev = load_glue_raw(task, glue_dir, ("dev",))["dev"]
    tok = AutoTokenizer.from_pretrained(str(checkpoint))
    texts = [dev["text_a"][:count]] + ([dev["text_b"][:count]] if "text_b" in dev.column_names else [])
    return [dict(tok(*parts, max_length=seq, truncation=True, padding="max_length")) for parts in zip(*texts)]


def real_schedules(checkpoint: Path, task: str, glue_dir: Path, seq: int, count: int, layers: int) -> dict[str, Schedule]:
    """Schedules of the fine-tuned model on real dev examples of ``task``, stretched to ``layers``."""
    from models.thresholds import read_thresholds
    from models.weights import load_checkpoint, to_numpy_weights

    model, _ = load_checkpoint(checkpoint)
    th = read_thresholds(checkpoint / "thresholds.json")
    spec = TransformerSpec.from_hf_config(json.loads((checkpoint / "config.json").read_text()))
    weights = to_numpy_weights(model)
    inputs = dev_inputs(task, checkpoint, glue_dir, seq, count)
    out: dict[str, Schedule] = {}
    for method in METHODS:
        pruning = PruningSpec(method=method, theta=tuple(th.theta), beta=tuple(th.beta))
        sums = np.zeros((3, spec.layers))
        for enc in inputs:
            res = plaintext_forward(spec, weights, np.array(enc["input_ids"]), np.array(enc["attention_mask"]),
                                    np.array(enc["token_type_ids"]), pruning)
            sums += np.array(list(schedule_of(res).__dict__.values())) / len(inputs)
        out[method] = Schedule(*(v.tolist() for v in sums)).stretched(layers)
    return out


def schedule_of(res: SecureResult) -> Schedule:
    """The token schedule one forward pass actually ran."""
    high = [h if h is not None else k for h, k in zip(res.high_per_layer, res.kept_per_layer)]
    return Schedule([float(n) for n in res.entering_per_layer], [float(k) for k in res.kept_per_layer],
                    [float(h) for h in high])


def _warm_up_program(x, w):
    """Touches HE matmul, comparison, product, equality and the exp / GELU kernels (their
    fixed-point → int conversion and bit extraction): Cheetah's one-time key/OT setup."""
    y = x @ w
    return (jnp.maximum(y, 0.0) * y + (y == 0.0) + nonlinear.softmax(y, None, EXP_LOW)
            + nonlinear.gelu(y, GELU_LOW))


def warm_up(session: Any) -> None:
    """Run ``_warm_up_program`` so that per-session setup is not billed to the first measured op
    (measured CHEETAH, softmax 2×32×32 as the first program of a session: 19.6 s / 10.3 MB,
    later runs 2.7 s / 7.2 MB; after a 4×4 warm-up the first run still took 12.5 s, after
    this 64×64 one it takes no longer than later runs). Costs ≈ 20 s and 40 MB once per session."""
    rng = np.random.default_rng(0)
    session.share("warm_x", rng.normal(size=(64, 64)).astype(np.float32), "client")
    session.share("warm_w", rng.normal(size=(64, 64)).astype(np.float32), "server")
    session.run(_warm_up_program, ["warm_x", "warm_w"], ["warm_y"], op="Other")
    session.delete("warm_x", "warm_w", "warm_y")


def measure_layer(session_spec: SessionSpec, shape: TransformerSpec, n: int) -> dict[str, tuple[float, float]]:
    """One unpruned layer of ``shape`` at ``n`` tokens, after a warm-up: ``{LAYER_PARTS key: (seconds, bytes)}``."""
    one = TransformerSpec(**{**shape.__dict__, "layers": 1})
    weights = random_weights(one)
    ids = np.random.default_rng(n).integers(1, one.vocab_size, n)
    with TwoPartySession(session_spec) as s:
        warm_up(s)
        with s.meter.measure() as measured:
            secure_forward(s, one, weights, ids, np.ones(n, np.float32), np.zeros(n, np.int64), PruningSpec("none", (0.0,), (0.0,)))
        programs = measured.report.programs
    out = {part: (0.0, 0.0) for part in LAYER_PARTS}
    in_ffn = False
    for p in programs:
        if p.layer != 0:
            continue
        in_ffn = in_ffn or p.program == "linear"      # the FFN starts with the first plain linear
        key = part_of(p.op, in_ffn)
        out[key] = (out[key][0] + p.wall_s, out[key][1] + p.bytes_total)
    return out


def measure_programs(session_spec: SessionSpec, shape: TransformerSpec, n: int) -> dict[str, tuple[float, float]]:
    """At ``n`` tokens: Π_prune (n → n/2), Π_reduce (n → n/2, half high), BOLT WE (n → n/2), and
    Softmax ``[H, n, n]`` / GELU ``[n, f]`` with the high- and the low-degree polynomial:
    ``{name: (seconds, bytes)}``."""
    hidden, heads = shape.hidden, shape.heads
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
        s.share("sc", rng.normal(size=(heads, n, n)).astype(np.float32), "client")
        s.share("f", rng.normal(size=(n, shape.intermediate)).astype(np.float32), "client")
        steps = [
            ("prune", prune_step, ["A", "theta", "valid"], ["R", "M", "k"], {}),
            ("prune", pr.prune_select, ["h", "M", "valid"], ["h1", "v1"], {"k": k}),
            ("reduce", reduce_step, ["R", "beta", "M"], ["high", "kh"], {"layout": Layout((n,)), "heads": heads}),
            ("reduce", pr.reduce_select, ["h", "M", "high", "valid"], ["h2", "v2"], {"k": k, "k_high": max(1, k // 2)}),
            ("bolt_we", pr.bolt_we_select, ["h", "R", "valid"], ["h3", "v3"], {"keep": k}),  # rank(R) = rank(S)
            ("Softmax_high", nonlinear.softmax, ["sc"], ["p1"], {"bias": None, "approx": EXP_HIGH}),
            ("Softmax_low", nonlinear.softmax, ["sc"], ["p2"], {"bias": None, "approx": EXP_LOW}),
            ("GELU_high", nonlinear.gelu, ["f"], ["g1"], {"approx": GELU_HIGH}),
            ("GELU_low", nonlinear.gelu, ["f"], ["g2"], {"approx": GELU_LOW}),
        ]
        for name, fn, ins, outs, static in steps:
            with s.meter.measure() as measured:
                s.run(fn, ins, outs, op="Prune" if name in PRUNE_PROGRAMS else "Other", static=static)
            part = measured.report
            prev = out.get(name, (0.0, 0.0))
            out[name] = (prev[0] + part.wall_s, prev[1] + part.bytes_total)
    return out


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


def validate(session_spec: SessionSpec, shape: TransformerSpec, checkpoint: Path, task: str, glue_dir: Path,
             seq: int, layer_fit: Any, prune_fit: Any, methods: tuple[str, ...] = METHODS) -> list[dict[str, float | str]]:
    """Each of ``methods`` end to end on ``shape`` (random weights, the checkpoint's thresholds stretched
    to its depth, one real dev example of ``task`` at ``seq`` tokens), against the composition at the
    schedule that run actually took: measured vs composed seconds and bytes."""
    from models.thresholds import read_thresholds

    th = read_thresholds(checkpoint / "thresholds.json")
    depth = np.linspace(0.0, len(th.theta) - 1, shape.layers)
    stretch = lambda v: tuple(np.interp(depth, np.arange(len(v)), v).tolist())  # noqa: E731
    enc = dev_inputs(task, checkpoint, glue_dir, seq, 1)[0]
    weights = random_weights(shape)
    rows: list[dict[str, float | str]] = []
    for method in methods:
        with console.status(f"validate: {method} end to end, {shape.layers} layers, {seq} tokens"), \
                TwoPartySession(session_spec) as s:
            warm_up(s)
            with s.meter.measure() as measured:
                res = secure_forward(s, shape, weights, np.array(enc["input_ids"]), np.array(enc["attention_mask"], np.float32),
                                     np.array(enc["token_type_ids"]), PruningSpec(method, stretch(th.theta), stretch(th.beta)))
            cost = measured.report
        sched = schedule_of(res)
        comp = compose(sched, method, layer_fit, prune_fit, seq)
        measured_s = sum(p.wall_s for p in cost.programs if p.layer is not None)
        measured_b = sum(p.bytes_total for p in cost.programs if p.layer is not None)
        row = {"method": method, "schedule": "-".join(f"{n:.0f}" for n in sched.entering),
               "measured_s": measured_s, "composed_s": sum(comp[f"s/{op}"] for op in OP_CLASSES),
               "measured_mb": measured_b / 2**20, "composed_mb": sum(comp[f"bytes/{op}"] for op in OP_CLASSES) / 2**20}
        console.print(f"validate {method}: schedule {row['schedule']}, measured {measured_s:.1f} s / "
                      f"{row['measured_mb']:.1f} MB vs composed {row['composed_s']:.1f} s / {row['composed_mb']:.1f} MB")
        rows.append(row)
    return rows


def validation_markdown(rows: list[dict[str, float | str]]) -> str:
    lines = ["| method | schedule | measured s | composed s | measured MB | composed MB | bytes error |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        err = float(r["composed_mb"]) / float(r["measured_mb"]) - 1
        lines.append(f"| {r['method']} | {r['schedule']} | {r['measured_s']:.1f} | {r['composed_s']:.1f} | "
                     f"{r['measured_mb']:.1f} | {r['composed_mb']:.1f} | {err:+.1%} |")
    return "\n".join(lines)


def anchor(session_spec: SessionSpec, shape: TransformerSpec, n: int, layer_fit: Any,
           gelu_rows: int = 32) -> list[tuple[str, float, float, float, float]]:
    """Check the fits beyond the measured sizes on slices affordable at ``n`` tokens: the
    softmax of one head ``[1, n, n]`` and GELU on ``gelu_rows`` rows ``[r, f]``, against the
    fitted whole-layer kernels scaled to the slice. ``[(name, s, MB, fitted s, fitted MB)]``."""
    rng = np.random.default_rng(n)
    cases = [("Softmax 1 head", nonlinear.softmax, (1, n, n), {"bias": None, "approx": EXP_HIGH}, "Softmax_high",
              1.0 / shape.heads),
             (f"GELU {gelu_rows} rows", nonlinear.gelu, (gelu_rows, shape.intermediate), {"approx": GELU_HIGH},
              "GELU_high", gelu_rows / n)]
    out = []
    with TwoPartySession(session_spec) as s:
        warm_up(s)
        for name, fn, dims, static, key, share in cases:
            s.share("x", rng.normal(size=dims).astype(np.float32), "client")
            with console.status(f"anchor at n={n}: {name}"):
                with s.meter.measure() as measured:
                    s.run(fn, ["x"], ["y"], op="Other", static=static)
                part = measured.report
            fitted = [float(layer_fit[key][q] @ np.array([1.0, n, n * n])) * share for q in (0, 1)]
            out.append((name, part.wall_s, part.bytes_total / 2**20, fitted[0], fitted[1] / 2**20))
            console.print(f"anchor n={n} {name}: measured {out[-1][1]:.1f} s / {out[-1][2]:.1f} MB, "
                          f"fit {out[-1][3]:.1f} s / {out[-1][4]:.1f} MB")
            s.delete("x", "y")
    return out


def measure(session_spec: SessionSpec, shape: TransformerSpec, sizes: list[int], path: Path,
            reuse: bool) -> dict[str, dict[str, tuple[float, float]]]:
    """Per-size measurements, saved to ``path`` after each size; with ``reuse`` sizes already in
    ``path`` (for the same shape) are read, not measured again."""
    measured: dict[str, Any] = json.loads(path.read_text()) if reuse and path.exists() else {}
    if measured.get("shape", shape.__dict__) != shape.__dict__:
        raise SystemExit(f"--measurements {path} holds another shape ({measured['shape']}); use another file")
    sizes_done = measured.setdefault("sizes", {})
    for n in sizes:
        if str(n) in sizes_done and set(sizes_done[str(n)]) >= set(LAYER_PARTS):
            continue
        t0 = time.time()
        with console.status(f"{session_spec.protocol}: one layer, then pruning programs and kernels, at n={n}"):
            layer = measure_layer(session_spec, shape, n)
            programs = measure_programs(session_spec, shape, n)
        console.print(f"measured n={n} in {time.time() - t0:.0f} s: " +
                      ", ".join(f"{k} {v[0]:.1f}s/{v[1] / 2**20:.1f}MB" for k, v in {**layer, **programs}.items()))
        sizes_done[str(n)] = {**layer, **programs}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"shape": shape.__dict__, "sizes": sizes_done}, indent=1))
    return {k: v for k, v in sizes_done.items() if int(k) in sizes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True, help="fine-tuned checkpoint dir with thresholds.json")
    ap.add_argument("--task", default="sst2", help="GLUE task whose real dev examples set the schedules")
    ap.add_argument("--glue-dir", type=Path, default=ROOT.parent / "shared" / "data" / "glue")
    ap.add_argument("--seq", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--sentences", type=int, default=16)
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64, 128], help="token counts measured per layer")
    ap.add_argument("--protocol", default="CHEETAH")
    ap.add_argument("--transport", default="processes")
    ap.add_argument("--quick", action="store_true",
                    help="BERT-tiny shape (2 x 128), sizes 16 32 64, seq 32 64, and --validate: minutes")
    ap.add_argument("--validate", action="store_true",
                    help="also run every method end to end and compare with the composition (costly on BERT-base)")
    ap.add_argument("--validate-methods", nargs="+", choices=METHODS, default=list(METHODS),
                    help="methods run end to end by --validate")
    ap.add_argument("--anchor", type=int, nargs="*", default=[],
                    help="token counts beyond --sizes at which to check the fits on affordable slices")
    ap.add_argument("--results", type=Path, default=None, help="append the table to this Markdown file")
    ap.add_argument("--measurements", type=Path, default=None,
                    help="per-size measurements file (default outputs/bench_e2e_<shape>.json)")
    ap.add_argument("--reuse", action="store_true", help="reuse sizes already in --measurements")
    args = ap.parse_args()
    if args.quick:
        args.validate = True
        if args.sizes == ap.get_default("sizes"):
            args.sizes = [16, 32, 64]
        if args.seq == ap.get_default("seq"):
            args.seq = [32, 64]
    for path in (args.checkpoint, args.checkpoint / "thresholds.json", args.glue_dir):
        if not path.exists():
            raise SystemExit(f"{path} does not exist (--checkpoint needs a fine-tuned dir with thresholds.json)")
    shape = (TransformerSpec(vocab_size=30522, hidden=128, layers=2, heads=2, intermediate=512, max_positions=512)
             if args.quick else
             TransformerSpec(vocab_size=30522, hidden=768, layers=12, heads=12, intermediate=3072, max_positions=512))
    tag = f"{shape.layers}x{shape.hidden}"
    args.measurements = args.measurements or ROOT / "outputs" / f"bench_e2e_{tag}.json"
    session_spec = SessionSpec(protocol=args.protocol, transport=args.transport, recv_timeout_s=1200.0)
    started = time.time()
    console.print(f"[bold]shape[/] {shape.layers} layers × {shape.hidden} hidden, {shape.heads} heads, random weights "
                  f"(cost does not depend on weight values); schedules from real thresholds on real {args.task} dev examples")
    schedules = {}
    for seq in args.seq:
        with console.status(f"schedule at {seq} tokens from {args.checkpoint}"):
            schedules[seq] = real_schedules(args.checkpoint, args.task, args.glue_dir, seq, args.sentences, shape.layers)
        console.print(f"schedule {seq}: prune " + "-".join(f"{n:.0f}" for n in schedules[seq]["prune"].entering))
    layer_fit, prune_fit = fit_measurements(measure(session_spec, shape, args.sizes, args.measurements, args.reuse))
    all_rows, md_tables = [], []
    for seq in args.seq:
        rows = table_rows(seq, schedules[seq], layer_fit, prune_fit)
        table, md = render(rows, f"{seq} tokens, {shape.layers}×{shape.hidden}, {args.protocol}")
        console.print(table)
        all_rows += rows
        sched = schedules[seq]["prune_reduce"]
        md_tables.append("Schedule (tokens entering each layer): " + "-".join(f"{n:.0f}" for n in sched.entering)
                         + "; Π_reduce high group: " + "-".join(f"{n:.0f}" for n in sched.high) + "\n\n" + md)
    metrics = {f"{r['method']}/{r['seq']}/{k}": float(v) for r in all_rows for k, v in r.items()
               if isinstance(v, float) and not math.isnan(v)}
    if args.validate:
        checks = validate(session_spec, shape, args.checkpoint, args.task, args.glue_dir, args.seq[0], layer_fit, prune_fit,
                          tuple(args.validate_methods))
        md_tables.append(f"End-to-end check at {args.seq[0]} tokens (measured run vs composition at its own "
                         "schedule, layers only):\n\n" + validation_markdown(checks))
        metrics.update({f"validate/{r['method']}/{k}": float(v) for r in checks for k, v in r.items()
                        if isinstance(v, float)})
    for n in args.anchor:
        lines = ["| slice | measured s | fitted s | measured MB | fitted MB |", "|---|---|---|---|---|"]
        lines += [f"| {a[0]} | {a[1]:.1f} | {a[3]:.1f} | {a[2]:.1f} | {a[4]:.1f} |"
                  for a in anchor(session_spec, shape, n, layer_fit)]
        md_tables.append(f"Fits checked at {n} tokens on slices (fits from sizes {args.sizes}):\n\n" + "\n".join(lines))
    header = (f"## {date.today()} — `{' '.join(sys.argv)}`\n\nMachine: {platform.node()}, {platform.processor() or platform.machine()}, "
              f"2 cores; {args.protocol} over {args.transport}; measured sizes {args.sizes}; run took "
              f"{time.time() - started:.0f} s. Whole-model figures are composed from measured per-layer costs "
              "(attention block at n entering, FFN at k kept; fitted c + a·n + b·n²; Π_reduce's low group priced "
              "with the measured low/high-degree kernel ratio); LAN/WAN = compute + bytes/bandwidth.\n\n")
    report = header + "\n\n".join(md_tables) + "\n"
    if args.results:
        with open(args.results, "a") as fh:
            fh.write("\n" + report)
    from pipeline.tracking import log_standalone_run

    run_id = log_standalone_run("benchmarks", "bench_e2e", vars(args) | {"shape": shape.__dict__}, metrics,
                                {"results.md": report}, ROOT / "outputs")
    console.print(f"logged to MLflow run {run_id} (experiment 'benchmarks')")


if __name__ == "__main__":
    main()
