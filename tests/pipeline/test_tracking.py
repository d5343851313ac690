"""MLflow tracking: FAILED on exceptions, parent grouping, resume, upstream errors, a real server."""
from __future__ import annotations

import logging
import subprocess
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from pipeline import runner
from pipeline.config import Stage
from pipeline.identity import CODE_DIRS, code_version
from pipeline.stages import STAGES
from pipeline.tracking import Tracker, UpstreamMissing
from tests.pipeline.conftest import mlflow_server


def _fake_stage(calls: list[str], fail: bool = False) -> SimpleNamespace:
    def run(ctx) -> None:
        calls.append(ctx.run.run_id)
        ctx.run.log_metrics({"acc/dev": 0.75})
        if fail:
            raise RuntimeError("boom in stage")

    return SimpleNamespace(params=lambda cfg: {"model": cfg.model.name}, run=run)


@pytest.fixture
def tracker(compose_cfg, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return Tracker(compose_cfg())


def test_stage_exception_leaves_run_failed(tracker, monkeypatch):
    calls: list[str] = []
    monkeypatch.setitem(STAGES, Stage.prepare, _fake_stage(calls, fail=True))
    with pytest.raises(RuntimeError, match="boom in stage"):
        runner.run_stages(tracker.cfg, tracker, (Stage.prepare,), [])
    run = tracker.client.get_run(calls[0])
    assert run.info.status == "FAILED"
    assert run.data.tags["stage"] == "prepare"
    assert run.data.params["model"] == "tiny_bert"


def test_chain_groups_stages_under_parent_and_resumes(tracker, monkeypatch):
    calls: list[str] = []
    monkeypatch.setitem(STAGES, Stage.prepare, _fake_stage(calls))
    monkeypatch.setitem(STAGES, Stage.finetune, _fake_stage(calls))
    with tracker.parent("chain", {"kind": "chain"}) as parent_id:
        first = runner.run_stages(tracker.cfg, tracker, (Stage.prepare, Stage.finetune), [])
    runs = {r.info.run_id: r for r in tracker.client.search_runs([tracker.experiment_id])}
    assert runs[parent_id].info.status == "FINISHED"
    for stage in (Stage.prepare, Stage.finetune):
        child = runs[first[stage]]
        assert child.data.tags["mlflow.parentRunId"] == parent_id
        assert child.info.status == "FINISHED" and child.data.metrics["acc/dev"] == 0.75
    assert runs[first[Stage.finetune]].data.tags["upstream_prepare"] == first[Stage.prepare]
    # identical config + code: both stages are reused, nothing runs again
    second = runner.run_stages(tracker.cfg, tracker, (Stage.prepare, Stage.finetune), [])
    assert second == first and len(calls) == 2


def test_nested_runs_carry_the_code_version_of_their_stage(tracker, monkeypatch):
    nested: list[str] = []

    def run(ctx) -> None:
        with ctx.run.child("prune", {"kind": "method"}) as method:
            with method.child("prune/0", {"kind": "input", "git_sha": "not-this"}) as one:
                nested.extend([method.run_id, one.run_id])

    monkeypatch.setitem(STAGES, Stage.prepare, SimpleNamespace(params=lambda cfg: {}, run=run))
    ids = runner.run_stages(tracker.cfg, tracker, (Stage.prepare,), [])
    stage_tags = tracker.client.get_run(ids[Stage.prepare]).data.tags
    assert stage_tags["git_sha"] == tracker.code.sha != ""
    method, one = (tracker.client.get_run(i).data.tags for i in nested)
    assert method["git_sha"] == one["git_sha"] == tracker.code.sha      # a run's own tag cannot override it
    assert method["git_dirty"] == one["git_dirty"] == str(tracker.code.dirty)
    assert method["code_tree"] == one["code_tree"] == stage_tags["code_tree"] == tracker.code.tree
    assert one["mlflow.parentRunId"] == nested[0] and one["kind"] == "input"


def _git(root, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                   capture_output=True)


def test_code_tree_ignores_docs_commits_and_sees_every_code_change(tmp_path):
    for path in CODE_DIRS:
        target = tmp_path / path / "x.py" if "." not in path else tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"# {path}\n")
    (tmp_path / "README.md").write_text("v1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "code")
    first = code_version(str(tmp_path))
    assert not first.dirty and first.sha != "unknown" and len(first.tree) == 16

    (tmp_path / "README.md").write_text("v2: results\n")       # docs-only commit: new sha, same tree
    _git(tmp_path, "commit", "-qam", "docs")
    docs = code_version(str(tmp_path))
    assert docs.sha != first.sha and docs.tree == first.tree and not docs.dirty

    (tmp_path / "protocols" / "x.py").write_text("# edited\n")   # uncommitted code edit
    edited = code_version(str(tmp_path))
    assert edited.dirty and edited.sha.startswith(docs.sha + "+") and edited.tree != docs.tree
    _git(tmp_path, "checkout", "--", "protocols")

    (tmp_path / "models" / "new.py").write_text("# new module\n")  # untracked code file
    untracked = code_version(str(tmp_path))
    assert untracked.dirty and untracked.tree not in (docs.tree, edited.tree)
    (tmp_path / "models" / "new.py").write_text("# other content\n")
    assert code_version(str(tmp_path)).tree != untracked.tree


def test_failed_run_is_rerun_not_reused(tracker, monkeypatch):
    calls: list[str] = []
    monkeypatch.setitem(STAGES, Stage.prepare, _fake_stage(calls, fail=True))
    with pytest.raises(RuntimeError):
        runner.run_stages(tracker.cfg, tracker, (Stage.prepare,), [])
    monkeypatch.setitem(STAGES, Stage.prepare, _fake_stage(calls))
    produced = runner.run_stages(tracker.cfg, tracker, (Stage.prepare,), [])
    assert len(calls) == 2 and produced[Stage.prepare] == calls[1]


def test_missing_upstream_is_named(tracker, compose_cfg):
    with pytest.raises(UpstreamMissing, match="no FINISHED 'prepare' run.*stage=prepare"):
        runner.run_stages(tracker.cfg, tracker, (Stage.finetune,), [])
    cfg = compose_cfg("upstream.prepare=0123456789abcdef")
    with pytest.raises(UpstreamMissing, match="0123456789abcdef"):
        runner.run_stages(cfg, Tracker(cfg), (Stage.finetune,), [])




def test_chain_logs_to_a_real_mlflow_server(compose_cfg, tmp_path, monkeypatch):
    """A tracking server with a SQL backend on loopback, reached through MLFLOW_TRACKING_URI."""
    with mlflow_server(f"sqlite:///{tmp_path}/server.db", "--artifacts-destination",
                       str(tmp_path / "server-artifacts")) as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        calls: list[str] = []
        monkeypatch.setitem(STAGES, Stage.prepare, _fake_stage(calls))
        tracker = Tracker(compose_cfg())
        assert tracker.uri == uri
        produced = runner.run_stages(tracker.cfg, tracker, (Stage.prepare,), [])
        run = MlflowClient(uri).get_run(produced[Stage.prepare])
        assert run.info.status == "FINISHED" and run.data.metrics["acc/dev"] == 0.75
        artifacts = {a.path for a in MlflowClient(uri).list_artifacts(run.info.run_id, "config")}
        assert {"config/resolved.json", "config/overrides.json"} <= artifacts


def test_runs_of_a_killed_process_are_marked_killed(tracker, tmp_path):
    """A process SIGKILLed inside a stage run leaves it RUNNING; the next Tracker marks it KILLED
    (host/pid tags), and leaves the RUNNING runs of live processes alone."""
    import json
    import os
    import signal
    import subprocess
    import sys

    from pipeline.config import PROJECT_ROOT
    from pipeline.tracking import client_run

    code = (
        "import sys, time\n"
        "from mlflow.tracking import MlflowClient\n"
        "from pipeline.tracking import client_run\n"
        f"client = MlflowClient({tracker.uri!r})\n"
        f"with client_run(client, {tracker.experiment_id!r}, 'doomed', {{'stage': 'prepare'}}) as run_id:\n"
        "    print(run_id, flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    doomed = proc.stdout.readline().strip()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert tracker.client.get_run(doomed).info.status == "RUNNING"      # nobody could close it
    with client_run(tracker.client, tracker.experiment_id, "alive", {"stage": "prepare"}) as alive:
        Tracker(tracker.cfg)                                              # a new launch reaps on start
        assert tracker.client.get_run(doomed).info.status == "KILLED"
        assert tracker.client.get_run(alive).info.status == "RUNNING"   # this process still owns it
        assert json.dumps(tracker.client.get_run(doomed).data.tags["killed_reason"]).count(str(proc.pid)) == 1
    assert tracker.client.get_run(alive).info.status == "FINISHED"


def test_new_store_keeps_the_logging_setup_and_prints_no_migrations(compose_cfg, tmp_path, monkeypatch):
    """A first launch creates the sqlite store: alembic's migrations must neither print their ~30
    INFO lines nor replace the handlers (Hydra's console and job log file) or levels."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    root = logging.getLogger()
    root.addHandler(handler)
    before = (root.handlers[:], root.level, logging.getLogger("alembic").level)
    try:
        Tracker(compose_cfg(f"tracking.uri=sqlite:///{tmp_path / 'fresh.db'}"))
        after = (root.handlers[:], root.level, logging.getLogger("alembic").level)
        logging.getLogger("pipeline.probe").warning("after the store")
    finally:
        root.removeHandler(handler)
    assert (tmp_path / "fresh.db").exists()
    assert after == before
    assert [r.name for r in records if r.levelno <= logging.INFO and r.name.startswith(("alembic", "mlflow"))] == []
    assert any(r.getMessage() == "after the store" for r in records)     # our handler still receives


def test_resume_key_ignores_how_many_inputs_but_not_what_decides_one(compose_cfg):
    """A secure_eval (method, input) result does not depend on num_examples, on which methods run or
    on how many tokens each method generates afterwards, but does on the batch size (another
    program), the protocol, the upstream runs and the code."""
    from pipeline.identity import RESUME_IGNORED, identity_key

    def resume_key(cfg, up, code):
        return identity_key(cfg, Stage.secure_eval, upstream=up, code=code, ignored=RESUME_IGNORED[Stage.secure_eval])

    up = {"prepare": "p1", "search": "s1"}
    base = resume_key(compose_cfg("secure_eval.num_examples=2"), up, "sha")
    assert resume_key(compose_cfg("secure_eval.num_examples=4", "secure_eval.methods=[prune]",
                                  "secure_eval.generate_tokens=3"), up, "sha") == base
    for other in (resume_key(compose_cfg("secure_eval.batch_size=2"), up, "sha"),
                  resume_key(compose_cfg("protocol=semi2k"), up, "sha"),
                  resume_key(compose_cfg(), {**up, "search": "s2"}, "sha"),
                  resume_key(compose_cfg(), up, "sha2")):
        assert other != base


def test_identity_does_not_depend_on_where_the_data_lies(compose_cfg):
    """Another clone or machine keeps the same tsv files elsewhere: same identity; other data, another."""
    from pipeline.identity import identity_key

    here = identity_key(compose_cfg("data=sst2", "data.glue_dir=/data/glue"), Stage.prepare)
    assert identity_key(compose_cfg("data=sst2", "data.glue_dir=/elsewhere/glue"), Stage.prepare) == here
    assert identity_key(compose_cfg("data=sst2", "data.max_length=64"), Stage.prepare) != here
    assert identity_key(compose_cfg("data=mrpc", "data.glue_dir=/data/glue"), Stage.prepare) != here
    cache = identity_key(compose_cfg("data=sst2", "data.glue_dir=/data/glue"), Stage.prepare, local=True)
    assert identity_key(compose_cfg("data=sst2", "data.glue_dir=/elsewhere/glue"), Stage.prepare, local=True) != cache
