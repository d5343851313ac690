"""``nonlinear=bumblebee`` end to end beside the default BOLT family (embedded tiny model, SEMI2K):
trained, selected and run securely with its own forms, and reported in rows of its own."""
from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest

from pipeline.runner import run_pipeline

SMALL = ["protocol=semi2k", "data.synthetic.n_train=600", "data.synthetic.n_dev=120", "finetune.lambdas=[0.2]",
         "secure_eval.num_examples=1"]


def test_bumblebee_chain_beside_bolt(tmp_path, compose_cfg, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for family in ("bolt", "bumblebee"):
        run_pipeline(compose_cfg(*SMALL, f"nonlinear={family}"))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["cipherprune"])
    searches = runs[runs["tags.stage"] == "search"].set_index("params.nonlinear")
    assert set(searches["tags.nonlinear"]) == {"bolt", "bumblebee"}
    for family, run_id in searches["run_id"].items():
        thresholds = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/thresholds.json"))
        assert thresholds["nonlinear"] == family
    methods = runs[runs["tags.kind"] == "method"]
    assert len(methods) == 8 and set(methods["params.nonlinear"]) == {"bolt", "bumblebee"}
    assert (methods["metrics.agree/secure"] == 100.0).all()           # secure class == the family's emulation
    assert (methods["metrics.logits/max_abs_err"] < 0.002 * methods["metrics.logits/max_abs"]).all()
    softmax = methods.pivot(index="tags.method", columns="params.nonlinear", values="metrics.comm_mb/Softmax")
    # BumbleBee's exp (5 squarings, one clip) sends less than BOLT's range reduction on the same shapes
    unpruned = softmax.loc["none"]
    assert unpruned["bumblebee"] < 0.8 * unpruned["bolt"], softmax
    table = pd.read_csv(tmp_path / "reports" / "default" / "table1.csv")
    assert sorted(table["nonlinear"]) == ["bolt"] * 4 + ["bumblebee"] * 4
    assert table["speedup_vs_none"].notna().all()                     # each family against its own unpruned
    md = (tmp_path / "reports" / "default" / "table1.md").read_text()
    assert "CipherPrune [bumblebee]" in md and "*Across non-linearity families (LAN)*" in md and "SecDTD" in md
    lan = table.set_index(["nonlinear", "method"])["time_lan_s"]
    across = table.set_index(["nonlinear", "method"])["speedup_vs_bolt_none"]
    assert across[("bumblebee", "prune")] == pytest.approx(lan[("bolt", "none")] / lan[("bumblebee", "prune")], rel=1e-12)
    bumblebee_search = searches.loc["bumblebee", "run_id"]
    with pytest.raises(RuntimeError, match="selected a model trained with nonlinear=bumblebee; this launch runs nonlinear=bolt"):
        run_pipeline(compose_cfg(*SMALL, "stage=secure_eval", f"upstream.search={bumblebee_search}",
                                 f"upstream.prepare={searches.loc['bumblebee', 'tags.prepare_run_id']}"))
