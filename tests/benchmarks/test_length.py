"""benchmark=length: checkpoints evaluated at another input length, one row per (data, checkpoint, method)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks.configs import LengthBench
from benchmarks.length import run
from models.synthetic import write_tiny_checkpoint
from models.thresholds import ThresholdsArtifact
from models.weights import load_checkpoint, save_checkpoint, set_thresholds


def test_length_benchmark_rows_and_errors(tmp_path: Path) -> None:
    d = write_tiny_checkpoint(tmp_path / "ck", seed=0)
    model, _ = load_checkpoint(d)
    thresholds = ThresholdsArtifact([0.9, 0.9], [0.9, 0.9], criterion="relative")
    set_thresholds(model, thresholds)
    save_checkpoint(model, tmp_path / "relative", thresholds, tokenizer_dir=d)
    logged: dict[str, float] = {}
    cfg = LengthBench(checkpoints={"unpruned": str(d), "relative": str(tmp_path / "relative")},
                      data=["synthetic:20", "synthetic:32"], sources={"synthetic": str(d)}, limit=24)
    result = run(cfg, logged.update)
    assert [(r["data"], r["checkpoint"], r["method"]) for r in result.rows] == [
        (entry, label, method) for entry in cfg.data for label, method in
        (("unpruned", "none"), ("unpruned", "bolt_we"), ("relative", "prune"))]
    for r in result.rows:
        assert r["entering"][0] == int(str(r["data"]).split(":")[1])       # padded length enters layer 0
    rel = [r for r in result.rows if r["checkpoint"] == "relative"]
    assert all(r["criterion"] == "relative" and r["entering"][1] < 20 for r in rel)  # padding and more pruned
    for entry in ("synthetic_20", "synthetic_32"):                 # each delta is against the reference's none
        unpruned = logged[f"{entry}/unpruned/none/metric"]
        for key in ("unpruned/bolt_we", "relative/prune"):
            assert logged[f"{entry}/{key}/delta"] == logged[f"{entry}/{key}/metric"] - unpruned, (entry, key)
    assert logged["synthetic_32/unpruned/bolt_we/entering/layer_1"] == 16.0
    with pytest.raises(ValueError, match="benchmark.data entry 'sst2'"):
        run(LengthBench(checkpoints={"unpruned": str(d)}, data=["sst2"], sources={"synthetic": str(d)}), logged.update)
    with pytest.raises(ValueError, match="benchmark.reference='unpruned' is not a key"):
        run(LengthBench(checkpoints={"x": str(d)}), logged.update)


def test_length_deltas_are_against_the_reference_unpruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny random checkpoint predicts one class whatever is pruned (every delta 0), so the
    evaluation is replaced by one whose metric differs per method: each delta is the method's metric
    minus the reference's ``none`` on the same data, and ``none``'s own is 0."""
    import models.training

    d = write_tiny_checkpoint(tmp_path / "ck", seed=0)
    metric = {"none": 70.0, "bolt_we": 66.5, "prune": 61.25}
    monkeypatch.setattr(models.training, "evaluate", lambda model, data, task, method, *a, **k: SimpleNamespace(
        metrics={"metric": metric[method]}, n0=20, kept_tokens=[10.0, 5.0]))
    logged: dict[str, float] = {}
    run(LengthBench(checkpoints={"unpruned": str(d), "pruned": str(d)}, data=["synthetic:20"],
                    sources={"synthetic": str(d)}, limit=8), logged.update)
    assert logged["synthetic_20/unpruned/none/delta"] == 0.0
    assert logged["synthetic_20/unpruned/bolt_we/delta"] == -3.5
    assert logged["synthetic_20/pruned/prune/delta"] == -8.75
