"""Π_prune vs BOLT WE, per layer, at several token counts (default BERT-base d = 768, H = 12, CHEETAH).

    python -m pipeline stage=benchmark benchmark=prune benchmark.sizes=[128,512]

For each n: Π_prune = importance + mask + count (n comparisons) → reveal k (≈ n/2 from a median
threshold) → one-hot selection (k·n equality tests) + one k×n×d matmul. The mask is measured as a
layer after a Π_prune runs it (every row a real token) and, beside it, as layer 0 runs it: the
attention rows masked by the client's secret padding mask first (one ``[1, n] × [n, n]`` secret
product), the relative criterion. BOLT WE = importance +
an oblivious top-⌈n/2⌉ selection + the same selection matmul (nothing revealed), once per
``algorithms`` entry (``protocols.pruning.BOLT_WE_ALGORITHMS``: the bitonic network the engine
uses, the n×n ranking), side by side, with the comparisons each asks for (counted in the compiled
program, ``protocols.topk.count_comparisons``) beside BOLT's bitonic-sort count. The attention
probabilities and hidden states are secret-shared, as in the engine (where they are computed
under MPC); the threshold is the server's own. Each program is measured on the second pass of a
session (the first absorbs Cheetah's one-time setup).
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
from protocols.topk import bitonic_sort_comparisons, count_comparisons

log = logging.getLogger(__name__)


def _probs(n: int, heads: int, rng: np.random.Generator) -> np.ndarray:
    logits = rng.standard_normal((heads, n, n)).astype(np.float32)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def bench(n: int, d: int, heads: int, protocol: str, algorithms: list[str], recv_timeout_s: float) -> dict[str, float]:
    """One layer's Π_prune and BOLT WE costs at n tokens: seconds and MB per phase, BOLT WE once per
    top-half algorithm, and each algorithm's secure comparisons / equality tests."""
    rng = np.random.default_rng(n)
    probs = _probs(n, heads, rng)
    theta = float(np.median(probs.mean(axis=(0, 1)))) * n     # relative: c·S, c = n real tokens
    keep = math.ceil(n / 2)
    bolt: dict[str, object] = {}
    spec = SessionSpec(protocol=protocol, private_owners=("server",), recv_timeout_s=recv_timeout_s)
    with TwoPartySession(spec) as s:
        s.share("A", probs, owner="client")          # secret-shared: the engine computes it under MPC
        s.share("h", rng.standard_normal((n, d)).astype(np.float32), owner="client")
        s.share("valid", np.ones(n, np.float32), owner="client")
        s.share("theta", np.array([theta], np.float32), owner="server")
        for _ in range(2):       # pass 1 warms up Cheetah's one-time OT/HE setup; pass 2 is measured
            with s.meter.measure() as first:
                s.run(prune_step, ["A", "theta", "valid"], ["R", "M", "k"], op="Prune", layer=0,
                      static={"relative": True})
            with s.meter.measure() as mask:
                s.run(prune_step, ["A", "theta", "valid"], ["R", "M", "k"], op="Prune", layer=0,
                      static={"relative": True, "all_valid": True})
            k = int(round(float(np.asarray(s.reveal("k", purpose="kept count")).reshape(-1)[0])))
            with s.meter.measure() as select:
                s.run(pr.prune_select, ["h", "M", "valid"], ["h2", "v2"], op="Prune", layer=0, static={"k": k})
            s.run(score_step, ["A"], ["S2"], op="Other", layer=0)
            for algorithm in algorithms:
                with s.meter.measure() as meter:
                    s.run(pr.bolt_we_select, ["h", "S2", "valid"], ["h3", "v3"], op="Prune", layer=1,
                          static={"keep": keep, "algorithm": algorithm})
                bolt[algorithm] = meter
    m, c, f = mask.report, select.report, first.report
    row: dict[str, float] = {"n": n, "k": k, "mask_s": m.wall_s, "mask_mb": m.bytes_total / 2**20,
                             "layer0_mask_s": f.wall_s, "layer0_mask_mb": f.bytes_total / 2**20, "select_s": c.wall_s,
                             "select_mb": c.bytes_total / 2**20, "prune_s": m.wall_s + c.wall_s,
                             "prune_mb": (m.bytes_total + c.bytes_total) / 2**20,
                             "bitonic_sort_comparisons": bitonic_sort_comparisons(n)}
    for algorithm, meter in bolt.items():
        report = meter.report            # type: ignore[attr-defined]
        counted = count_comparisons(pr.bolt_we_mask, np.zeros(n, np.float32), keep=keep, algorithm=algorithm)
        row.update({f"bolt_{algorithm}_s": report.wall_s, f"bolt_{algorithm}_mb": report.bytes_total / 2**20,
                    f"bolt_{algorithm}_comparisons": counted["comparisons"],
                    f"bolt_{algorithm}_equalities": counted["equalities"]})
    return row


