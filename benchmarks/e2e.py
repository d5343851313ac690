"""CipherPrune vs. unpruned vs. BOLT word elimination, side by side, on one engine: whole-model
figures composed from measured per-layer costs at real token schedules.

    python -m pipeline stage=benchmark benchmark=e2e benchmark.checkpoint=DIR benchmark.glue_dir=GLUE
    python -m pipeline stage=benchmark benchmark=e2e_quick benchmark.checkpoint=DIR benchmark.glue_dir=GLUE

Method, in one run on this machine:
1. Token schedules from real thresholds on real sentences: the fine-tuned checkpoint (with its
   ``thresholds.json``) runs the plaintext twin of the secure forward pass (same code, same
   decisions) on ``sentences`` real dev examples of ``task`` at each ``seq``; the mean tokens
   entering each layer (and the Π_reduce high-group sizes) are stretched over the target depth
   (``Schedule.stretched``: layer 0 as is, later layers interpolated at the same relative depth).
2. Per-layer secure costs of the target shape (random weights: cost does not depend on weight
   values) measured at ``sizes`` token counts, split into the attention block and the FFN block
   per op class, plus the pruning programs and the high-/low-degree Softmax and GELU kernels side
   by side (``benchmarks.composition`` says how they are fitted and composed).
3. Whole-model figures = Σ over layers of the fitted costs at the schedule's sizes (attention at
   the tokens entering, FFN at the tokens kept, Π_reduce's low group at the low-degree price),
   plus the pruning programs; ratios to ``none`` and ``bolt_we``; the ideal ratios implied by the
   schedule (Σ n and Σ n² against the unpruned run); the pruning share. These figures are
   **composed**, not measured end to end; ``validate`` runs methods end to end and compares.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import BenchResult, LogMetrics, markdown, shape_spec, warm_up
from benchmarks.composition import (
    LAYER_PARTS,
    PRUNE_PROGRAMS,
    QUANTITIES,
    Fits,
    Schedule,
    compose,
    fit_measurements,
    part_of,
    table_rows,
)
from benchmarks.configs import E2EBench
from models.approx import DEFAULT_FAMILY, DEFAULT_REDUCE_FORMS, EXP_BOLT, GELU_BOLT, REDUCE_FORMS
from models.methods import builtin_names
from models.methods import get as get_method
from protocols import nonlinear
from protocols import pruning as pr
from protocols.batch import Layout, prune_step, reduce_step
from protocols.meter import OP_CLASSES, WAN, CostReport
from protocols.model_spec import PruningSpec, TransformerSpec
from protocols.plaintext import random_weights
from protocols.secure_model import SecureResult, plaintext_forward, run_batch
from protocols.session import SessionSpec, TwoPartySession

log = logging.getLogger(__name__)
BUILTIN = builtin_names()      # the methods whose programs this benchmark measures and composes
# Π_reduce's low-group forms new checkpoints are trained with (and the engine runs them with)
LOW = REDUCE_FORMS[DEFAULT_REDUCE_FORMS]
Measured = dict[str, dict[str, tuple[float, ...]]]


def bolt_thresholds(checkpoint: Path) -> Any:
    """The checkpoint's ``thresholds.json``; ValueError unless it was trained with BOLT's forms, the
    ones whose per-op costs this benchmark composes."""
    from models.thresholds import read_thresholds

    th = read_thresholds(checkpoint / "thresholds.json")
    if th.nonlinear != DEFAULT_FAMILY:
        raise ValueError(f"benchmark.checkpoint={checkpoint}: trained with nonlinear={th.nonlinear}, but benchmark=e2e "
                         f"composes the costs of BOLT's forms; measure it end to end with stage=secure_eval")
    return th


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
    from models.weights import load_checkpoint, to_numpy_weights

    model, _ = load_checkpoint(checkpoint)
    th = bolt_thresholds(checkpoint)
    spec = TransformerSpec.from_hf_config(json.loads((checkpoint / "config.json").read_text()))
    weights = to_numpy_weights(model)
    inputs = dev_inputs(task, checkpoint, glue_dir, seq, count)
    out: dict[str, Schedule] = {}
    for method in BUILTIN:
        pruning = PruningSpec(method=method, theta=tuple(th.theta), beta=tuple(th.beta), criterion=th.criterion,
                              reduce_forms=th.reduce_forms)
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


def measure_layer(session_spec: SessionSpec, shape: TransformerSpec, n: int) -> dict[str, tuple[float, ...]]:
    """One unpruned layer of ``shape`` at ``n`` tokens, after a warm-up: ``{LAYER_PARTS key: (seconds, bytes, rounds)}``."""
    one = TransformerSpec(**{**shape.__dict__, "layers": 1})
    weights = random_weights(one, scale=0.02)
    ids = np.random.default_rng(n).integers(1, one.vocab_size, n)
    with TwoPartySession(session_spec) as s:
        warm_up(s)
        with s.meter.measure() as measured:
            run_batch(s, one, weights, [(ids, np.ones(n, np.float32), np.zeros(n, np.int64))], PruningSpec("none", (0.0,), (0.0,)))
        programs = measured.report.programs
    out = {part: (0.0, 0.0, 0.0) for part in LAYER_PARTS}
    in_ffn = False
    for p in programs:
        if p.layer != 0:
            continue
        in_ffn = in_ffn or p.program == "linear"      # the FFN starts with the first plain linear
        key = part_of(p.op, in_ffn)
        out[key] = (out[key][0] + p.wall_s, out[key][1] + p.bytes_total, out[key][2] + p.rounds)
    return out


def measure_programs(session_spec: SessionSpec, shape: TransformerSpec, n: int) -> dict[str, tuple[float, ...]]:
    """At ``n`` tokens: Π_prune (n → n/2), Π_reduce (n → n/2, half high), BOLT WE (n → n/2), and
    Softmax ``[H, n, n]`` / GELU ``[n, f]`` with the high- and the low-degree polynomial:
    ``{name: (seconds, bytes, rounds)}``."""
    hidden, heads = shape.hidden, shape.heads
    rng = np.random.default_rng(n)
    probs = rng.dirichlet(np.ones(n), size=(heads, n)).astype(np.float32)
    k = max(1, n // 2)
    theta = float(np.median(probs.mean(axis=(0, 1))))
    out: dict[str, tuple[float, ...]] = {}
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
            ("Softmax_high", nonlinear.softmax, ["sc"], ["p1"], {"bias": None, "approx": EXP_BOLT}),
            ("Softmax_low", nonlinear.softmax, ["sc"], ["p2"], {"bias": None, "approx": LOW.exp}),
            ("GELU_high", nonlinear.gelu, ["f"], ["g1"], {"approx": GELU_BOLT}),
            ("GELU_low", nonlinear.gelu_form, ["f"], ["g2"], {"approx": LOW.gelu}),
        ]
        for name, fn, ins, outs, static in steps:
            with s.meter.measure() as measured:
                s.run(fn, ins, outs, op="Prune" if name in PRUNE_PROGRAMS else "Other", static=static)
            part = measured.report
            prev = out.get(name, (0.0, 0.0, 0.0))
            out[name] = (prev[0] + part.wall_s, prev[1] + part.bytes_total, prev[2] + part.rounds)
    return out


def render(rows: list[dict[str, Any]]) -> str:
    """The composed whole-model figures per method as Markdown."""
    cols = [("seq", "{:.0f}"), ("method", "{}"), ("time_s", "{:.1f}"), ("comm_gb", "{:.2f}"), ("rounds", "{:.0f}"), ("lan_s", "{:.1f}"),
            ("wan_s", "{:.1f}"), ("x_none", "{:.2f}"), ("x_bolt_we", "{:.2f}"), ("ideal_sum_n", "{:.2f}"),
            ("ideal_sum_n2", "{:.2f}"), ("prune_share", "{:.1%}"),
            *[(f"s/{op}", "{:.1f}") for op in OP_CLASSES if op != "Other"]]
    return markdown([[fmt.format(r[c]) for c, fmt in cols] for r in rows], [c for c, _ in cols])


def validate(session_spec: SessionSpec, shape: TransformerSpec, checkpoint: Path, task: str, glue_dir: Path,
             seq: int, layer_fit: Fits, prune_fit: Fits, methods: tuple[str, ...] = BUILTIN,
             unpruned_layers: int | None = None) -> list[dict[str, float | str]]:
    """Each of ``methods`` end to end on ``shape`` (random weights, the checkpoint's thresholds stretched
    to its depth, one real dev example of ``task`` at ``seq`` tokens), against the composition at the
    schedule that run actually took: measured vs composed seconds, bytes, rounds and modelled WAN
    seconds, layers only (embedding and head excluded on both sides). ``unpruned_layers``: ``none``
    runs only its first that many layers and the rest are its last layer repeated
    (``CostReport.with_layers_repeated``; the row's ``layers_run`` says so); None runs every layer."""
    th = bolt_thresholds(checkpoint)
    depth = np.linspace(0.0, len(th.theta) - 1, shape.layers)
    stretch = lambda v: tuple(np.interp(depth, np.arange(len(v)), v).tolist())  # noqa: E731
    enc = dev_inputs(task, checkpoint, glue_dir, seq, 1)[0]
    weights = random_weights(shape, scale=0.02)
    rows: list[dict[str, float | str]] = []
    for method in methods:
        ran = unpruned_layers if get_method(method).sizes == "unpruned" and unpruned_layers else shape.layers
        log.info(f"validate: {method} end to end, {ran} of {shape.layers} layers, {seq} tokens")
        with TwoPartySession(session_spec) as s:
            warm_up(s)
            with s.meter.measure() as measured:
                example = (np.array(enc["input_ids"]), np.array(enc["attention_mask"], np.float32),
                           np.array(enc["token_type_ids"]))
                pruning = PruningSpec(method, stretch(th.theta), stretch(th.beta), th.criterion, th.reduce_forms)
                res = run_batch(s, shape, weights, [example], pruning, layers=ran if ran < shape.layers else None)[0]
            whole = measured.report.with_layers_repeated(ran, shape.layers)
        layers_cost = CostReport([p for p in whole.programs if p.layer is not None])
        sched = schedule_of(res)
        if ran < shape.layers:              # unpruned: every token enters every layer
            sched = Schedule(*(v + v[-1:] * (shape.layers - ran) for v in (sched.entering, sched.kept, sched.high)))
        comp = compose(sched, method, layer_fit, prune_fit, seq)
        composed = {q: sum(comp[f"{q}/{op}"] for op in OP_CLASSES) for q in QUANTITIES}
        row: dict[str, float | str] = {
            "method": method, "schedule": "-".join(f"{n:.0f}" for n in sched.entering),
            "layers_run": f"{ran} of {shape.layers}" + (", the rest repeated" if ran < shape.layers else ""),
            "measured_s": layers_cost.wall_s, "composed_s": composed["s"],
            "measured_mb": layers_cost.bytes_total / 2**20, "composed_mb": composed["bytes"] / 2**20,
            "measured_rounds": float(layers_cost.rounds), "composed_rounds": composed["rounds"],
            "measured_wan_s": layers_cost.network_time(WAN),
            "composed_wan_s": composed["s"] + 8 * composed["bytes"] / WAN.bandwidth_bps + composed["rounds"] * WAN.rtt_s}
        log.info(f"validate {method}: schedule {row['schedule']}, measured {row['measured_s']:.1f} s / "
                 f"{row['measured_mb']:.1f} MB / {row['measured_rounds']:.0f} rounds vs composed "
                 f"{row['composed_s']:.1f} s / {row['composed_mb']:.1f} MB / {row['composed_rounds']:.0f} rounds")
        rows.append(row)
    return rows


def validation_markdown(rows: list[dict[str, float | str]]) -> str:
    """The end-to-end checks as Markdown: measured and composed figures, composed's error on each."""
    err = lambda r, q: f"{float(r[f'composed_{q}']) / float(r[f'measured_{q}']) - 1:+.1%}"  # noqa: E731
    cells = [[r["method"], r["schedule"], r["layers_run"], f"{r['measured_s']:.1f}", f"{r['composed_s']:.1f}", err(r, "s"),
              f"{r['measured_mb']:.1f}", f"{r['composed_mb']:.1f}", err(r, "mb"), f"{r['measured_rounds']:.0f}",
              f"{r['composed_rounds']:.0f}", err(r, "rounds"), f"{r['measured_wan_s']:.1f}", f"{r['composed_wan_s']:.1f}",
              err(r, "wan_s")] for r in rows]
    return markdown(cells, ["method", "schedule", "layers run", "measured s", "composed s", "time error", "measured MB",
                            "composed MB", "bytes error", "measured rounds", "composed rounds", "rounds error",
                            "measured WAN s", "composed WAN s", "WAN error"])


def anchor(session_spec: SessionSpec, shape: TransformerSpec, n: int, layer_fit: Fits,
           gelu_rows: int = 32) -> list[tuple[str, float, float, float, float]]:
    """Check the fits beyond the measured sizes on slices affordable at ``n`` tokens: the
    softmax of one head ``[1, n, n]`` and GELU on ``gelu_rows`` rows ``[r, f]``, against the
    fitted whole-layer kernels scaled to the slice. ``[(name, s, MB, fitted s, fitted MB)]``."""
    rng = np.random.default_rng(n)
    cases = [("Softmax 1 head", nonlinear.softmax, (1, n, n), {"bias": None, "approx": EXP_BOLT}, "Softmax_high",
              1.0 / shape.heads),
             (f"GELU {gelu_rows} rows", nonlinear.gelu, (gelu_rows, shape.intermediate), {"approx": GELU_BOLT},
              "GELU_high", gelu_rows / n)]
    out = []
    with TwoPartySession(session_spec) as s:
        warm_up(s)
        for name, fn, dims, static, key, share in cases:
            s.share("x", rng.normal(size=dims).astype(np.float32), "client")
            with s.meter.measure() as measured:
                s.run(fn, ["x"], ["y"], op="Other", static=static)
            part = measured.report
            fitted = [float(layer_fit[key][q] @ np.array([1.0, n, n * n])) * share for q in (0, 1)]
            out.append((name, part.wall_s, part.bytes_total / 2**20, fitted[0], fitted[1] / 2**20))
            log.info(f"anchor n={n} {name}: measured {out[-1][1]:.1f} s / {out[-1][2]:.1f} MB, "
                          f"fit {out[-1][3]:.1f} s / {out[-1][4]:.1f} MB")
            s.delete("x", "y")
    return out


def measure(session_spec: SessionSpec, shape: TransformerSpec, sizes: list[int], path: Path | None,
            reuse: bool, log_metrics: LogMetrics) -> Measured:
    """Per-size measurements, saved to ``path`` (when given) after each size; with ``reuse`` sizes
    already in ``path`` (for the same shape) are read, not measured again."""
    measured: dict[str, Any] = json.loads(path.read_text()) if reuse and path and path.exists() else {}
    if measured.get("shape", shape.__dict__) != shape.__dict__:
        raise ValueError(f"benchmark.measurements={path} holds another shape ({measured['shape']}); use another file")
    sizes_done = measured.setdefault("sizes", {})
    for n in sizes:
        done = sizes_done.get(str(n), {})
        if set(done) >= set(LAYER_PARTS) and all(len(v) == len(QUANTITIES) for v in done.values()):
            continue                  # measured before, every quantity of every part
        t0 = time.time()
        layer = measure_layer(session_spec, shape, n)
        programs = measure_programs(session_spec, shape, n)
        log.info(f"measured n={n} in {time.time() - t0:.0f} s: " +
                 ", ".join(f"{k} {v[0]:.1f}s/{v[1] / 2**20:.1f}MB" for k, v in {**layer, **programs}.items()))
        sizes_done[str(n)] = {**layer, **programs}
        log_metrics({f"measured/{n}/{k}/{q}": v[i] / (2**20 if q == "mb" else 1) for k, v in sizes_done[str(n)].items()
                     for i, q in enumerate(("s", "mb", "rounds"))})
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"shape": shape.__dict__, "sizes": sizes_done}, indent=1))
    return {k: v for k, v in sizes_done.items() if int(k) in sizes}


