"""``stage=benchmark``: a benchmark as a tracked run (params, metrics as measured, report artifact)."""
from __future__ import annotations

import json

import pytest

from pipeline.config import Stage
from pipeline.runner import run_stages
from pipeline.tracking import Tracker
from pipeline.validate import ConfigError, validate


@pytest.fixture
def tracker_for(compose_cfg, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return lambda *overrides: Tracker(compose_cfg("stage=benchmark", *overrides))


def test_prune_benchmark_logs_its_measurements_and_report(tracker_for) -> None:
    tracker = tracker_for("benchmark=prune", "benchmark.shape=tiny", "benchmark.sizes=[8,16]", "benchmark.protocol=SEMI2K")
    run_id = run_stages(tracker.cfg, tracker, (Stage.benchmark,), [])[Stage.benchmark]
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["name"] == "prune" and run.data.params["sizes"] == "[8, 16]"
    assert run.data.tags["kind"] == "benchmark"
    m = run.data.metrics
    for n in (8, 16):
        # Π_prune's total is its two measured programs; BOLT WE's ranking compares n² pairs; the
        # bitonic selection's counts (its 2n marking comparisons exceed the sort's count at such
        # small n; at 128 and 512 it is below, tests/protocols/test_topk.py)
        assert m[f"{n}/prune_mb"] == pytest.approx(m[f"{n}/mask_mb"] + m[f"{n}/select_mb"])
        assert m[f"{n}/bolt_ranking_comparisons"] == n * n + n
        assert (m[f"{n}/bolt_bitonic_comparisons"], m[f"{n}/bitonic_sort_comparisons"]) == {8: (35, 24), 16: (95, 80)}[n]
        assert m[f"{n}/mask_mb"] > 0 and m[f"{n}/bolt_ranking_mb"] > m[f"{n}/bolt_bitonic_mb"] > 0
        assert m[f"{n}/layer0_mask_mb"] > m[f"{n}/mask_mb"]     # layer 0 also masks the padding rows
    assert m["16/bolt_ranking_mb"] > m["8/bolt_ranking_mb"]
    report = (tracker.download(run_id, "results.md")).read_text()
    assert run_id in report
    assert "| n " in report and "BOLT WE / Π_prune" in report
    rows = json.loads(tracker.download(run_id, "rows.json").read_text())
    assert [r["n"] for r in rows] == [8, 16]


def test_reduce_benchmark_measures_each_form_side_by_side(tracker_for) -> None:
    """Every form of every kernel (each family's high forms, Π_reduce's low forms) is a measured row
    under each SPU option set; the ``fast`` low forms send fewer bytes than BOLT's high forms (ReLU:
    one comparison per element against GELU's two and four products), BumbleBee's exp fewer than
    BOLT's range reduction, and each row's error against the exact function is its form's."""
    lsb = "cheetah_2pc_config.enable_mul_lsb_error"
    tracker = tracker_for("benchmark=reduce", "benchmark.shape=tiny", "benchmark.tokens=16", "benchmark.rows=4",
                          "benchmark.protocol=SEMI2K", "benchmark.repeats=2", f"benchmark.option_sets=[[],[{lsb}]]")
    run_id = run_stages(tracker.cfg, tracker, (Stage.benchmark,), [])[Stage.benchmark]
    m = tracker.client.get_run(run_id).data.metrics
    forms = ("high_bolt", "high_bumblebee", "fast", "polynomial")
    for options in ("defaults", lsb):
        for kernel in ("softmax", "gelu"):
            for form in forms:
                key = f"{options}/{kernel}/{form}"
                assert m[f"{key}/mb"] > 0 and m[f"{key}/rounds"] > 0
                assert m[f"{key}/wan_s"] > m[f"{key}/lan_s"] >= m[f"{key}/s"]
            assert m[f"{options}/{kernel}/fast/mb"] < m[f"{options}/{kernel}/high_bolt/mb"]
        assert m[f"{options}/softmax/high_bumblebee/mb"] < m[f"{options}/softmax/high_bolt/mb"]
    errors = {form: m[f"defaults/gelu/{form}/max_err"] for form in forms}
    assert errors["high_bumblebee"] < errors["high_bolt"] < 0.012 and 0.16 < errors["fast"] < 0.171
    assert m["defaults/softmax/high_bolt/max_err"] < 0.005 < m["defaults/softmax/high_bumblebee/max_err"] < 0.1
    rows = json.loads(tracker.download(run_id, "rows.json").read_text())
    assert {(r["options"], r["kernel"], r["form"]) for r in rows} == {
        (o, k, f) for o in ("defaults", lsb) for k in ("softmax", "gelu")
        for f in ("high: bolt", "high: bumblebee", "low: fast", "low: polynomial")}


def test_failing_benchmark_leaves_a_failed_run(tracker_for) -> None:
    tracker = tracker_for("benchmark=e2e")                       # no checkpoint given
    with pytest.raises(ValueError, match="benchmark.checkpoint"):
        run_stages(tracker.cfg, tracker, (Stage.benchmark,), [])
    runs = tracker.client.search_runs([tracker.experiment_id], "tags.stage = 'benchmark'")
    assert [r.info.status for r in runs] == ["FAILED"]


def test_benchmark_and_stage_go_together(compose_cfg) -> None:
    with pytest.raises(ConfigError, match="benchmark=<engine"):
        validate(compose_cfg("stage=benchmark"))
    with pytest.raises(ConfigError, match="add stage=benchmark"):
        validate(compose_cfg("benchmark=ops"))


def test_unknown_benchmark_key_is_named(compose_cfg) -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg("stage=benchmark", "benchmark=engine", "benchmark.tokenz=[16]")
    assert "tokenz" in str(err.value.__cause__ or err.value)


def test_engine_benchmark_measures_ownership_by_kernel(tracker_for) -> None:
    """Server-private weights run secret × private matmuls (``mmul_sv``), secret-shared ones only
    ``mmul_aa``: the kernels SPU itself counted, not a label the benchmark sets."""
    tracker = tracker_for("benchmark=engine", "benchmark.shape=tiny", "benchmark.tokens=[4]", "benchmark.batch=[2]",
                          "benchmark.owners=[server,none]")
    run_id = run_stages(tracker.cfg, tracker, (Stage.benchmark,), [])[Stage.benchmark]
    m = tracker.client.get_run(run_id).data.metrics
    assert m["server/4x2/kernel/mmul_sv"] >= 6          # Q, K, V, output, FFN up, FFN down
    assert "none/4x2/kernel/mmul_sv" not in m and m["none/4x2/kernel/mmul_aa"] >= 6
    for owners in ("server", "none"):
        assert m[f"{owners}/4x2/per_input_mb"] == pytest.approx(m[f"{owners}/4x2/layer_mb"] / 2)
        parts = sum(m[f"{owners}/4x2/{p}/mb"] for p in ("attn/Linear", "Softmax", "ffn/Linear", "GELU", "LayerNorm", "Other"))
        assert parts == pytest.approx(m[f"{owners}/4x2/layer_mb"])


def test_engine_benchmark_measures_each_family(tracker_for) -> None:
    """``benchmark.families=[bolt,bumblebee]``: one layer with each family's forms and SPU options;
    BumbleBee's softmax sends fewer bytes than BOLT's (its exp has no range reduction), its GELU no
    more than BOLT's (the same operations, with Cheetah's last-bit-error multiplication), and so does
    the layer."""
    tracker = tracker_for("benchmark=engine", "benchmark.shape=tiny", "benchmark.tokens=[8]", "benchmark.batch=[1]",
                          "benchmark.owners=[server]", "benchmark.families=[bolt,bumblebee]")
    run_id = run_stages(tracker.cfg, tracker, (Stage.benchmark,), [])[Stage.benchmark]
    m = tracker.client.get_run(run_id).data.metrics
    bolt, bumblebee = "server/8x1", "server/8x1/bumblebee"
    assert m[f"{bumblebee}/Softmax/mb"] < 0.8 * m[f"{bolt}/Softmax/mb"]
    assert m[f"{bumblebee}/GELU/mb"] <= m[f"{bolt}/GELU/mb"]
    assert m[f"{bumblebee}/layer_mb"] < m[f"{bolt}/layer_mb"]


def test_engine_benchmark_measures_attention_in_head_ranges(tracker_for) -> None:
    """``benchmark.heads_per_program=[null,1]`` over party processes (tiny shape: 2 heads, so one
    extra program each for scores, softmax and context): the matmuls cost the same bytes (to 0.1 %);
    the one extra softmax program pays CHEETAH's fixed per-call cost once more (≈ 1.1 MB here, the
    same at 8 and 32 tokens: at 512 tokens a fraction of a per-mille of the layer), which is all the
    layer's extra bytes; more rounds; every configuration reports its own party processes' peak RSS."""
    tracker = tracker_for("benchmark=engine", "benchmark.shape=tiny", "benchmark.tokens=[8]", "benchmark.batch=[1]",
                          "benchmark.owners=[server]", "benchmark.transport=processes", "benchmark.heads_per_program=[null,1]")
    run_id = run_stages(tracker.cfg, tracker, (Stage.benchmark,), [])[Stage.benchmark]
    m = tracker.client.get_run(run_id).data.metrics
    whole, ranged = "server/8x1", "server/8x1/heads1"
    for part in ("attn/Linear", "ffn/Linear"):
        assert m[f"{ranged}/{part}/mb"] == pytest.approx(m[f"{whole}/{part}/mb"], rel=1e-3), part
    extra = m[f"{ranged}/Softmax/mb"] - m[f"{whole}/Softmax/mb"]
    assert 0 < extra < 1.5
    assert m[f"{ranged}/layer_mb"] - m[f"{whole}/layer_mb"] == pytest.approx(extra, abs=0.05)
    assert m[f"{ranged}/layer_rounds"] > m[f"{whole}/layer_rounds"]
    for key in (whole, ranged):
        for owner in ("client", "server"):
            assert 100 < m[f"{key}/peak_rss_mb/{owner}"] < 24 * 1024, (key, owner)
