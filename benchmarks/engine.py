"""Engine cost on the paper's threat model: one transformer layer under CHEETAH, measured side
by side for token counts × batch sizes × ownership, in one run.

    python -m pipeline stage=benchmark benchmark=engine benchmark.tokens=[16,128] benchmark.batch=[1,8]
    python -m pipeline stage=benchmark benchmark=engine benchmark.families=[bolt,bumblebee] benchmark.batch=[1]

For every configuration one session runs ``batch`` random inputs of ``tokens`` tokens as one
batch (their rows stacked, ``protocols.batch``) through one unpruned layer of the shape (random
weights: secure cost does not depend on weight values), after a warm-up that absorbs Cheetah's
one-time setup. Reported per op class of the layer (attention-block Linear, Softmax, FFN Linear,
GELU, LayerNorm, Other), seconds and MB for the batch, then the whole layer per input. Ownership
``server``: weights private to the server (secret × private matmuls, ``mmul_sv``); ``none``:
weights secret-shared (``mmul_aa``); ``server_client``: the client's embedded sequence private
to the client as well. Each non-linearity family of ``benchmark.families`` (``models.approx.FAMILIES``:
its GELU and softmax forms and SPU runtime options) is a configuration of its own. The embedding
LayerNorm and the classifier head are reported apart.
Latency (batch 1) and cost per input at a batch size are different figures: the table keeps
them in separate rows and the ratios name the batch sizes they compare.

With ``benchmark.matmuls=[16,128]``: instead of layers, the Q/K/V projections at those row
counts as three matmuls and as one fused ``[d, 3d]`` one, per ring in ``benchmark.fields`` and
with / without SPU's mmul split.
"""
from __future__ import annotations

import itertools
import logging
from typing import Any, Optional

import numpy as np

from benchmarks.common import BenchResult, LogMetrics, markdown, shape_spec, warm_up
from benchmarks.configs import OWNERSHIP, EngineBench
from models.approx import DEFAULT_FAMILY, family_of
from protocols.model_spec import PruningSpec, TransformerSpec
from protocols.plaintext import random_weights
from protocols.secure_model import run_batch
from protocols.session import SessionSpec, TwoPartySession

log = logging.getLogger(__name__)
PARTS = ("attn/Linear", "Softmax", "ffn/Linear", "GELU", "LayerNorm", "Other")


def measure(spec: SessionSpec, shape: TransformerSpec, tokens: int, batch: int,
            heads_per_program: Optional[int] = None, family: str = DEFAULT_FAMILY) -> dict[str, float]:
    """One layer for ``batch`` inputs of ``tokens`` tokens with the non-linearities of ``family``
    (its runtime options are ``spec``'s to carry): ``{part/s, part/mb, ...}`` for the batch,
    ``layer_s``/``layer_mb`` (layer 0 only), ``emb_ln_*`` and ``head_*`` (outside the layer), kernels,
    ``rounds``, each party's peak RSS ``peak_rss_mb/{client,server}`` (the session's processes)."""
    weights = random_weights(shape, scale=0.02)
    rng = np.random.default_rng(tokens * 100 + batch)
    examples = [(rng.integers(1, shape.vocab_size, tokens), np.ones(tokens, np.float32), np.zeros(tokens, np.int64))
                for _ in range(batch)]
    with TwoPartySession(spec) as s:
        warm_up(s)
        with s.meter.measure() as measured:
            run_batch(s, shape, weights, examples, PruningSpec("none", nonlinear=family),
                      heads_per_program=heads_per_program)
        cost = measured.report
        rss = s.peak_rss_mb()
    out: dict[str, float] = {f"{p}/{q}": 0.0 for p in PARTS for q in ("s", "mb")}
    out |= {f"peak_rss_mb/{owner}": mb for owner, mb in rss.items()}
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
    out["layer_rounds"] = float(sum(p.rounds for p in layer))
    out["per_input_s"] = out["layer_s"] / batch
    out["per_input_mb"] = out["layer_mb"] / batch
    for name, count in cost.kernel_counts().items():
        if name.startswith("mmul"):
            out[f"kernel/{name}"] = float(count)
    return out


