"""Honest selection: a validation split carved from train, one unpruned baseline per (model, data,
seed, budget) shared by every candidate job, candidates selected on val, dev evaluated once."""
from __future__ import annotations

from typing import Callable

import datasets
import pytest

from models.thresholds import with_beta_scale
from pipeline.config import PipelineConfig, Stage
from pipeline.runner import run_stages
from pipeline.tasks.common import Selection, thresholds_of
from pipeline.tasks.glue import _carve_val
from pipeline.tracking import Tracker

QUICK = ("data.synthetic.n_train=256", "data.synthetic.n_dev=64", "finetune.epochs=1", "finetune.prune_epochs=0.5",
         "finetune.hard_epochs=0.25", "finetune.patience=null")


def test_validation_split_is_seeded_disjoint_and_capped(compose_cfg: Callable[..., PipelineConfig]) -> None:
    train = datasets.Dataset.from_dict({"text_a": [f"s{i}" for i in range(200)], "label": [i % 2 for i in range(200)]})
    rest, val = _carve_val(train, compose_cfg("data.val_fraction=0.1"))
    assert (len(rest), len(val)) == (180, 20)
    assert not set(rest["text_a"]) & set(val["text_a"]) and len(set(rest["text_a"]) | set(val["text_a"])) == 200
    again, other = _carve_val(train, compose_cfg("data.val_fraction=0.1")), _carve_val(train, compose_cfg("data.split_seed=1"))
    assert again[1]["text_a"] == val["text_a"] and other[1]["text_a"] != val["text_a"]
    assert len(_carve_val(train, compose_cfg("data.val_fraction=0.5", "data.val_limit=7"))[1]) == 7


