"""Report stage: tables and figures regenerated from fake-but-structured MLflow runs.

The store is populated exactly as docs/ARCHITECTURE.md "MLflow run layout" describes
(secure_eval stage runs with kind=method children, finetune stage runs with
kind=candidate children, a search run with pareto.csv); the report's numbers are then
checked against the metrics of the runs they came from.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

from pipeline.config import PipelineConfig, Stage
from pipeline.reporting import ReportDataMissing, paper
from pipeline.runner import run_stages
from pipeline.tracking import Tracker

METHODS = ("none", "bolt_we", "prune", "prune_reduce")
OPS = ("Linear", "Softmax", "GELU", "LayerNorm", "Prune", "Reduce", "Other")
LAYERS = {"tiny_bert": 2, "bert_base": 12}
SPEED = {"none": 1.0, "bolt_we": 0.5, "prune": 0.3, "prune_reduce": 0.2}


def _params(model: str, task: str, length: int, protocol: str = "CHEETAH") -> dict[str, object]:
    return {"model": model, "family": "bert", "task": task, "max_length": length, "layers": LAYERS[model],
            "hidden": 64, "heads": 4, "protocol": protocol, "field": "FM64", "fraction_bits": 18,
            "transport": "threads"}


def fake_method_metrics(model: str, task: str, length: int, method: str, scale: float = 1.0) -> dict[str, float]:
    """Distinct, structured numbers per (model, task, length, method)."""
    base = (10.0 if model == "tiny_bert" else 400.0) * (length / 128) ** 1.5 * scale
    t = base * SPEED[method] + (1.3 if task == "mrpc" else 0.0)
    m: dict[str, float] = {"time_s/lan": t, "time_s/wan": 7.0 * t, "time_s/total": t,
                           "comm_mb/total": 50.0 * t, "rounds/total": 100.0,
                           "acc/dev": 80.0 + 3 * SPEED[method] + (5.0 if task == "mrpc" else 0.0) + length / 1000,
                           "acc/secure": 100.0, "agree/secure": 100.0, "examples/secure": 2.0}
    for i, op in enumerate(OPS):
        share = (i + 1) / 28.0
        m |= {f"time_s/lan/{op}": t * share, f"time_s/wan/{op}": 7 * t * share, f"comm_mb/{op}": 50 * t * share,
              f"time_s/{op}": t * share}
    m["time_s/lan/reducible"] = 0.25 * t
    n = float(length)
    for layer in range(LAYERS[model]):
        m[f"tokens_entering/layer_{layer}"] = n
        if method == "bolt_we" and layer == 0:
            n = math.ceil(n / 2)
        elif method in ("prune", "prune_reduce"):
            n = max(1.0, round(n * 0.6))
    return m


def log_secure_eval(tracker: Tracker, model: str, task: str, length: int, scale: float = 1.0,
                    fail: bool = False, protocol: str = "CHEETAH") -> dict[str, str]:
    """One secure_eval stage run with a kind=method child per method; returns method -> run id."""
    ids: dict[str, str] = {}
    params = _params(model, task, length, protocol)
    try:
        with tracker.stage_run(Stage.secure_eval, {}, {**params, "methods": list(METHODS)}, []) as run:
            for method in METHODS:
                with run.child(method, {"kind": "method", "method": method}) as child:
                    child.log_params({**params, "method": method})
                    child.log_metrics(fake_method_metrics(model, task, length, method, scale))
                    ids[method] = child.run_id
            if fail:
                raise RuntimeError("secure_eval crashed after its children")
    except RuntimeError:
        assert fail
    return ids


CANDIDATES = [("baseline", "none", 0.0, 85.0, 128.0), ("lambda_0.05", "prune", 0.05, 84.9, 70.0),
              ("lambda_0.2", "prune", 0.2, 84.0, 40.0), ("lambda_0.5", "prune", 0.5, 80.0, 45.0),
              ("lambda_1", "prune", 1.0, 70.0, 10.0)]


def log_finetune_and_search(tracker: Tracker) -> dict[str, str]:
    """A finetune run (bert_base, sst2, 128) with candidates, and a search run with pareto.csv."""
    params = _params("bert_base", "sst2", 128)
    ids: dict[str, str] = {}
    with tracker.stage_run(Stage.finetune, {}, params, []) as run:
        for name, method, lam, acc, kept in CANDIDATES:
            tags = {"kind": "candidate", "method": method, "lambda": lam, "temperature": 1e-3}
            with run.child(name, tags) as child:
                child.log_params({"lambda": lam, "temperature": 1e-3, "method": method})
                child.log_metrics({"acc/val": acc, "tokens_kept/mean": kept})
                ids[name] = child.run_id
    pruned = [c for c in CANDIDATES if c[1] == "prune"]
    table = pd.DataFrame({"run_id": [ids[c[0]] for c in pruned], "lambda": [c[2] for c in pruned],
                          "temperature": 1e-3, "val_metric": [c[3] for c in pruned],
                          "kept_tokens_mean": [c[4] for c in pruned],
                          "on_front": [True, True, False, True], "selected": [False, True, False, False]})
    with tracker.stage_run(Stage.search, {}, params, []) as run:
        with tempfile.TemporaryDirectory() as tmp:
            table.to_csv(Path(tmp) / "pareto.csv", index=False)
            run.log_artifact(Path(tmp) / "pareto.csv")
        run.set_tags({"selected_run_id": ids["lambda_0.2"], "baseline_run_id": ids["baseline"]})
    return ids


# dev metric per (seed, method) of the search runs of bert_base/mrpc/128 (seed 0 has a stale, older duplicate)
DEV = {0: {"none": 86.0, "bolt_we": 85.0, "prune": 85.8, "prune_reduce": 85.5},
       1: {"none": 87.0, "bolt_we": 85.4, "prune": 86.6, "prune_reduce": 86.9},
       2: {"none": 88.0, "bolt_we": 86.2, "prune": 87.9, "prune_reduce": 87.3}}


ACC = {0: 70.0, 1: 72.0, 2: 77.0}     # dev accuracy of every method per seed: mean 73, std 3.61


def log_seed_searches(tracker: Tracker) -> dict[int, str]:
    """Search runs with dev metrics for three seeds (and an older duplicate of seed 0); seed -> run id."""
    params = _params("bert_base", "mrpc", 128)
    ids: dict[int, str] = {}
    for seed, values in [(0, {m: 50.0 for m in METHODS}), *DEV.items()]:
        with tracker.stage_run(Stage.search, {}, params, []) as run:
            run.set_tags({"seed": seed, "criterion": "relative", "reduce_forms": "polynomial", "dev_metrics": "f1,accuracy"})
            metrics = {f"dev/{m}/metric": v for m, v in values.items()}
            if values is DEV.get(seed):      # MRPC: F1 is the metric, accuracy (ACC) beside it
                metrics |= {f"dev/{m}/f1": v for m, v in values.items()} | {f"dev/{m}/accuracy": ACC[seed] for m in METHODS}
            for m in METHODS:
                metrics |= {f"dev/{m}/entering/layer_0": 128.0, f"dev/{m}/entering/layer_1": 60.0 + seed,
                            f"dev/{m}/real_share/layer_0": 100.0, f"dev/{m}/real_share/layer_1": 40.0 + seed}
            if values is DEV.get(seed):      # Π_reduce calibrated on val: 40 / 30 / 20 % reduced at scale 1 / 0.5 / 0.25
                metrics |= {"dev/prune_reduce/high_ratio/mean": 0.6 + 0.1 * seed, "reduce/beta_scale": (1, 0.5, 0.25)[seed]}
            run.log_metrics(metrics)
            ids[seed] = run.run_id
    with tracker.stage_run(Stage.search, {}, params, []) as run:     # other low forms: a table row group of its own
        run.set_tags({"seed": 0, "criterion": "relative", "reduce_forms": "fast"})
        run.log_metrics({f"dev/{m}/metric": 70.0 for m in METHODS})
    return ids


@pytest.fixture
def store(compose_cfg: Callable[..., PipelineConfig], monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Experiment 'fake': 2 models x 2 lengths on sst2 (+ bert_base mrpc), a stale and a
    crashed duplicate of bert_base/sst2/128, the same under SEMI2K, fine-tuning candidates
    and a search run."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker(compose_cfg("tracking.experiment=fake"))
    log_secure_eval(tracker, "bert_base", "sst2", 128, scale=3.0)  # older: must lose to the newer one
    runs = {(m, "sst2", n): log_secure_eval(tracker, m, "sst2", n) for m in LAYERS for n in (128, 512)}
    runs[("bert_base", "mrpc", 128)] = log_secure_eval(tracker, "bert_base", "mrpc", 128)
    log_secure_eval(tracker, "bert_base", "sst2", 128, scale=5.0, fail=True)  # newest, but its stage FAILED
    runs[("bert_base", "sst2", 128, "SEMI2K")] = log_secure_eval(tracker, "bert_base", "sst2", 128, scale=0.5,
                                                                 protocol="SEMI2K")  # own rows, not newest of CHEETAH
    candidates = log_finetune_and_search(tracker)
    return {"tracker": tracker, "runs": runs, "candidates": candidates, "searches": log_seed_searches(tracker)}


def _metric(tracker: Tracker, run_id: str, name: str) -> float:
    return tracker.run_metrics(run_id)[name]


def test_report_tables_and_figures_match_runs(store: dict, compose_cfg: Callable[..., PipelineConfig]) -> None:
    cfg = compose_cfg("tracking.experiment=fake", "stage=report")
    tracker = Tracker(cfg)
    produced = run_stages(cfg, tracker, (Stage.report,), [])
    report_run = tracker.client.get_run(produced[Stage.report])
    assert report_run.info.status == "FINISHED" and report_run.data.tags["stage"] == "report"
    out = Path(cfg.paths.outputs) / "reports" / "default"
    for name in ("table1", "table2"):
        for ext in ("csv", "md", "tex"):
            assert (out / f"{name}.{ext}").stat().st_size > 0
    pngs = {p.name for p in out.glob("*.png")}
    assert {"kept_tokens.png", "pareto.png", "scaling.png", "breakdown_bert_base_sst2_128_CHEETAH.png"} <= pngs
    logged = {a.path for a in tracker.client.list_artifacts(report_run.info.run_id, "report")}
    assert {"report/table1.csv", "report/table1.md", "report/table1.tex", "report/scaling.png",
            "report/index.md", "report/summary.json"} <= logged

    t1 = pd.read_csv(out / "table1.csv")
    assert len(t1) == 6 * 4  # (2 models x 2 lengths on sst2 + bert_base mrpc + SEMI2K) x 4 methods
    assert {"model", "task", "max_length", "method", "time_lan_s", "time_wan_s", "comm_gb", "acc_dev",
            "kept_tokens_sum", "speedup_vs_none", "speedup_vs_bolt_we", "paper_time_lan_s", "paper_comm_gb",
            "paper_speedup_vs_none", "paper_speedup_vs_bolt_we", "run_id"} <= set(t1.columns)
    tr, runs = store["tracker"], store["runs"]
    ids = runs[("bert_base", "sst2", 128)]
    row = t1[(t1.model == "bert_base") & (t1.task == "sst2") & (t1.max_length == 128)
             & (t1.protocol == "CHEETAH")].set_index("method")
    assert list(row.index) == list(METHODS)
    pr = row.loc["prune_reduce"]
    assert pr["run_id"] == ids["prune_reduce"]  # the newest FINISHED run, not the stale or crashed one
    lan = _metric(tr, ids["prune_reduce"], "time_s/lan")
    assert pr["time_lan_s"] == pytest.approx(lan, rel=1e-12)
    assert pr["time_wan_s"] == pytest.approx(_metric(tr, ids["prune_reduce"], "time_s/wan"), rel=1e-12)
    assert pr["comm_gb"] == pytest.approx(_metric(tr, ids["prune_reduce"], "comm_mb/total") / 1024, rel=1e-12)
    assert pr["speedup_vs_none"] == pytest.approx(_metric(tr, ids["none"], "time_s/lan") / lan, rel=1e-12)
    assert pr["speedup_vs_bolt_we"] == pytest.approx(_metric(tr, ids["bolt_we"], "time_s/lan") / lan, rel=1e-12)
    kept = tr.run_metrics(ids["prune_reduce"])
    assert pr["kept_tokens_sum"] == sum(v for k, v in kept.items() if k.startswith("tokens_entering/layer_"))
    cell = paper.TABLE1[("bert_base", "prune_reduce")]
    assert (pr["paper_time_lan_s"], pr["paper_comm_gb"]) == (cell.time_lan_s, cell.comm_gb)
    assert pr["paper_speedup_vs_none"] == pytest.approx(484.5 / 79.1)
    assert row.loc["prune", "paper_time_lan_s"] == 115.3 and math.isnan(row.loc["prune", "paper_comm_gb"])
    assert pr["inputs"] == 2 and pr["prune_share_pct"] == pytest.approx(100.0 * (5 + 6) / 28)
    assert pr["reduce_ceiling"] == pytest.approx(1 / 0.75)
    assert pr["ideal_vs_none"] == pytest.approx(row.loc["none", "kept_tokens_sum"] / pr["kept_tokens_sum"])
    assert row.loc["none", "ideal_vs_none"] == 1.0 and pr["paper_model"] == "BERT-base"
    tiny = t1[t1.model == "tiny_bert"]
    long = t1[(t1.model == "bert_base") & (t1.max_length == 512)]
    assert long["paper_time_lan_s"].isna().all() and set(long["paper_model"]) == {"—"}
    tiny128 = tiny[tiny.max_length == 128].set_index("method")      # a model the paper lacks: BERT-base beside it
    assert set(tiny128["paper_model"]) == {"BERT-base"} and tiny128.loc["none", "paper_time_lan_s"] == 484.5
    assert tiny[tiny.max_length == 512]["paper_time_lan_s"].isna().all()
    semi = t1[t1.protocol == "SEMI2K"].set_index("method")
    semi_ids = runs[("bert_base", "sst2", 128, "SEMI2K")]
    assert semi.loc["prune", "time_lan_s"] == _metric(tr, semi_ids["prune"], "time_s/lan")
    md = (out / "table1.md").read_text()
    assert "—" in md and "CipherPrune" in md and "BOLT w/o WE" in md
    assert r"\begin{tabular}" in (out / "table1.tex").read_text()
    for name, views in (("table1", 4), ("table2", 4)):   # one question per table, at most ten columns each
        text = (out / f"{name}.md").read_text()
        headers = [line for line, below in zip(text.splitlines(), text.splitlines()[1:]) if below.startswith("|:")]
        assert len(headers) == views and all(line.count("|") - 1 <= 10 for line in headers), headers
        assert (out / f"{name}.tex").read_text().count(r"\begin{table}") == views
        assert len(pd.read_csv(out / f"{name}.csv").columns) > 10                      # the CSV keeps every column

    t2 = pd.read_csv(out / "table2.csv")
    mrpc = t2[(t2.model == "bert_base") & (t2.task == "mrpc") & (t2.max_length == 128)]
    fast = mrpc[mrpc.reduce_forms == "fast"].set_index("method")     # not averaged with the untagged (polynomial) runs
    assert list(fast.index) == list(METHODS) and (fast["metric_mean"] == 70.0).all() and (fast["n_seeds"] == 1).all()
    mrpc2 = mrpc[mrpc.reduce_forms == "polynomial"].set_index("method")
    assert list(mrpc2.index) == list(METHODS) and set(mrpc2["criterion"]) == {"relative"}
    for method in METHODS:
        values = pd.Series([DEV[seed][method] for seed in DEV])
        drops = values - pd.Series([DEV[seed]["none"] for seed in DEV])
        row2 = mrpc2.loc[method]
        assert row2["n_seeds"] == 3 and row2["seeds"] == "0,1,2"     # the stale seed-0 duplicate lost
        assert row2["metric_mean"] == pytest.approx(values.mean()) and row2["metric_std"] == pytest.approx(values.std())
        if method != "none":
            assert row2["drop_mean"] == pytest.approx(drops.mean()) and row2["drop_std"] == pytest.approx(drops.std())
        assert row2["schedule"] == "128.0-61.0" and row2["real_schedule"] == "100-41"
        assert row2["metric_name"] == "f1" and row2["other_metrics"] == "accuracy 73.00 ± 3.61"
        if method == "prune_reduce":
            assert row2["reduced_pct"] == pytest.approx(30.0) and row2["beta_scales"] == "1,0.5,0.25"
        else:
            assert pd.isna(row2["reduced_pct"]) and pd.isna(row2["beta_scales"])
        assert set(row2["run_id"].split(",")) == set(store["searches"].values())
    assert mrpc2.loc["prune", "paper_metric"] == paper.ABLATION_ACC["prune"]["mrpc"]
    assert mrpc2.loc["none", "published"] == "87.5 score (DistilBERT-6L)" and pd.isna(mrpc2.loc["prune", "published"])
    assert "± std" in (out / "table2.md").read_text() and "accuracy 73.00 ± 3.61" in (out / "table2.md").read_text()
    assert fast.loc["prune", "metric_name"] == "metric" and pd.isna(fast.loc["prune", "other_metrics"])

    metrics = report_run.data.metrics
    assert metrics["table1/speedup_vs_none/bert_base/sst2/CHEETAH/L128/prune_reduce"] == pytest.approx(pr["speedup_vs_none"])
    summary = json.loads((Path(tracker.download(report_run.info.run_id, "report/summary.json"))).read_text())
    assert summary["skipped"] == [] and "pareto.png" in summary["figures"]["pareto"]


def test_pareto_uses_search_artifact_and_front(store: dict) -> None:
    from pipeline import reporting
    from pipeline.reporting.figures import _candidate_points, pareto_front

    tracker: Tracker = store["tracker"]
    ids = {"fake": tracker.experiment_id}
    cands = reporting.candidate_runs(tracker, ids)
    assert len(cands) == len(CANDIDATES) and set(cands["model"]) == {"bert_base"}  # model from the parent run
    tables = reporting.pareto_tables(tracker, ids)
    pts = _candidate_points(cands, tables[("bert_base", "sst2", 128)])
    chosen = store["candidates"]["lambda_0.2"]
    assert pts.set_index("run_id").loc[chosen, "selected"] and pts["selected"].sum() == 1
    computed = dict(zip(pts["run_id"], pareto_front(pts)))
    expected = {"lambda_0.05": True, "lambda_0.2": True, "lambda_0.5": False, "lambda_1": True}
    assert {name: computed[store["candidates"][name]] for name in expected} == expected  # λ=0.5 loses to λ=0.2


def test_missing_runs_name_the_experiment_and_fail_the_run(compose_cfg, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose_cfg("stage=report", "report=table1_smoke", "tracking.experiment=reports")
    tracker = Tracker(cfg)
    with pytest.raises(ReportDataMissing, match=r"Table 1 needs FINISHED secure_eval runs.*'table1_smoke'.*"
                                                r"`python -m pipeline experiment=table1_smoke`"):
        run_stages(cfg, tracker, (Stage.report,), [])
    runs = tracker.client.search_runs([tracker.experiment_id], "tags.stage = 'report'")
    assert [r.info.status for r in runs] == ["FAILED"]
    cfg2 = compose_cfg("stage=report", "report=table2", "tracking.experiment=reports")
    with pytest.raises(ReportDataMissing, match=r"Table 2 .*'table2'.*`python -m pipeline -m experiment=table2`"):
        run_stages(cfg2, Tracker(cfg2), (Stage.report,), [])


def test_figure_without_data_is_skipped_with_a_note(compose_cfg, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose_cfg("stage=report", "tracking.experiment=one_length", "report.tables=[table1]",
                      "report.figures=[scaling,pareto,kept_tokens]")
    tracker = Tracker(cfg)
    ids = log_secure_eval(tracker, "tiny_bert", "sst2", 128)
    produced = run_stages(cfg, tracker, (Stage.report,), [])
    run = tracker.client.get_run(produced[Stage.report])
    assert run.info.status == "FINISHED"
    out = Path(cfg.paths.outputs) / "reports" / "default"
    assert (out / "kept_tokens.png").exists() and not (out / "scaling.png").exists()
    index = (out / "index.md").read_text()
    assert "scaling: scaling needs" in index and "pareto: no FINISHED fine-tuning candidates" in index
    t1 = pd.read_csv(out / "table1.csv")
    assert t1.set_index("method").loc["bolt_we", "time_lan_s"] == tracker.run_metrics(ids["bolt_we"])["time_s/lan"]


def test_unknown_table_is_rejected(compose_cfg, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose_cfg("stage=report", "report.tables=[table9]")
    with pytest.raises(ValueError, match="table9.*tables: \\['lm', 'ops', 'table1', 'table2'\\]"):
        run_stages(cfg, Tracker(cfg), (Stage.report,), [])


def test_latex_escapes_aligns_and_keeps_display_formatting() -> None:
    from pipeline.reporting.views import to_latex

    text = pd.DataFrame({"method": ["CipherPrune†", "w/o WE"], "LAN (s)": ["1.20", "—"], "× vs BOLT": ["2.10", "3.40"]})
    tex = to_latex(text, "Table 1: 50% & more_x")
    assert r"\caption{Table 1: 50\% \& more\_x}" in tex
    assert r"\begin{tabular}{lrr}" in tex                   # numbers (and "—") right-aligned, names left
    assert "2.10" in tex and "1.20" in tex                  # display's digits, not re-parsed to "2.1"
    assert r"CipherPrune$^\dagger$" in tex and r"$\times$ vs BOLT" in tex and "--" in tex
    assert "—" not in tex and "×" not in tex


def test_methods_sort_in_paper_order_unknown_last() -> None:
    from pipeline.reporting.tables import in_method_order

    frame = pd.DataFrame({"method": ["prune_reduce", "mystery", "none", "prune", "bolt_we"], "x": range(5)})
    ordered = frame.sort_values("method", key=in_method_order)["method"].tolist()
    assert ordered == ["none", "bolt_we", "prune", "prune_reduce", "mystery"]