def layer_table(rows: list[dict[str, Any]]) -> str:
    """Seconds / MB per part, per (tokens, batch, owners)."""
    cells = []
    for r in rows:
        m = r["m"]
        kernels = ", ".join(f"{k.split('/')[1]} {v:.0f}" for k, v in sorted(m.items()) if k.startswith("kernel/"))
        cells.append([r["tokens"], r["batch"], r["owners"], r["family"], r["heads"] or "all",
                      *[f"{m[f'{p}/s']:.1f} s / {m[f'{p}/mb']:.1f}" for p in PARTS],
                      f"{m['layer_s']:.1f} s / {m['layer_mb']:.1f} / {m['layer_rounds']:.0f}",
                      f"{m['per_input_s']:.1f} s / {m['per_input_mb']:.1f}",
                      f"{m['peak_rss_mb/client']:.0f} / {m['peak_rss_mb/server']:.0f}", kernels])
    return markdown(cells, ["tokens", "batch", "owners", "nonlinear", "heads / program", *PARTS, "layer (batch): s / MB / rounds",
                            "per input", "peak RSS MiB client / server", "matmul kernels"])


def ratios(rows: list[dict[str, Any]]) -> list[str]:
    """Per-input cost at the largest token count (batch 1) over that at each smaller count and batch,
    per ownership: how far a pruned (small) layer is from the ideal ratio of the token counts."""
    lines = []
    for owners, family in dict.fromkeys((r["owners"], r["family"]) for r in rows):
        mine = [r for r in rows if r["owners"] == owners and r["family"] == family and r["heads"] is None]
        big = max(r["tokens"] for r in mine)
        ref = next((r for r in mine if r["tokens"] == big and r["batch"] == 1), None)
        for r in mine if ref is not None else []:
            if r["tokens"] == big:
                continue
            lines.append(f"- weights/owners `{owners}`, {family}'s non-linearities: layer at {big} tokens (batch 1) / per "
                         f"input at {r['tokens']} tokens, batch {r['batch']}: **{ref['m']['layer_s'] / r['m']['per_input_s']:.2f}x** time, "
                         f"{ref['m']['layer_mb'] / r['m']['per_input_mb']:.2f}x bytes (ideal {big / r['tokens']:.0f}x)")
    return lines


def _three(x, wq, wk, wv):  # type: ignore[no-untyped-def]
    """Q, K, V as three matmuls (the engine's ``qkv``)."""
    return x @ wq, x @ wk, x @ wv


def _fused(x, w):  # type: ignore[no-untyped-def]
    """Q, K, V as one matmul with the weights side by side ``[d, 3d]``."""
    return x @ w


LEVERS = {"three": (_three, ("wq", "wk", "wv")), "fused": (_fused, ("wqkv",))}


def measure_matmuls(spec: SessionSpec, rows: int, hidden: int) -> dict[str, tuple[float, float, dict[str, int]]]:
    """Q/K/V projections of ``rows`` rows with server-private weights, as three matmuls and as one
    fused ``[d, 3d]`` one: ``{variant: (seconds, MB, kernels)}``."""
    rng = np.random.default_rng(rows)
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


