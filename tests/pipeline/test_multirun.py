"""Hydra multiruns: one child run per combination under one parent; relaunch resumes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from pipeline.config import PROJECT_ROOT


def _launch(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline", "-m", f"paths.outputs={tmp_path}", "stage=prepare",
           "data.synthetic.n_train=64", "data.synthetic.n_dev=16", *args]
    env = {k: v for k, v in __import__("os").environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600, env=env)


def _runs(tmp_path: Path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    return mlflow.search_runs(experiment_names=["cipherprune"])


@pytest.mark.parametrize("launcher", ["basic", "local_parallel"])
def test_sweep_makes_one_child_per_combination_and_resumes(tmp_path, launcher):
    extra = [] if launcher == "basic" else ["hydra/launcher=local_parallel"]
    first = _launch(tmp_path, "data.synthetic.seed=0,1", *extra)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = _runs(tmp_path)
    parents = runs[runs["tags.kind"] == "multirun"]
    assert len(parents) == 1 and parents.iloc[0]["status"] == "FINISHED"
    children = runs[runs["tags.stage"] == "prepare"]
    assert len(children) == 2
    assert set(children["tags.mlflow.parentRunId"]) == {parents.iloc[0]["run_id"]}
    assert set(children["status"]) == {"FINISHED"}
    assert children["tags.sections_hash"].nunique() == 2
    # relaunch with one new combination: the two finished ones are reused, only seed=2 runs
    second = _launch(tmp_path, "data.synthetic.seed=0,1,2", *extra)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stderr.count("already FINISHED, reusing it") + second.stdout.count("already FINISHED, reusing it") == 2
    runs = _runs(tmp_path)
    assert len(runs[runs["tags.stage"] == "prepare"]) == 3