def test_candidate_jobs_share_one_baseline_and_dev_is_evaluated_on_the_pick(
        compose_cfg: Callable[..., PipelineConfig], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = compose_cfg("stage=finetune", "finetune.lambdas=[0.05]", *QUICK)
    tracker = Tracker(first)
    produced = run_stages(first, tracker, (Stage.prepare, Stage.finetune), [])
    second = compose_cfg("stage=finetune", "finetune.lambdas=[0.3]", *QUICK)   # another sweep job: same baseline
    produced2 = run_stages(second, Tracker(second), (Stage.prepare, Stage.finetune), [])
    assert produced2[Stage.prepare] == produced[Stage.prepare]
    tags = [tracker.run_tags(produced[Stage.finetune]), tracker.run_tags(produced2[Stage.finetune])]
    assert tags[0]["baseline_run"] == tags[1]["baseline_run"]
    runs = tracker.runs_frame([tracker.experiment_id], "tags.kind = 'candidate'")
    baselines = runs[runs["tags.method"] == "none"]
    assert len(baselines) == 1 and baselines.iloc[0]["run_id"] == tags[0]["baseline_run"]   # trained once
    assert len(runs[runs["tags.method"] == "prune_reduce"]) == 2
    # the baseline trained on for the candidates' budget: both checkpoints are there
    names = {a.path for a in tracker.client.list_artifacts(tags[0]["baseline_run"])}
    assert {"checkpoint_start", "checkpoint"} <= names
    metrics = tracker.run_metrics(produced2[Stage.finetune])   # one candidate per job: the sweeper's objectives
    assert {"objective/val_metric", "objective/tokens_kept"} <= set(metrics)

    search_cfg = compose_cfg("stage=search", f"upstream.finetune={produced2[Stage.finetune]}", *QUICK)
    searched = run_stages(search_cfg, Tracker(search_cfg), (Stage.search,), [])[Stage.search]
    m = tracker.run_metrics(searched)
    assert m["candidates"] == 2 and m["dev/examples"] == 64
    assert {f"dev/{k}/metric" for k in ("none", "bolt_we", "prune", "prune_reduce", "prune_reduce_fixed_point")} <= set(m)
    assert m["dev/none/entering/layer_0"] == m["dev/bolt_we/entering/layer_0"] == 32   # padded length n0
    assert m["dev/bolt_we/entering/layer_1"] == 16                                      # ⌈32/2⌉
    assert m["dev/prune/entering/layer_1"] < 32
    # the same schedules as shares of each input's real tokens: all of them unpruned, fewer pruned
    assert m["dev/none/real_share/layer_0"] == m["dev/none/real_share/layer_1"] == m["dev/prune/real_share/layer_0"] == 100
    assert 0 < m["dev/prune/real_share/layer_1"] < 100 and m["dev/bolt_we/real_share/layer_1"] <= 100
    assert m["val/baseline"] == tracker.run_metrics(tags[0]["baseline_run"])["acc/val"]
    assert {a.path for a in tracker.client.list_artifacts(searched)} >= {"pareto.csv", "pareto.png", "thresholds.json"}
    selection = Selection.from_run(tracker, searched)                     # saved once, as the search run's tags
    assert selection.baseline_run_id == tags[0]["baseline_run"] and selection.serves == ("prune", "prune_reduce")
    assert selection.plan(["none", "prune_reduce"]) == [("none", selection.baseline_run_id),
                                                        ("prune_reduce", selection.selected_run_id)]

    # β calibrated on val: the largest scale within reduce_max_drop of Π_prune, every larger one tried and out
    drop, scale = search_cfg.search.reduce_max_drop, m["reduce/beta_scale"]
    tried = {float(k.rsplit("_", 1)[1]): v for k, v in m.items() if k.startswith("val/prune_reduce/scale_")}
    assert tried and all(s in search_cfg.search.beta_scales for s in tried)
    assert all(v < m["val/prune"] - drop for s, v in tried.items() if s > scale)
    assert scale == 0 or tried[scale] >= m["val/prune"] - drop
    assert m["dev/prune/high_ratio/mean"] == 0 and 0 <= m["dev/prune_reduce/high_ratio/mean"] <= 1
    picked = tracker.run_tags(searched)["selected_run_id"]
    learned = thresholds_of(tracker, picked)
    assert thresholds_of(tracker, searched).beta == pytest.approx(with_beta_scale(learned, scale).beta)
    # with room to spare the learned β is kept as is; a given scale lands where it says
    loose = compose_cfg("stage=search", f"upstream.finetune={produced2[Stage.finetune]}", "search.reduce_max_drop=100",
                        "search.beta_scales=[0.5]", *QUICK)
    halfway = run_stages(loose, Tracker(loose), (Stage.search,), [])[Stage.search]
    assert tracker.run_metrics(halfway)["reduce/beta_scale"] == 0.5
    assert thresholds_of(tracker, halfway).beta == pytest.approx(
        [t + 0.5 * (b - t) for t, b in zip(learned.theta, learned.beta)])


def test_secure_eval_reads_the_data_its_selection_names(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    """Lineage is carried: the search's selection names the prepare run its models were trained and
    scored on, and secure_eval reads that one even when its own upstream prepare run is another."""
    import json

    from pipeline.tasks.common import MANIFEST

    manifests = {}
    for run in ("prep_a", "prep_b"):
        split = tmp_path / run / "dev"
        split.mkdir(parents=True)
        manifests[run] = tmp_path / run / MANIFEST
        manifests[run].write_text(json.dumps({"task": run, "splits": {"dev": str(split)}, "tokenizer_dir": "t",
                                              "num_labels": 2, "max_length": 32, "vocab_size": 10, "checkpoint": None}))

    class Store:
        def download(self, run_id: str, name: str):
            assert name == MANIFEST
            return manifests[run_id]

    selection = Selection("base", "pick", "prep_a")
    assert selection.manifest(Store(), "prep_a").task == "prep_a"
    with caplog.at_level("WARNING"):
        assert selection.manifest(Store(), "prep_b").task == "prep_a"
    assert "upstream prepare run prep_b is not the one the search selected from (prep_a)" in caplog.text