def matmul_levers(cfg: EngineBench, log_metrics: LogMetrics) -> BenchResult:
    """The projection variants side by side, per ring and mmul split; a failing variant is a row too."""
    hidden, cells, metrics = shape_spec(cfg.shape).hidden, [], {}
    for ring in cfg.fields:
        bits = 12 if ring == "FM32" else 18
        for disable in (False, True):
            options = (("experimental_disable_mmul_split", True),) if disable else ()
            spec = SessionSpec(protocol="CHEETAH", field=ring, fraction_bits=bits, transport=cfg.transport,
                               recv_timeout_s=cfg.recv_timeout_s, private_owners=("server",), runtime_options=options)
            for rows in cfg.matmuls:
                head = [rows, f"{ring} ({bits} bits)", "off" if disable else "on"]
                try:
                    m = measure_matmuls(spec, rows, hidden)
                except Exception as err:  # noqa: BLE001 - a failing variant is a result too (FM32 segfaults a party)
                    cells.append([*head, f"failed: {str(err).splitlines()[0][:120]}", "", ""])
                    log.warning(f"matmul levers {head}: failed: {err}")
                    continue
                (t3, b3, _), (tf, bf, kf) = m["three"], m["fused"]
                cells.append([*head, f"{t3:.1f} s / {b3:.1f} MB", f"{tf:.1f} s / {bf:.1f} MB",
                              ", ".join(f"{k} {v}" for k, v in sorted(kf.items()) if k.startswith("mmul"))])
                key = f"{ring}/split_{'off' if disable else 'on'}/{rows}"
                found = {f"{key}/three_s": t3, f"{key}/three_mb": b3, f"{key}/fused_s": tf, f"{key}/fused_mb": bf}
                log_metrics(found)
                metrics.update(found)
                log.info(f"matmul levers {head}: three {t3:.1f} s / {b3:.1f} MB, fused {tf:.1f} s / {bf:.1f} MB")
    table = markdown(cells, ["rows", "field", "mmul split", "three matmuls", "one fused [d, 3d]", "kernels (fused)"])
    return BenchResult(f"hidden {hidden}, server-private weights, CHEETAH over {cfg.transport}; measured\n\n{table}\n", metrics)


def run(cfg: EngineBench, log_metrics: LogMetrics) -> BenchResult:
    """The layer grid (or, with ``cfg.matmuls``, the projection levers); every figure measured."""
    bad = [o for o in cfg.owners if o not in OWNERSHIP]
    if bad:
        raise ValueError(f"benchmark.owners: {bad} not in {sorted(OWNERSHIP)}")
    for family in cfg.families:                      # a typo fails here, before any measurement
        family_of(family)
    if cfg.matmuls:
        return matmul_levers(cfg, log_metrics)
    shape, rows = shape_spec(cfg.shape), []
    for owners, family in itertools.product(cfg.owners, cfg.families):
        spec = SessionSpec(protocol="CHEETAH", transport=cfg.transport, recv_timeout_s=cfg.recv_timeout_s,
                           private_owners=OWNERSHIP[owners], runtime_options=family_of(family).runtime_options)
        for tokens, batch, heads in itertools.product(cfg.tokens, cfg.batch, cfg.heads_per_program):
            if tokens * batch > cfg.max_rows and batch > 1:
                continue
            m = measure(spec, shape, tokens, batch, heads, family)
            rows.append({"tokens": tokens, "batch": batch, "owners": owners, "family": family, "heads": heads, "m": m})
            log_metrics({f"{_key(rows[-1])}/{k}": v for k, v in m.items()})
            log.info(f"{owners} {family} {batch}x{tokens} heads/program {heads or 'all'}: layer {m['layer_s']:.1f} s / "
                     f"{m['layer_mb']:.1f} MB, per input {m['per_input_s']:.1f} s, peak RSS "
                     f"{m['peak_rss_mb/client']:.0f} / {m['peak_rss_mb/server']:.0f} MiB")
    rss = "per configuration's party processes" if cfg.transport == "processes" else "of this one process so far (threads)"
    report = (f"{cfg.shape.value} shape, random weights, CHEETAH over {cfg.transport}; all measured, none composed; "
              f"peak RSS {rss}\n\n" + layer_table(rows) + "\n\n" + "\n".join(ratios(rows)) + "\n")
    metrics = {f"{_key(r)}/{k}": v for r in rows for k, v in r["m"].items()}
    return BenchResult(report, metrics, rows)


def _key(row: dict[str, Any]) -> str:
    """``{owners}/{tokens}x{batch}``, with ``/heads{k}`` when attention ran k heads a program and
    ``/{family}`` for a non-linearity family other than BOLT's."""
    base = f"{row['owners']}/{row['tokens']}x{row['batch']}"
    base = base if row["family"] == DEFAULT_FAMILY else f"{base}/{row['family']}"
    return base if row["heads"] is None else f"{base}/heads{row['heads']}"
