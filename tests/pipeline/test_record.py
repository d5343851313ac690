"""Results that outlive the machine: ``report.publish`` writes the tables and a record of every run;
``report.source`` regenerates the same tables from the record alone, in a store that never saw the
runs; a launch on a fresh store continued from the record runs only the inputs it lacks."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from pipeline.record import import_record, read_runs

SMALL = ["protocol=semi2k", "data.synthetic.n_train=600", "data.synthetic.n_dev=120", "finetune.lambdas=[0.2]",
         "secure_eval.methods=[none,prune]"]


@pytest.fixture
def published(compose_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The embedded default chain on 2 inputs (SEMI2K), its report published to ``tmp_path/results``."""
    from pipeline.runner import run_pipeline

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_pipeline(compose_cfg(*SMALL, "secure_eval.num_examples=2"))
    run_pipeline(compose_cfg("stage=report", "report.publish=true", f"report.results_dir={tmp_path / 'results'}"))
    return tmp_path / "results" / "default"


def test_the_record_regenerates_the_tables_without_the_store(published: Path, compose_cfg, tmp_path: Path) -> None:
    from pipeline.runner import run_pipeline

    runs = read_runs(published)
    about = json.loads((published / "record.json").read_text())
    assert about["machine"]["cores"] >= 1 and about["regenerate"].endswith("report.source=results/default")
    by_kind = {}
    for run in runs:
        by_kind.setdefault(run["tags"].get("kind", run["tags"].get("stage")), []).append(run)
    assert {"prepare", "finetune", "search", "secure_eval", "method", "input", "candidate"} <= set(by_kind)
    assert not any(r["tags"].get("stage") == "report" for r in runs)
    prune = next(r for r in by_kind["method"] if r["tags"]["method"] == "prune")
    assert prune["status"] == "FINISHED" and prune["tags"]["code_tree"] and prune["tags"]["git_sha"]
    assert [step for step, _, _ in prune["metrics"]["logits/abs_err"]] == [0, 1]      # per input, as logged
    first = next(r for r in by_kind["input"] if r["tags"]["method"] == "prune")
    assert [s for s, _, _ in first["metrics"]["layer/tokens_entering"]] == [0, 1]     # per layer
    assert "input.json" in first["artifacts"]
    assert not any(p.endswith(".safetensors") for r in runs for p in r["artifacts"])     # weights stay out

    fresh = tmp_path / "fresh"
    run_pipeline(compose_cfg("stage=report", f"report.source={published}", "report.name=from_record",
                             f"tracking.uri=sqlite:///{fresh}.db", "report.publish=true",
                             f"report.results_dir={tmp_path / 'again'}"))
    for table in ("table1.md", "table2.md"):
        assert (tmp_path / "reports" / "from_record" / table).read_text() == (published / table).read_text(), table
    assert "BOLT w/o WE" in (published / "table1.md").read_text()
    again = tmp_path / "again" / "from_record" / "runs"                 # republished: the same runs, ids and lineage
    assert sorted(p.name for p in again.iterdir()) == sorted(p.name for p in (published / "runs").iterdir())
    for path in (published / "runs").iterdir():
        assert (again / path.name).read_text() == path.read_text(), path.name


def test_importing_a_record_twice_adds_nothing(published: Path, tmp_path: Path) -> None:
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/twice.db")
    first = import_record(client, published)
    assert import_record(client, published) == first and len(first) == len(read_runs(published))
    method = next(r for r in read_runs(published) if r["tags"].get("kind") == "method")
    copy = client.get_run(first[method["run_id"]])
    assert copy.data.tags["recorded_run_id"] == method["run_id"] and copy.info.status == "FINISHED"
    assert copy.data.tags["mlflow.parentRunId"] == first[method["tags"]["mlflow.parentRunId"]]   # lineage mapped
    assert [m.step for m in client.get_metric_history(copy.info.run_id, "logits/abs_err")] == [0, 1]


def test_a_campaign_continues_on_a_fresh_store_from_the_record(published: Path, compose_cfg, tmp_path: Path) -> None:
    """Another machine: a store that never saw the runs, the record brought in (``tracking.records``),
    one input more. Prepare, finetune and search run again (their checkpoints are not recorded; same
    config and code, same identity), and secure_eval runs only the third input of each method."""
    from pipeline.runner import run_pipeline

    fresh = f"sqlite:///{tmp_path}/elsewhere.db"
    run_pipeline(compose_cfg(*SMALL, "secure_eval.num_examples=3", f"tracking.uri={fresh}",
                             f"tracking.records=[{published}]", "report.name=continued"))
    mlflow.set_tracking_uri(fresh)
    runs = mlflow.search_runs(experiment_names=["cipherprune"])
    recorded = runs["tags.recorded_run_id"].notna()
    new_inputs = runs[~recorded & (runs["tags.kind"] == "input")]
    assert sorted(new_inputs["tags.examples"]) == ["2", "2"]                        # one per method, the missing one
    assert sorted(runs[recorded & (runs["tags.kind"] == "input")]["tags.examples"]) == ["0", "0", "1", "1"]
    methods = runs[~recorded & (runs["tags.kind"] == "method")].set_index("tags.method")
    assert list(methods["metrics.examples/reused"]) == [2.0, 2.0] and (methods["metrics.examples/secure"] == 3).all()
    assert set(runs[~recorded & runs["tags.stage"].notna()]["tags.stage"]) == {
        "prepare", "finetune", "search", "secure_eval", "report"}                     # trained again, not reused
    import pandas as pd

    table = pd.read_csv(tmp_path / "reports" / "continued" / "table1.csv").set_index("method")
    assert list(table["inputs"]) == [3.0, 3.0] and set(table["run_id"]) == set(methods["run_id"])   # the new rows


def test_a_recorded_run_is_left_as_recorded(tmp_path: Path) -> None:
    """Republishing over a record keeps its runs' files (what a run logged then, artifacts a later
    code version no longer records included) and the machine that measured them."""
    from pipeline.record import RECORD, write_record

    run = {"run_id": "a", "tags": {}, "artifacts": {"old.json": "{}"}, "start_time": 1}
    write_record(tmp_path, [run], {"report": "r"})
    about = json.loads((tmp_path / RECORD).read_text())
    (tmp_path / RECORD).write_text(json.dumps({**about, "machine": {"host": "elsewhere"}}))
    write_record(tmp_path, [{**run, "artifacts": {}}], {"report": "r"}, recorded=["a"])
    assert json.loads((tmp_path / "runs" / "a.json").read_text())["artifacts"] == {"old.json": "{}"}
    assert json.loads((tmp_path / RECORD).read_text())["machine"] == {"host": "elsewhere"}
    write_record(tmp_path, [{**run, "artifacts": {}}], {"report": "r"})          # measured here: rewritten
    assert json.loads((tmp_path / "runs" / "a.json").read_text())["artifacts"] == {}
    assert json.loads((tmp_path / RECORD).read_text())["machine"]["cores"] >= 1
