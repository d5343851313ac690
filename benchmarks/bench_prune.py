"""Π_prune vs BOLT WE ranking, per layer, on BERT-base shapes (d = 768, H = 12) under CHEETAH.

For each n: Π_prune = importance + mask + count (n comparisons) → reveal k (= n/2 here) →
one-hot selection (k·n equality tests) + one k×n×d matmul. BOLT WE = importance + n×n
ranking comparisons + the same selection matmul (k = ⌈n/2⌉, nothing revealed).
Bytes and wall time come from the session's meter (2 parties as threads on this host).

    python benchmarks/bench_prune.py [--quick] [--protocol CHEETAH] [--sizes 32 64 128]

Measured 2026-11-26 (CHEETAH, FM64/18, threads, 2 shared cores under load ≈ 13: times noisy,
bytes stable), second (warm) pass, per layer; k from a median threshold:

| n | k | Π_prune total s / MB | of which mask s / MB | BOLT WE rank+select s / MB |
|---|---|---|---|---|
| 32 | 17 | 3.17 / 1.98 | 0.07 / 0.01 | 2.78 / 4.01 |
| 64 | 31 | 5.72 / 2.58 | 0.10 / 0.02 | 26.38 / 11.75 |
| 128 | 57 | 21.27 / 4.41 | 0.19 / 0.04 | 114.33 / 40.15 |
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocols import pruning as pr
from protocols.batch import prune_step, score_step
from protocols.session import SessionSpec, TwoPartySession


def _probs(n: int, heads: int, rng: np.random.Generator) -> np.ndarray:
    logits = rng.standard_normal((heads, n, n)).astype(np.float32)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def bench(n: int, d: int, heads: int, protocol: str) -> dict[str, float]:
    """One layer's Π_prune and BOLT WE costs at n tokens: seconds and MB per phase."""
    rng = np.random.default_rng(n)
    probs = _probs(n, heads, rng)
    h = rng.standard_normal((n, d)).astype(np.float32)
    theta = float(np.median(probs.mean(axis=(0, 1))))
    out: dict[str, float] = {"n": n}
    with TwoPartySession(SessionSpec(protocol=protocol)) as s:
        s.share("A", probs, owner="client")
        s.share("h", h, owner="client")
        s.share("valid", np.ones(n, np.float32), owner="client")
        s.share("theta", np.array([theta], np.float32), owner="server")
        for _ in range(2):       # pass 1 warms up Cheetah's one-time OT/HE setup; pass 2 is measured
            s.run(prune_step, ["A", "theta", "valid"], ["R", "M", "k"], op="Prune", layer=0)
            k = int(round(float(np.asarray(s.reveal("k", purpose="kept count")).reshape(-1)[0])))
            s.run(pr.prune_select, ["h", "M", "valid"], ["h2", "v2"], op="Prune", layer=0, static={"k": k})
            s.run(score_step, ["A"], ["S2"], op="Other", layer=0)
            s.run(pr.bolt_we_select, ["h", "S2", "valid"], ["h3", "v3"], op="Prune", layer=1,
                  static={"keep": math.ceil(n / 2)})
        mask, select, _, bolt = s.meter.report().programs[4:]
    out.update(k=k, mask_s=mask.wall_s, mask_mb=mask.bytes_total / 2**20, select_s=select.wall_s,
               select_mb=select.bytes_total / 2**20, prune_s=mask.wall_s + select.wall_s,
               prune_mb=(mask.bytes_total + select.bytes_total) / 2**20, bolt_s=bolt.wall_s,
               bolt_mb=bolt.bytes_total / 2**20)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="n ∈ {16, 32}, d = 768")
    ap.add_argument("--protocol", default="CHEETAH")
    ap.add_argument("--sizes", type=int, nargs="*", default=[32, 64, 128])
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--json", type=Path, default=None, help="write rows as JSON here")
    args = ap.parse_args(argv)
    sizes = [16, 32] if args.quick else args.sizes
    rows = []
    print(f"| n | k | Π_prune mask s / MB | Π_prune select+matmul s / MB | Π_prune total s / MB | "
          f"BOLT WE rank+select s / MB |  ({args.protocol}, d={args.hidden}, H={args.heads})")
    print("|---|---|---|---|---|---|")
    for n in sizes:
        r = bench(n, args.hidden, args.heads, args.protocol)
        rows.append(r)
        print(f"| {n} | {r['k']} | {r['mask_s']:.2f} / {r['mask_mb']:.2f} | {r['select_s']:.2f} / {r['select_mb']:.2f} | "
              f"{r['prune_s']:.2f} / {r['prune_mb']:.2f} | {r['bolt_s']:.2f} / {r['bolt_mb']:.2f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
