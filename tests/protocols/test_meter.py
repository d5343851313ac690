"""Cost meter: parsing SPU's profile, per-op bytes add up to SPU's Link details totals,
the time model and metric names, and the bandwidth model against a shaped link (9 s)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from protocols.meter import (
    LAN,
    OP_CLASSES,
    WAN,
    CostMeter,
    ProgramCost,
    estimate_rounds,
    parse_kernels,
    parse_profile,
)
from protocols.session import SessionSpec, TwoPartySession

LOG = """I ... HLO profiling: total time 0.01
- pphlo.less, executed 2 times, duration 0.001s, send bytes 100 recv bytes 100, send actions 3, recv actions 3
- pphlo.add, executed 5 times, duration 1e-05s, send bytes 0 recv bytes 0, send actions 0, recv actions 0
- pphlo.dot, executed 1 times, duration 0.002s, send bytes 40 recv bytes 60, send actions 1, recv actions 1
I ... Link details: total send bytes 140, recv bytes 160, send actions 4, recv actions 4
"""


def test_parse_profile_and_rounds() -> None:
    ops, link = parse_profile("old run\n- pphlo.less, executed 9 times, duration 1s, send bytes 9 recv bytes 9, "
                              "send actions 9, recv actions 9\nLink details: total send bytes 9, recv bytes 9, "
                              "send actions 9, recv actions 9\n" + LOG)
    assert link == (140, 160, 4, 4)
    assert ops["pphlo.less"] == (2, 100, 100, 3, 3) and ops["pphlo.dot"] == (1, 40, 60, 1, 1)
    assert estimate_rounds(link[2]) == 2 and estimate_rounds(7) == 4   # 0.5 rounds per send action, rounded
    with pytest.raises(RuntimeError, match="enable_pphlo_profile"):
        parse_profile("no profile here")


KERNEL_LOG = """I ... HLO profiling: total time 0.6
- pphlo.dot, executed 1 times, duration 0.6s, send bytes 10 recv bytes 10, send actions 3, recv actions 3
I ... HAL profiling: total time 0.6
- f_mmul, executed 1 times, duration 0.6s, send bytes 10 recv bytes 10, send actions 3, recv actions 3
I ... MPC profiling: total time 0.6
- mmul_sv, executed 1 times, duration 0.4s, send bytes 9 recv bytes 9, send actions 3, recv actions 3
- trunc_a, executed 2 times, duration 0.2s, send bytes 1 recv bytes 1, send actions 0, recv actions 0
I ... Link details: total send bytes 10, recv bytes 10, send actions 3, recv actions 3
"""


def test_parse_kernels_reads_the_last_programs_mpc_section() -> None:
    """SPU's own MPC kernel names (logged with enable_hal_profile); a program without the
    section gives none, and an earlier program's section is not attributed to a later one."""
    assert parse_kernels("- mmul_aa, executed 4 times\n" + KERNEL_LOG) == {"mmul_sv": 1, "trunc_a": 2}
    assert parse_kernels(KERNEL_LOG + LOG) == {}
    assert parse_kernels("nothing") == {}


def test_measure_scopes_the_cost_of_a_block() -> None:
    meter = CostMeter()
    meter.record(ProgramCost("Linear", 0, 1.0, (1, 1), (1, 1), 2, kernels={"mmul_aa": 2}))
    with meter.measure() as m:
        meter.record(ProgramCost("GELU", 0, 2.0, (5, 5), (1, 1), 4, kernels={"mmul_sv": 1}))
        meter.record(ProgramCost("Linear", 1, 3.0, (7, 0), (1, 1), 2, kernels={"mmul_sv": 2, "trunc_a": 1}))
    assert m.report.bytes_total == 17 and m.report.wall_s == 5.0
    assert m.report.kernel_counts() == {"mmul_sv": 3, "trunc_a": 1}
    assert meter.report().kernel_counts()["mmul_aa"] == 2