def _inputs_exist(cfg: E2EBench) -> tuple[Path, Path]:
    """The checkpoint (with thresholds.json) and the GLUE tree, or a ValueError naming what is missing."""
    if not cfg.checkpoint or not cfg.glue_dir:
        raise ValueError("benchmark=e2e needs benchmark.checkpoint=<fine-tuned dir with thresholds.json> "
                         f"and benchmark.glue_dir=<GLUE tsv tree> (got checkpoint={cfg.checkpoint}, glue_dir={cfg.glue_dir})")
    checkpoint, glue_dir = Path(cfg.checkpoint), Path(cfg.glue_dir)
    for path in (checkpoint, checkpoint / "thresholds.json", glue_dir):
        if not path.exists():
            raise ValueError(f"{path} does not exist (benchmark.checkpoint needs a fine-tuned dir with thresholds.json)")
    return checkpoint, glue_dir


def _check_validation(cfg: E2EBench) -> None:
    """A ValueError naming a bad ``validate_methods`` entry or ``validate_unpruned_layers``."""
    unknown = [m for m in cfg.validate_methods if m not in BUILTIN]
    if unknown:
        raise ValueError(f"benchmark.validate_methods: unknown {unknown}; choose from {list(BUILTIN)}")
    k = cfg.validate_unpruned_layers
    if k is not None and not 2 <= k <= cfg.layers:
        raise ValueError(f"benchmark.validate_unpruned_layers={k}: must be in [2, benchmark.layers={cfg.layers}] "
                         "(layer 0 carries the one-time setup, so a later layer is the one repeated)")


