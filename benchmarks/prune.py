"""Π_prune vs BOLT WE, per layer, at several token counts (default BERT-base d = 768, H = 12, CHEETAH).

    python -m pipeline stage=benchmark benchmark=prune benchmark.sizes=[32,64,128]

For each n: Π_prune = importance + mask + count (n comparisons) → reveal k (≈ n/2 from a median
threshold) → one-hot selection (k·n equality tests) + one k×n×d matmul. BOLT WE = importance +
n×n ranking comparisons + the same selection matmul (k = ⌈n/2⌉, nothing revealed). Each program
is measured on the second pass of a session (the first absorbs Cheetah's one-time setup).
"""
from __future__ import annotations

import logging
import math

import numpy as np

from benchmarks.common import BenchResult, LogMetrics, markdown, shape_spec
from benchmarks.configs import PruneBench
from protocols import pruning as pr
from protocols.batch import prune_step, score_step
from protocols.session import SessionSpec, TwoPartySession

log = logging.getLogger(__name__)


def _probs(n: int, heads: int, rng: np.random.Generator) -> np.ndarray:
    logits = rng.standard_normal((heads, n, n)).astype(np.float32)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def bench(n: int, d: int, heads: int, protocol: str) -> dict[str, float]:
    """One layer's Π_prune and BOLT WE costs at n tokens: seconds and MB per phase."""
    rng = np.random.default_rng(n)
    probs = _probs(n, heads, rng)
    theta = float(np.median(probs.mean(axis=(0, 1))))
    with TwoPartySession(SessionSpec(protocol=protocol)) as s:
        s.share("A", probs, owner="client")
        s.share("h", rng.standard_normal((n, d)).astype(np.float32), owner="client")
        s.share("valid", np.ones(n, np.float32), owner="client")
        s.share("theta", np.array([theta], np.float32), owner="server")
        for _ in range(2):       # pass 1 warms up Cheetah's one-time OT/HE setup; pass 2 is measured
            with s.meter.measure() as mask:
                s.run(prune_step, ["A", "theta", "valid"], ["R", "M", "k"], op="Prune", layer=0)
            k = int(round(float(np.asarray(s.reveal("k", purpose="kept count")).reshape(-1)[0])))
            with s.meter.measure() as select:
                s.run(pr.prune_select, ["h", "M", "valid"], ["h2", "v2"], op="Prune", layer=0, static={"k": k})
            s.run(score_step, ["A"], ["S2"], op="Other", layer=0)
            with s.meter.measure() as bolt:
                s.run(pr.bolt_we_select, ["h", "S2", "valid"], ["h3", "v3"], op="Prune", layer=1,
                      static={"keep": math.ceil(n / 2)})
    m, c, b = mask.report, select.report, bolt.report
    return {"n": n, "k": k, "mask_s": m.wall_s, "mask_mb": m.bytes_total / 2**20, "select_s": c.wall_s,
            "select_mb": c.bytes_total / 2**20, "prune_s": m.wall_s + c.wall_s,
            "prune_mb": (m.bytes_total + c.bytes_total) / 2**20, "bolt_s": b.wall_s, "bolt_mb": b.bytes_total / 2**20}


def run(cfg: PruneBench, log_metrics: LogMetrics) -> BenchResult:
    """One row per size; the BOLT WE / Π_prune ratio of each, measured side by side."""
    shape, rows = shape_spec(cfg.shape), []
    for n in cfg.sizes:
        r = bench(n, shape.hidden, shape.heads, cfg.protocol)
        rows.append(r)
        log_metrics({f"{n}/{k}": float(v) for k, v in r.items() if k != "n"})
        log.info(f"n={n}: Π_prune {r['prune_s']:.2f} s / {r['prune_mb']:.2f} MB, BOLT WE {r['bolt_s']:.2f} s / {r['bolt_mb']:.2f} MB")
    cells = [[r["n"], r["k"], *(f"{r[f'{p}_s']:.2f} / {r[f'{p}_mb']:.2f}" for p in ("mask", "select", "prune", "bolt")),
              f"{r['bolt_s'] / r['prune_s']:.2f}x / {r['bolt_mb'] / r['prune_mb']:.2f}x"] for r in rows]
    table = markdown(cells, ["n", "k", "Π_prune mask s / MB", "Π_prune select+matmul s / MB", "Π_prune total s / MB",
                             "BOLT WE rank+select s / MB", "BOLT WE / Π_prune (time / bytes)"])
    text = f"{cfg.protocol}, d={shape.hidden}, H={shape.heads}; second (warm) pass per layer, measured\n\n{table}\n"
    return BenchResult(text, {f"{r['n']}/{k}": float(v) for r in rows for k, v in r.items() if k != "n"}, rows)