def run(cfg: PruneBench, log_metrics: LogMetrics) -> BenchResult:
    """One row per (size, BOLT WE algorithm); ratios to Π_prune and to the first algorithm, all
    measured side by side in this run."""
    unknown = [x for x in cfg.algorithms if x not in pr.BOLT_WE_ALGORITHMS]
    if unknown or not cfg.algorithms:
        raise ValueError(f"benchmark.algorithms={cfg.algorithms}: expected a non-empty list of "
                         f"{sorted(pr.BOLT_WE_ALGORITHMS)}")
    shape, rows, cells = shape_spec(cfg.shape), [], []
    for n in cfg.sizes:
        r = bench(n, shape.hidden, shape.heads, cfg.protocol, cfg.algorithms, cfg.recv_timeout_s)
        rows.append(r)
        log_metrics({f"{n}/{k}": float(v) for k, v in r.items() if k != "n"})
        first = cfg.algorithms[0]
        for algorithm in cfg.algorithms:
            t, mb = r[f"bolt_{algorithm}_s"], r[f"bolt_{algorithm}_mb"]
            log.info(f"n={n}: Π_prune {r['prune_s']:.2f} s / {r['prune_mb']:.2f} MB, "
                     f"BOLT WE ({algorithm}) {t:.2f} s / {mb:.2f} MB")
            cells.append([n, r["k"], f"{r['prune_s']:.2f} / {r['prune_mb']:.2f}",
                          f"{r['mask_s']:.2f} / {r['mask_mb']:.2f} → {r['layer0_mask_s']:.2f} / {r['layer0_mask_mb']:.2f}",
                          algorithm,
                          f"{r[f'bolt_{algorithm}_comparisons']:,} (+{r[f'bolt_{algorithm}_equalities']:,} eq.)",
                          f"{r['bitonic_sort_comparisons']:,}", f"{t:.2f} / {mb:.2f}",
                          f"{t / r['prune_s']:.2f}x / {mb / r['prune_mb']:.2f}x",
                          f"{t / r[f'bolt_{first}_s']:.2f}x / {mb / r[f'bolt_{first}_mb']:.2f}x"])
    table = markdown(cells, ["n", "k", "Π_prune total s / MB", "its mask s / MB → at layer 0 (padding rows masked)",
                             "BOLT WE top-half algorithm", "its comparisons",
                             "BOLT's bitonic sort", "BOLT WE select+matmul s / MB", "BOLT WE / Π_prune (time / bytes)",
                             f"vs {cfg.algorithms[0]} (time / bytes)"])
    text = (f"{cfg.protocol}, d={shape.hidden}, H={shape.heads}; attention secret-shared, θ the server's; "
            f"second (warm) pass per layer, measured\n\n{table}\n")
    return BenchResult(text, {f"{r['n']}/{k}": float(v) for r in rows for k, v in r.items() if k != "n"}, rows)
