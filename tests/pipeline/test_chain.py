"""The embedded default, end to end (CHEETAH, the parties as two processes): five FINISHED stage
runs with real metrics."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable

import mlflow
import pandas as pd
import pytest

from pipeline.runner import run_pipeline
from tests.pipeline.conftest import run_cli

SMALL = ["data.synthetic.n_train=600", "data.synthetic.n_dev=120", "finetune.lambdas=[0.2]", "secure_eval.num_examples=1"]
KEPT = [f"metrics.tokens_entering/layer_{i}" for i in range(2)]


def _check_chain(tmp_path: Path, out: subprocess.CompletedProcess, protocol: str) -> pd.DataFrame:
    assert out.returncode == 0, out.stderr[-4000:]
    assert "mlflow ui --backend-store-uri sqlite:///" in out.stdout + out.stderr
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["cipherprune"])
    parent = runs[runs["tags.kind"] == "chain"]
    assert len(parent) == 1 and parent.iloc[0]["status"] == "FINISHED"
    stages = runs[runs["tags.stage"].notna()].set_index("tags.stage")
    assert set(stages.index) == {"prepare", "finetune", "search", "secure_eval", "report"}
    assert set(stages["status"]) == {"FINISHED"}
    assert set(stages["tags.mlflow.parentRunId"]) == {parent.iloc[0]["run_id"]}
    methods = runs[runs["tags.kind"] == "method"].set_index("tags.method")
    assert set(methods.index) == {"none", "bolt_we", "prune", "prune_reduce"}
    for method, row in methods.iterrows():
        assert row["params.protocol"] == protocol
        assert row["metrics.acc/dev"] > 90, method  # the synthetic task is learnable
        assert row["metrics.agree/secure"] == 100.0, method  # secure class == plaintext class
        # fixed-point noise (measured ≤ 0.00022 on logits of 1.0), not a wrong result: within 0.2 % of the
        # logits' magnitude, and not 0 (the run was computed on shares, not copied from the reference)
        assert row["metrics.logits/max_abs"] > 0.5, method
        assert 0 < row["metrics.logits/max_abs_err"] < 0.002 * row["metrics.logits/max_abs"], method
        assert row["metrics.comm_mb/total"] > 0 and row["metrics.time_s/total"] > 0
        assert row["metrics.time_s/wan"] > row["metrics.time_s/lan"] > 0
        assert (row["metrics.comm_mb/Reduce"] > 0) == (method == "prune_reduce"), method   # Π_reduce's programs only
        assert (row["metrics.comm_mb/Prune"] > 0) == (method != "none"), method
        assert row["metrics.tokens_entering/layer_0"] == 32
        assert row["metrics.tokens_entering/secure_vs_emulated_max_abs_diff"] == 0, method   # torch twin agrees
        assert row["metrics.memory/peak_rss_mb/server"] > 100, method                    # SPU runtime resident
    assert methods.loc["none", "metrics.tokens_entering/layer_1"] == 32
    assert methods.loc["bolt_we", "metrics.tokens_entering/layer_1"] == 16
    assert methods.loc["prune", "metrics.tokens_entering/layer_1"] < 16  # learned thresholds prune hard here
    assert methods.loc["prune", "metrics.comm_mb/total"] < methods.loc["none", "metrics.comm_mb/total"]
    report_dir = tmp_path / "reports" / "default"
    for name in ("table1.md", "table1.csv", "table1.tex", "table2.md", "kept_tokens.png"):
        assert (report_dir / name).is_file(), name
    return runs


def test_embedded_default_chain(tmp_path, compose_cfg, monkeypatch):
    """The README's `make run` configuration (CHEETAH, the default protocol) with the parties as two
    OS processes, each party's inputs private to it; then, on the chain's upstream runs, secure_eval
    under SEMI2K on 2 inputs, one at a time and in one batch: the same per-input schedule and
    agreement, and a leakage record that says who holds what."""
    out = run_cli(tmp_path, "protocol.transport=processes", *SMALL)
    runs = _check_chain(tmp_path, out, "CHEETAH")
    _check_readme_metrics(runs)
    for _, row in runs[runs["tags.kind"] == "method"].iterrows():
        leakage = mlflow.artifacts.load_dict(f"runs:/{row['run_id']}/leakage.json")
        assert leakage["ownership"]["l0.wq"] == "private to the server (party 1)", leakage["ownership"]
        assert leakage["ownership"]["h"] == "private to the client (party 0)", leakage["ownership"]
        assert row["metrics.mpc/mmul_sv"] > 0                       # secret × server-private matmuls
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    semi2k = ["protocol=semi2k", "stage=secure_eval", *SMALL[:-1], "secure_eval.num_examples=2"]
    for batch in (1, 2):                                  # in this process (the CLI ran above)
        run_pipeline(compose_cfg(*semi2k, f"secure_eval.batch_size={batch}"))
    runs = mlflow.search_runs(experiment_names=["cipherprune"])
    methods = runs[(runs["tags.kind"] == "method") & (runs["params.protocol"] == "SEMI2K")]
    for method, rows in methods.groupby("tags.method"):
        by_batch = rows.set_index("metrics.batch_size")
        assert sorted(by_batch.index) == [1.0, 2.0], method
        assert list(by_batch.loc[1.0, KEPT]) == list(by_batch.loc[2.0, KEPT]), method
        assert by_batch.loc[2.0, "metrics.agree/secure"] == 100.0, method
        leakage = mlflow.artifacts.load_dict(f"runs:/{by_batch.loc[2.0, 'run_id']}/leakage.json")
        assert leakage["ownership"]["l0.wq"].startswith("secret-shared (SEMI2K"), leakage["ownership"]
        assert leakage["ownership"]["h"].startswith("secret-shared (SEMI2K"), leakage["ownership"]["h"]
        counts = [r for r in leakage["reveals"] if r["purpose"] == "kept count"]
        assert all(r["examples"] == [0, 1] and r["shape"] == [2] for r in counts), method
    _check_inputs_and_resume(runs, lambda: run_pipeline(compose_cfg(*semi2k, "secure_eval.num_examples=3")))


def _check_readme_metrics(runs: pd.DataFrame) -> None:
    """Every metric README.md's metric contract names is one this chain logged (placeholders: {op} an
    op class, {i} a layer, {client,server} either party)."""
    import re

    from pipeline.config import PROJECT_ROOT

    section = (PROJECT_ROOT / "README.md").read_text().split("## Metric names (stable)")[1].split("\n## ")[0]
    named = {n for n in re.findall(r"`([^`]+)`", section) if re.fullmatch(r"[a-z][a-z_]*(/[A-Za-z_{},]+)*", n) and n != "step"}
    logged = {c[len("metrics."):] for c in runs.columns if c.startswith("metrics.") and runs[c].notna().any()}
    assert len(named) > 25, named
    for name in sorted(named):
        pattern = re.escape(name).replace(r"\{op\}", "[A-Za-z]+").replace(r"\{i\}", r"\d+")
        pattern = pattern.replace(r"\{client,server\}", "(client|server)")
        assert any(re.fullmatch(pattern, m) for m in logged), f"README names {name!r}, which no run logged"


def _check_inputs_and_resume(runs: pd.DataFrame, relaunch_with_a_third_input: Callable[[], object]) -> None:
    """Every input ran in its own FINISHED input run, logging each layer (step = layer) as it went;
    a relaunch with one input more reuses the two FINISHED at batch size 1, runs only the third, and
    a relaunch at batch size 2 (another program, another cost) reused none."""
    client = mlflow.tracking.MlflowClient()
    semi2k = runs[(runs["tags.kind"] == "method") & (runs["params.protocol"] == "SEMI2K")]["run_id"]
    inputs = runs[(runs["tags.kind"] == "input") & runs["tags.mlflow.parentRunId"].isin(semi2k)]
    first = inputs[inputs["tags.examples"].isin(["0", "1"])]
    assert len(first) == 8 and set(first["status"]) == {"FINISHED"}        # 4 methods x 2 inputs
    assert len(inputs[inputs["tags.examples"] == "0,1"]) == 4              # the batch-2 launch
    for _, row in first.iterrows():
        entering = [m.value for m in sorted(client.get_metric_history(row["run_id"], "layer/tokens_entering"),
                                            key=lambda m: m.step)]
        kept = [m.value for m in sorted(client.get_metric_history(row["run_id"], "layer/tokens_kept"),
                                        key=lambda m: m.step)]
        record = mlflow.artifacts.load_dict(f"runs:/{row['run_id']}/input.json")
        assert entering == record["entering"][0] and kept == record["kept"][0]
        assert entering[0] == 32 and kept[:-1] == entering[1:], (row["tags.method"], entering, kept)
        lan = {m.step: m.value for m in client.get_metric_history(row["run_id"], "layer/time_s_lan")}
        by_op = [{m.step: m.value for m in client.get_metric_history(row["run_id"], f"layer/time_s_lan/{op}")}
                 for op in ("Linear", "Softmax", "GELU", "LayerNorm", "Prune", "Reduce", "Other")]
        assert all(sum(part[step] for part in by_op) == pytest.approx(lan[step], rel=1e-9) for step in lan)
        layer_mb = sum(m.value for m in client.get_metric_history(row["run_id"], "layer/comm_mb"))
        assert 0 < layer_mb < row["metrics.comm_mb/total"]   # the embedding LayerNorm and the head are outside
    batch2 = runs[(runs["tags.kind"] == "method") & (runs["metrics.batch_size"] == 2.0)]
    assert set(batch2["metrics.examples/reused"]) == {0.0}
    relaunch_with_a_third_input()
    runs = mlflow.search_runs(experiment_names=["cipherprune"])
    newest = runs[runs["tags.kind"] == "method"].sort_values("start_time").groupby("tags.method").tail(1)
    for _, row in newest.iterrows():
        method = row["tags.method"]
        assert row["metrics.examples/secure"] == 3 and row["metrics.examples/reused"] == 2, method
        ran = first[first["tags.method"] == method]["run_id"]
        assert set(row["tags.inputs_reused_from"].split(",")) == set(ran), method
        children = runs[runs["tags.mlflow.parentRunId"] == row["run_id"]]
        assert list(children["tags.examples"]) == ["2"], method              # only the new input ran
        assert row["metrics.agree/secure"] == 100.0, method


def test_unpruned_cost_composed_from_its_first_layers(tmp_path, compose_cfg, monkeypatch):
    """``secure_eval.unpruned_layers=2`` on a 3-layer model: ``none`` runs 2 layers securely, its cost
    is composed with layer 1 repeated and says so (``layers/measured``, the report's cost column),
    within 0.1 % of the bytes of the same method run end to end; its agreement is with the model
    cut after layer 1, and it claims no secure accuracy."""
    args = ("protocol=semi2k", "model.layers=3", *SMALL, "secure_eval.methods=[none]")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_pipeline(compose_cfg(*args, "secure_eval.unpruned_layers=2"))
    run_pipeline(compose_cfg(*args, "stage=secure_eval"))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["cipherprune"])
    methods = runs[runs["tags.kind"] == "method"].set_index("metrics.layers/measured")
    composed, whole = methods.loc[2.0], methods.loc[3.0]
    assert composed["metrics.layers/total"] == whole["metrics.layers/total"] == 3
    assert composed["metrics.comm_mb/total"] == pytest.approx(whole["metrics.comm_mb/total"], rel=1e-3)
    assert composed["metrics.rounds/total"] == pytest.approx(whole["metrics.rounds/total"], rel=1e-3)
    assert composed["metrics.tokens_entering/layer_2"] == whole["metrics.tokens_entering/layer_2"] == 32
    assert composed["metrics.agree/secure"] == 100.0 and pd.isna(composed["metrics.acc/secure"])
    assert pd.notna(whole["metrics.acc/secure"])
    table = pd.read_csv(tmp_path / "reports" / "default" / "table1.csv")
    assert list(table["cost_basis"]) == ["2 of 3 layers run, the rest repeated"]
