"""The benchmark's cost composition: attention at n, FFN at k, Π_reduce's low group, fits."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.composition import (
    LAYER_PARTS,
    PRUNE_PROGRAMS,
    REDUCED,
    Schedule,
    compose,
    fit,
    fit_measurements,
    method_sizes,
    table_rows,
)


def _linear_fits(low_ratio: float = 1.0) -> tuple[dict, dict]:
    """Every layer part costs 1 s and 10 bytes per token and 3 rounds whatever the tokens; low-degree
    kernels ``low_ratio`` of that."""
    per_token = [np.array([0.0, 1.0, 0.0]), np.array([0.0, 10.0, 0.0]), np.array([3.0, 0.0, 0.0])]
    layer = {part: per_token for part in LAYER_PARTS}
    for op in REDUCED:
        layer[f"{op}_high"] = per_token
        layer[f"{op}_low"] = [c * low_ratio for c in per_token]
    prune = {name: [np.zeros(3), np.zeros(3), np.zeros(3)] for name in PRUNE_PROGRAMS}
    return layer, prune


SCHEDULE = Schedule(entering=[8.0, 4.0], kept=[4.0, 2.0], high=[2.0, 1.0])


def test_unpruned_run_prices_every_part_at_n0() -> None:
    layer, prune = _linear_fits()
    t = compose(SCHEDULE, "none", layer, prune, n0=8)
    assert t["s/Linear"] == pytest.approx(2 * 2 * 8)        # attn + ffn Linear, 2 layers, 8 tokens
    assert t["bytes/GELU"] == pytest.approx(2 * 8 * 10)
    assert t["s/Prune"] == 0.0


def test_pruned_run_prices_attention_at_entering_and_ffn_at_kept() -> None:
    layer, prune = _linear_fits()
    t = compose(SCHEDULE, "prune", layer, prune, n0=8)
    assert t["s/Linear"] == pytest.approx(8 + 4 + 4 + 2)    # attn(8) ffn(4) | attn(4) ffn(2)
    assert t["s/Softmax"] == pytest.approx(8 + 4)
    assert t["s/GELU"] == pytest.approx(4 + 2)


def test_reduce_charges_low_group_at_low_degree_price() -> None:
    layer, prune = _linear_fits(low_ratio=0.5)
    pruned = compose(SCHEDULE, "prune", layer, prune, n0=8)
    reduced = compose(SCHEDULE, "prune_reduce", layer, prune, n0=8)
    # GELU: layer 0 rows 4 (2 high) → 2 + 0.5·2; layer 1 rows 2 (1 high) → 1 + 0.5·1
    assert reduced["s/GELU"] == pytest.approx(3.0 + 1.5)
    # Softmax: layer 0 all high (8); layer 1 query rows 4, high group of layer 0 = 2 → 2 + 0.5·2
    assert reduced["s/Softmax"] == pytest.approx(8 + 3.0)
    assert reduced["s/Linear"] == pruned["s/Linear"]
    same = compose(SCHEDULE, "prune_reduce", *_linear_fits(low_ratio=1.0), n0=8)
    assert same["s/GELU"] == pytest.approx(pruned["s/GELU"])


def test_bolt_we_halves_once_after_layer_zero_attention() -> None:
    assert method_sizes(SCHEDULE, "bolt_we", 9) == [(9, 5), (5, 5)]
    assert method_sizes(SCHEDULE, "none", 9) == [(9, 9), (9, 9)]
    assert method_sizes(SCHEDULE, "prune", 9) == [(8.0, 4.0), (4.0, 2.0)]


def test_fit_recovers_quadratic_and_stays_non_negative() -> None:
    pts = [(n, n * n, 3.0 + 2.0 * n + 0.5 * n * n) for n in (16, 32, 64, 128)]
    np.testing.assert_allclose(fit(pts), [3.0, 2.0, 0.5], rtol=1e-6)
    # bytes 2.9, 2.6, 4.3 MB at n = 16, 32, 64 (measured ffn/Linear): the unconstrained fit
    # has a < 0; NNLS drops a and refits c + b·n², which clipping a to 0 would not
    pts = [(16, 256, 2.9), (32, 1024, 2.6), (64, 4096, 4.3)]
    coef = fit(pts)
    assert (coef >= 0).all() and coef[1] == 0.0
    c_b, *_ = np.linalg.lstsq(np.array([[1.0, 256], [1.0, 1024], [1.0, 4096]]), np.array([2.9, 2.6, 4.3]), rcond=None)
    np.testing.assert_allclose(coef[[0, 2]], c_b, rtol=1e-9)


def test_fit_measurements_reads_every_key() -> None:
    keys = LAYER_PARTS + tuple(f"{op}_{d}" for op in REDUCED for d in ("low", "high")) + PRUNE_PROGRAMS
    measured = {str(n): {k: [float(n), 10.0 * n, 7.0] for k in keys} for n in (16, 32, 64)}
    layer, prune = fit_measurements(measured)
    assert set(layer) | set(prune) == set(keys)
    assert float(layer["Softmax"][1] @ np.array([1.0, 48, 48 * 48])) == pytest.approx(480.0)
    assert float(layer["GELU"][2] @ np.array([1.0, 48, 48 * 48])) == pytest.approx(7.0)   # rounds


def test_stretched_schedule_keeps_layer_zero_and_interpolates_the_rest() -> None:
    # 3 source layers: 64 tokens (24 real) → prune keeps 24 → 12 → 6
    src = Schedule([64.0, 24.0, 12.0], [24.0, 12.0, 6.0], [12.0, 6.0, 3.0])
    s = src.stretched(5)
    np.testing.assert_allclose(s.entering, [64.0, 24.0, 20.0, 16.0, 12.0])   # layers 1..4 ↔ source depth 1..2
    np.testing.assert_allclose(s.kept, [24.0, 20.0, 16.0, 12.0, 6.0])
    np.testing.assert_allclose(s.high, [k / 2 for k in s.kept])       # half of the kept are high throughout
    same = src.stretched(3)
    assert (same.entering, same.kept, same.high) == (src.entering, src.kept, src.high)


def test_table_rows_ratios_against_none_and_bolt() -> None:
    layer, prune = _linear_fits(low_ratio=0.5)
    rows = {r["method"]: r for r in table_rows(8, {m: SCHEDULE for m in ("none", "bolt_we", "prune", "prune_reduce")},
                                              layer, prune)}
    assert rows["none"]["x_none"] == pytest.approx(1.0)
    assert rows["bolt_we"]["x_bolt_we"] == pytest.approx(1.0)
    assert rows["prune_reduce"]["x_none"] > rows["prune"]["x_none"] > rows["bolt_we"]["x_none"] > 1.0
    assert rows["prune"]["ideal_sum_n"] == pytest.approx(16 / 12)
    none = rows["none"]        # 2 layers x 6 parts x 3 rounds; WAN and LAN add rounds x RTT
    assert none["rounds"] == pytest.approx(36.0)
    secs, nbytes = none["time_s"], none["comm_gb"] * 2**30
    assert none["lan_s"] == pytest.approx(secs + 8 * nbytes / 3e9 + 36 * 0.8e-3)
    assert none["wan_s"] == pytest.approx(secs + 8 * nbytes / 200e6 + 36 * 40e-3)