def run(cfg: E2EBench, log_metrics: LogMetrics) -> BenchResult:
    """Schedules, per-size measurements, fits, composed tables; optional end-to-end checks and anchors."""
    checkpoint, glue_dir = _inputs_exist(cfg)
    _check_validation(cfg)
    shape = shape_spec(cfg.shape, cfg.layers)
    session_spec = SessionSpec(protocol=cfg.protocol, transport=cfg.transport, recv_timeout_s=1200.0)
    log.info(f"shape {shape.layers} layers × {shape.hidden} hidden, {shape.heads} heads, random weights; "
             f"schedules from real thresholds on real {cfg.task} dev examples")
    schedules = {seq: real_schedules(checkpoint, cfg.task, glue_dir, seq, cfg.sentences, shape.layers) for seq in cfg.seq}
    cache = Path(cfg.measurements) if cfg.measurements else None
    layer_fit, prune_fit = fit_measurements(measure(session_spec, shape, cfg.sizes, cache, cfg.reuse, log_metrics))
    all_rows: list[dict[str, Any]] = []
    depth = json.loads((checkpoint / "config.json").read_text())["num_hidden_layers"]
    stretched = (f" The checkpoint has {depth} layers: its schedules are **stretched** to {shape.layers} layers "
                 "(`Schedule.stretched`, interpolated at the same relative depth), not measured at this depth."
                 if depth != shape.layers else "")
    sections = [f"**Composed from per-layer measurements, not measured end to end.** {cfg.protocol} over "
                f"{cfg.transport}; measured sizes {cfg.sizes}.{stretched} Whole-model figures are composed from "
                "measured per-layer costs (attention block at n entering, FFN at k kept; fitted c + a·n + b·n²; Π_reduce's "
                "low group priced with the measured low/high-degree kernel ratio); LAN/WAN = compute + bytes/bandwidth + "
                "rounds × RTT (rounds fitted the same way)."]
    for seq in cfg.seq:
        rows = table_rows(seq, schedules[seq], layer_fit, prune_fit)
        all_rows += rows
        sched = schedules[seq][next(m for m in BUILTIN if get_method(m).reduce)]
        sections.append(f"{seq} tokens, {shape.layers}×{shape.hidden}. Schedule (tokens entering each layer): "
                        + "-".join(f"{n:.0f}" for n in sched.entering) + "; Π_reduce high group: "
                        + "-".join(f"{n:.0f}" for n in sched.high) + "\n\n" + render(rows))
    metrics = {f"{r['method']}/{r['seq']}/{k}": float(v) for r in all_rows for k, v in r.items()
               if isinstance(v, float) and not math.isnan(v)}
    if cfg.validate:
        checks = validate(session_spec, shape, checkpoint, cfg.task, glue_dir, cfg.seq[0], layer_fit, prune_fit,
                          tuple(cfg.validate_methods), cfg.validate_unpruned_layers)
        sections.append(f"End-to-end check at {cfg.seq[0]} tokens (measured run vs composition at its own "
                        "schedule, layers only; WAN modelled from each side's seconds, bytes and rounds):\n\n" + validation_markdown(checks))
        metrics.update({f"validate/{r['method']}/{k}": float(v) for r in checks for k, v in r.items() if isinstance(v, float)})
    for n in cfg.anchor:
        cells = [[a[0], f"{a[1]:.1f}", f"{a[3]:.1f}", f"{a[2]:.1f}", f"{a[4]:.1f}"] for a in anchor(session_spec, shape, n, layer_fit)]
        sections.append(f"Fits checked at {n} tokens on slices (fits from sizes {cfg.sizes}):\n\n"
                        + markdown(cells, ["slice", "measured s", "fitted s", "measured MB", "fitted MB"]))
    return BenchResult("\n\n".join(sections) + "\n", metrics, all_rows)