def test_time_model_and_metric_names() -> None:
    meter = CostMeter()
    meter.record(ProgramCost("Softmax", 0, wall_s=1.0, sent=(10**6, 2 * 10**6), messages=(5, 5), rounds=10))
    meter.record(ProgramCost("Linear", 1, wall_s=2.0, sent=(0, 10**6), messages=(1, 1), rounds=2))
    with pytest.raises(ValueError, match="op class"):
        meter.record(ProgramCost("Matmul", 1, 0.0, (0, 0), (0, 0), 0))
    r = meter.report()
    assert r.bytes_total == 4 * 10**6 and r.rounds == 12
    assert r.network_time(1e8, 0.01) == pytest.approx(3.0 + 32e6 / 1e8 + 12 * 0.01)
    assert r.network_time(LAN) == pytest.approx(3.0 + 32e6 / 3e9 + 12 * 0.8e-3)
    assert r.network_time(WAN) == pytest.approx(3.0 + 32e6 / 200e6 + 12 * 40e-3)
    assert set(r.by_layer()) == {0, 1}
    m = r.to_metrics()
    for op in OP_CLASSES:
        assert f"comm_mb/{op}" in m and f"time_s/{op}" in m
    assert m["comm_mb/Softmax"] == pytest.approx(3e6 / 2**20)
    assert m["time_s/Linear"] == 2.0 and m["rounds/total"] == 12.0
    assert {"comm_mb/total", "time_s/total", "time_s/lan", "time_s/wan", "rounds/total"} <= set(m)


def test_reducible_is_every_gelu_and_the_softmax_after_layer_0() -> None:
    """What Π_reduce can make cheaper: layer 0's softmax is not (the first decision is made from
    it), its GELU is; nothing else is."""
    meter = CostMeter()
    for op, layer, wall in (("Softmax", 0, 5.0), ("Softmax", 1, 2.0), ("GELU", 0, 1.5), ("GELU", 1, 0.5),
                            ("Linear", 1, 4.0), ("Reduce", 0, 0.25), ("Other", None, 0.125)):
        meter.record(ProgramCost(op, layer, wall_s=wall, sent=(1000, 0), messages=(1, 1), rounds=0))
    r = meter.report()
    assert r.reducible().wall_s == 4.0 and r.reducible().bytes_total == 3000
    m = r.to_metrics()
    assert m["time_s/lan/reducible"] == pytest.approx(4.0 + 8 * 3000 / 3e9, rel=1e-12)
    assert m["comm_mb/reducible"] == pytest.approx(3000 / 2**20)


def test_layers_repeated_copies_the_last_measured_layer() -> None:
    meter = CostMeter()
    for op, layer, sent in (("Other", None, 7), ("Linear", 0, 100), ("Softmax", 0, 50), ("Linear", 1, 110),
                            ("Softmax", 1, 60), ("Other", None, 3)):
        meter.record(ProgramCost(op, layer, wall_s=sent / 10, sent=(sent, 1), messages=(2, 2), rounds=sent))
    r = meter.report().with_layers_repeated(2, 4)
    assert sorted(k for k in r.by_layer() if k is not None) == [0, 1, 2, 3]
    assert [part.bytes_total for k, part in r.by_layer().items() if k is not None] == [152, 172, 172, 172]
    assert r.bytes_total == 10 + 2 + 152 + 3 * 172 and r.rounds == 10 + 150 + 3 * 170
    assert r.by_op()["Softmax"].wall_s == pytest.approx(5.0 + 3 * 6.0)
    assert meter.report().with_layers_repeated(2, 2).bytes_total == meter.report().bytes_total
    with pytest.raises(ValueError, match="layers measured=3 but the report has programs of layers \\[0, 1\\]"):
        meter.report().with_layers_repeated(3, 4)
    with pytest.raises(ValueError, match="layers measured=5: must be in \\[1, total=4\\]"):
        meter.report().with_layers_repeated(5, 4)


def _mul(a, b):
    return a * b


def test_attribution_matches_beaver_formula() -> None:
    """Independent of the parser: an integer product of n secret elements under SEMI2K is one
    Beaver multiplication, in which each of the 2 parties opens 2 masked 64-bit ring elements
    per product: 2·2·8·n bytes, all of it on ``pphlo.multiply`` and the ``mul_aa`` kernel, at
    three sizes. A fixed-point product adds its truncation on top (measured: 8 bytes per element)."""
    with TwoPartySession(SessionSpec(protocol="SEMI2K")) as s:
        for n in (64, 256, 1024):
            rng = np.random.default_rng(n)
            a, b = (rng.integers(-100, 100, n).astype(np.int32) for _ in range(2))
            s.share("a", a, "client")
            s.share("b", b, "server")
            with s.meter.measure() as m:
                s.run(_mul, ["a", "b"], ["c"], op="Other", layer=n)
            (p,) = m.report.programs
            assert p.bytes_total == 2 * 2 * 8 * n and p.sent == (16 * n, 16 * n), (n, p.sent)
            assert p.pphlo_sent == {"pphlo.multiply": 32 * n} and p.kernels == {"mul_aa": 1}
            np.testing.assert_array_equal(s.reveal("c", purpose="test only"), a * b)
            s.share("x", rng.normal(size=n).astype(np.float32), "client")
            s.share("y", rng.normal(size=n).astype(np.float32), "server")
            with s.meter.measure() as m:
                s.run(_mul, ["x", "y"], ["z"], op="Other")
            assert m.report.bytes_total == 32 * n + 8 * n
        assert set(s.meter.report().by_layer()) == {None, 64, 256, 1024}


@pytest.mark.parametrize("protocol", ["SEMI2K", "CHEETAH"])
def test_op_lines_add_up_to_the_link_totals_in_a_real_pass(protocol: str) -> None:
    """Two outputs of SPU against each other, in every program of a whole pruned forward pass (all op
    classes): the bytes of its per-pphlo-op profile lines add up to its ``Link details`` totals."""
    from protocols.model_spec import PruningSpec, TransformerSpec
    from protocols.plaintext import random_weights
    from protocols.secure_model import run_batch

    spec = TransformerSpec(vocab_size=50, hidden=32, layers=2, heads=2, intermediate=64, max_positions=16)
    weights = random_weights(spec, seed=7, scale=1.0)
    ids, mask = np.array([1, 5, 9, 3, 7, 2, 8, 4, 6, 1, 0, 0]), np.array([1.0] * 10 + [0.0] * 2)
    with TwoPartySession(SessionSpec(protocol)) as s:
        run_batch(s, spec, weights, [(ids, mask, None)], PruningSpec("prune_reduce", (0.08, 0.0), (0.12, 0.0)))
        report = s.meter.report()
    assert set(report.by_op()) == set(OP_CLASSES) and len(report.programs) > 20
    for p in report.programs:
        assert sum(p.pphlo_sent.values()) == p.bytes_total > 0, (p.program, p.pphlo_sent, p.sent)


CHILD = r"""
import json, subprocess, sys, time
import numpy as np
from protocols import nonlinear as nl
from protocols.session import SessionSpec, TwoPartySession

def run():
    with TwoPartySession(SessionSpec(protocol="SEMI2K", transport="processes")) as s:
        s.share("x", np.random.default_rng(0).normal(size=(64, 512)).astype(np.float32), "client")
        s.run(nl.gelu, ["x"], ["y"], op="GELU")
        t = time.perf_counter(); s.run(nl.gelu, ["x"], ["y"], op="GELU"); wall = time.perf_counter() - t
        return wall, s.meter.report().programs[-1]

if __name__ == "__main__":
    rate = float(sys.argv[1])
    base_wall, base = run()
    subprocess.run(["tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", f"{int(rate)}bit",
                    "burst", "256kb", "latency", "2s"], check=True)
    wall, shaped = run()
    print(json.dumps({"base_wall": base_wall, "wall": wall, "bytes": shaped.bytes_total,
                      "rounds": shaped.rounds, "predicted": base.network_time(rate, 0.0)}))
"""


def test_bandwidth_model_against_shaped_link(tmp_path: Path) -> None:
    """Processes transport in a private network namespace whose loopback is rate-limited by
    ``tc tbf``: measured time vs ``compute + bytes / bandwidth`` (never touches host links)."""
    if shutil.which("ip") is None or shutil.which("tc") is None:
        pytest.skip("iproute2 (ip, tc) not installed")
    ns = f"cptest_{uuid.uuid4().hex[:8]}"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
        pytest.skip("ip netns add not permitted here")
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        probe = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
                                "delay", "1ms"], capture_output=True, text=True)
        print("netem available:", probe.returncode == 0, probe.stderr.strip())  # delay needs sch_netem
        subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True)
        script = tmp_path / "child.py"
        script.write_text(CHILD)
        rate = 50e6
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, str(script), str(rate)], capture_output=True,
                             text=True, env=env, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        res = json.loads(out.stdout.strip().splitlines()[-1])
        print("shaped-link result:", res)
        assert res["bytes"] * 8 / rate > 1.0  # the link, not compute, dominates
        assert abs(res["wall"] - res["predicted"]) / res["predicted"] < 0.35
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
