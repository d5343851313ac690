"""The causal-LM path (``data=wikitext2`` with a GPT-2) through ``python -m pipeline`` on a tiny
fake WikiText-2 directory and a tiny byte-level BPE tokenizer (offline, seconds)."""
from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest

from pipeline.validate import ConfigError, validate
from tests.models.test_lm import write_fake_wikitext, write_tiny_bpe
from tests.pipeline.conftest import run_cli


@pytest.fixture
def lm_assets(tmp_path: Path) -> tuple[Path, Path]:
    return write_fake_wikitext(tmp_path / "wikitext-2"), write_tiny_bpe(tmp_path / "tok")


def _lm_overrides(wt: Path, tok: Path) -> list[str]:
    return ["experiment=gpt2_wikitext2", "model=gpt2_tiny", f"data.wikitext_dir={wt}", f"data.tokenizer_dir={tok}",
            "data.max_length=16", "finetune.max_steps=30", "finetune.batch_size=8", "finetune.eval_blocks=8",
            "finetune.lambdas=[0.5]", "finetune.prune_epochs=0.5", "finetune.hard_epochs=0.2",
            "finetune.temperatures=[0.01]", "finetune.threshold_lr=5e-3", "search.max_drop=100",
            "secure_eval.num_examples=1"]


def test_gpt2_wikitext2_chain(tmp_path: Path, lm_assets: tuple[Path, Path]) -> None:
    """The whole chain with one pruned candidate: a trained baseline, a Π_prune + Π_reduce candidate
    that prunes and learned β, the search's pick scored on test, and all four causal methods run
    securely, each agreeing with the torch model on the logits' argmax and on the tokens entering
    every layer."""
    out = run_cli(tmp_path, *_lm_overrides(*lm_assets), "secure_eval.generate_tokens=3")
    assert out.returncode == 0, out.stderr[-4000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["gpt2_wikitext2"])
    stages = runs[runs["tags.stage"].notna()].set_index("tags.stage")
    assert set(stages.index) == {"prepare", "finetune", "search", "secure_eval", "report"}
    assert set(stages["status"]) == {"FINISHED"}
    cand = runs[runs["tags.kind"] == "candidate"].set_index("tags.method")
    assert sorted(cand.index) == ["none", "prune_reduce"]
    base, pruned = cand.loc["none"], cand.loc["prune_reduce"]
    vocab = 300
    assert 1 < base["metrics.dev/perplexity"] < vocab / 4  # trained: far below a uniform model's 300
    assert 1 < base["metrics.test/perplexity"] < vocab / 4
    assert base["metrics.dev/perplexity_emulated"] > 1 and base["metrics.train/steps"] == 30
    client = mlflow.MlflowClient()
    losses = [m.value for m in client.get_metric_history(base["run_id"], "train/loss")]
    assert losses[-1] < losses[0]
    context = 15
    assert base["metrics.dev/none/kept_mean"] == context          # unpruned: every context token
    assert base["metrics.dev/bolt_we/kept/layer_0"] == 8           # top half of 15 (7) + the last position
    assert 1 <= pruned["metrics.dev/prune/kept/layer_1"] <= pruned["metrics.dev/prune/kept/layer_0"] < context
    assert pruned["metrics.dev/prune_reduce/kept/layer_0"] == pruned["metrics.dev/prune/kept/layer_0"]
    highs = [m.value for m in client.get_metric_history(pruned["run_id"], "train/soft_high_ratio")]
    assert len(highs) > 1 and 0 < min(highs) and max(highs) <= 1
    search = stages.loc["search"]
    assert search["tags.selected_run_id"] == pruned["run_id"] and search["tags.baseline_run_id"] == base["run_id"]
    assert search["metrics.test/prune/kept_mean"] < search["metrics.test/none/kept_mean"] == context
    assert search["metrics.test/prune_reduce/kept/layer_0"] == search["metrics.test/prune/kept/layer_0"]
    method = runs[runs["tags.kind"] == "method"].set_index("tags.method")
    assert sorted(method.index) == ["bolt_we", "none", "prune", "prune_reduce"]
    for name, m in method.iterrows():
        assert m["metrics.agree/secure"] == 100.0 and m["metrics.comm_mb/total"] > 0, name
        # fixed-point noise against the torch model (measured ≤ 0.0015 on logits up to 2.3): 0.3 % of their magnitude
        assert m["metrics.logits/max_abs"] > 1.0 and 0 < m["metrics.logits/max_abs_err"] < 0.003 * m["metrics.logits/max_abs"], name
        assert m["metrics.tokens_entering/secure_vs_reference_max_abs_diff"] == 0, name
        assert m["metrics.tokens_entering/layer_0"] == context, name
    assert method.loc["bolt_we", "metrics.tokens_entering/layer_1"] == 8
    assert method.loc["prune", "metrics.tokens_entering/layer_1"] < context
    assert method.loc["prune", "metrics.comm_mb/total"] < method.loc["none", "metrics.comm_mb/total"]
    table = pd.read_csv(tmp_path / "reports" / "lm" / "lm.csv").set_index("method")   # report=lm, from these runs
    assert method.loc["prune_reduce", "metrics.tokens_entering/layer_1"] == method.loc["prune", "metrics.tokens_entering/layer_1"]
    assert list(table.index) == ["none", "bolt_we", "prune", "prune_reduce"]
    for name in table.index:
        assert table.loc[name, "test_ppl"] == pytest.approx(search[f"metrics.test/{name}/next_token_ppl"])
        assert table.loc[name, "secure_run"] == method.loc[name, "run_id"]
        assert table.loc[name, "comm_gb"] == pytest.approx(method.loc[name, "metrics.comm_mb/total"] / 1024)
    assert table.loc["none", "speedup_vs_none"] == 1.0
    assert pd.isna(table.loc["prune", "paper_speedup"])       # the paper reports GPT-2 at 128 and 512 tokens only
    assert table.loc["none", "kept_after"] == "15.0-15.0" and table.loc["bolt_we", "kept_after"] == "8.0-8.0"
    ops = pd.read_csv(tmp_path / "reports" / "lm" / "ops.csv").set_index("method")   # where the time goes, per op class
    for name in ops.index:
        by_op = ops.loc[name, [f"lan_{op}" for op in ("Linear", "Softmax", "GELU", "LayerNorm", "Prune", "Reduce", "Other")]]
        assert by_op.sum() == pytest.approx(ops.loc[name, "time_lan_s"]) == method.loc[name, "metrics.time_s/lan"], name
        assert ops.loc[name, "secure_run"] == method.loc[name, "run_id"]
    assert ops.loc["none", "lan_Prune"] == 0 < ops.loc["prune", "lan_Prune"] and ops.loc["prune_reduce", "lan_Reduce"] > 0
    assert list((tmp_path / "reports" / "lm").glob("breakdown_*.png"))
    _check_generation(tmp_path, method, table)
    _check_parties_load_their_own(tmp_path, lm_assets, method)


def _check_generation(tmp_path: Path, method: pd.DataFrame, table: pd.DataFrame) -> None:
    """``secure_eval.generate_tokens=3``: each method generates 3 tokens greedily after test context 0,
    each a secure forward over a sliding window of the last 15 tokens: the first token is the argmax
    of context 0's scored logits (input.json), each step's context is the last one shifted by the
    token generated before, the torch model picks the same token on every step, and the cost of a
    step is that of a scored context (the same shapes for the unpruned methods)."""
    import json

    import numpy as np

    client = mlflow.MlflowClient()
    for name, m in method.iterrows():
        assert m["metrics.generate/tokens"] == 3 and m["metrics.generate/agree"] == 100.0, name
        generation = json.loads(Path(client.download_artifacts(m["run_id"], "generation.json")).read_text())
        scored = runs_input(client, m)
        assert len(generation["generated"]) == 3 and generation["generated"][0] == int(np.argmax(scored["logits"][0])), name
        assert isinstance(generation["text"], str) and generation["agree"] == [1, 1, 1], name
        assert [s["entering"][0] for s in generation["steps"]] == [15, 15, 15], name   # the window keeps 15 tokens
        steps = [h.value for h in client.get_metric_history(m["run_id"], "generate/comm_mb")]
        assert len(steps) == 3 and m["metrics.generate/comm_mb_per_token"] == pytest.approx(np.mean(steps)), name
        assert table.loc[name, "generate_lan_s_per_token"] == pytest.approx(m["metrics.generate/time_s/lan_per_token"])
    for name in ("none", "bolt_we"):             # fixed shapes: a generated token costs what a scored context does
        assert method.loc[name, "metrics.generate/comm_mb_per_token"] == pytest.approx(method.loc[name, "metrics.comm_mb/total"],
                                                                                       rel=1e-3), name


def runs_input(client: mlflow.MlflowClient, method_run: pd.Series) -> dict:
    """input.json of the method run's context-0 input run."""
    import json

    child = client.search_runs([method_run["experiment_id"]], f"tags.mlflow.parentRunId = '{method_run['run_id']}' "
                               "and tags.kind = 'input' and tags.examples = '0'")[0]
    return json.loads(Path(client.download_artifacts(child.info.run_id, "input.json")).read_text())


def _check_parties_load_their_own(tmp_path: Path, lm_assets: tuple[Path, Path], threads: pd.DataFrame) -> None:
    """secure_eval with one process per party (the server's loads the checkpoint, the client's its
    test contexts) and attention in one program per head (``secure_eval.heads_per_program=1``):
    the same agreement and schedule as in one process with all heads in one program; relaunched
    with a third context, it reuses the two FINISHED contexts of every method and runs only the third."""
    args = [*_lm_overrides(*lm_assets), "stage=secure_eval", "protocol.transport=processes", "secure_eval.heads_per_program=1"]
    for launch in (1, 2):
        out = run_cli(tmp_path, *args, f"secure_eval.num_examples={launch + 1}")
        assert out.returncode == 0, out.stderr[-4000:]
        runs = mlflow.search_runs(experiment_names=["gpt2_wikitext2"])
        newest = runs[runs["tags.kind"] == "method"].sort_values("start_time").groupby("tags.method").tail(1)
        for _, m in newest.set_index("tags.method").iterrows():
            assert "each party process loads its own data" in m["tags.data_held_by"]
            assert m["metrics.agree/secure"] == 100.0 and m["metrics.tokens_entering/secure_vs_reference_max_abs_diff"] == 0
            assert m["metrics.examples/reused"] == (0 if launch == 1 else 2)
            assert m["metrics.examples/secure"] == launch + 1
            for owner in ("client", "server"):        # each party process's own peak RSS (an SPU runtime)
                assert 100 < m[f"metrics.memory/peak_rss_mb/{owner}"] < 24 * 1024, owner
        inputs = runs[runs["tags.kind"] == "input"]
        assert len(inputs[inputs["tags.examples"] == "1"]) == 4           # each method ran context 1 once
    assert len(inputs[inputs["tags.examples"] == "2"]) == 4
    processes = newest.set_index("tags.method")
    assert processes.loc["prune", "metrics.comm_mb/total"] < processes.loc["none", "metrics.comm_mb/total"]
    assert processes.loc["bolt_we", "metrics.tokens_entering/layer_1"] == threads.loc["bolt_we", "metrics.tokens_entering/layer_1"]
    # one attention program per head: the same bytes to 1 %, more rounds per context
    assert processes.loc["none", "metrics.comm_mb/total"] == pytest.approx(threads.loc["none", "metrics.comm_mb/total"], rel=0.01)
    assert processes.loc["none", "metrics.rounds/total"] > threads.loc["none", "metrics.rounds/total"]


def test_unpruned_lm_chain_selects_the_baseline(tmp_path: Path, lm_assets: tuple[Path, Path]) -> None:
    """``finetune.lambdas=[]`` (e.g. only evaluating a real GPT-2): no candidate, the search selects the
    baseline, and the unpruned methods still run securely."""
    out = run_cli(tmp_path, *_lm_overrides(*lm_assets), "finetune.lambdas=[]", "secure_eval.methods=[none,bolt_we]")
    assert out.returncode == 0, out.stderr[-4000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["gpt2_wikitext2"])
    cand = runs[runs["tags.kind"] == "candidate"]
    assert list(cand["tags.method"]) == ["none"]
    search = runs[runs["tags.stage"] == "search"].iloc[0]
    assert search["tags.selected_run_id"] == search["tags.baseline_run_id"] == cand.iloc[0]["run_id"]
    assert "metrics.test/prune/next_token_ppl" not in search or pd.isna(search["metrics.test/prune/next_token_ppl"])
    assert search["metrics.test/bolt_we/kept/layer_0"] == 8
    method = runs[runs["tags.kind"] == "method"]
    assert sorted(method["tags.method"]) == ["bolt_we", "none"] and set(method["metrics.agree/secure"]) == {100.0}
    # a later launch on the same data, model and budget reuses the baseline instead of training it again
    again = run_cli(tmp_path, *_lm_overrides(*lm_assets), "finetune.lambdas=[]", "stage=finetune", "tracking.resume=true",
                    "finetune.temperatures=[0.5]")
    assert again.returncode == 0, again.stderr[-4000:]
    runs = mlflow.search_runs(experiment_names=["gpt2_wikitext2"])
    finetunes = runs[runs["tags.stage"] == "finetune"].sort_values("start_time")
    assert len(finetunes) == 2 and set(finetunes["tags.baseline_run"]) == {cand.iloc[0]["run_id"]}
    assert len(runs[runs["tags.kind"] == "candidate"]) == 1


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["experiment=gpt2_wikitext2", "model=tiny_bert"], "needs model.family=gpt2, got model.family=bert"),
        (["model=gpt2_tiny"], "supports only data.task=wikitext2, got data.task=synthetic"),
        (["experiment=gpt2_wikitext2", "finetune.candidate_method=prune"],
         "secure_eval.methods contains 'prune_reduce' but finetune.candidate_method=prune learns no β"),
        (["experiment=gpt2_wikitext2", "finetune.lambdas=[]"],
         "secure_eval.methods contains ['prune', 'prune_reduce'] but finetune.lambdas=[] trains no pruned candidate"),
        (["experiment=gpt2_wikitext2", "secure_eval.seq_len=128"], "must be in 2..data.max_length-1=127"),
        (["experiment=gpt2_wikitext2", "data=wikitext2", "secure_eval.methods=[none]", "data.wikitext_dir=/nonexistent/wt"],
         "data.wikitext_dir='/nonexistent/wt' is not a directory; run `make lm-data`"),
        (["experiment=gpt2_wikitext2", "data.tokenizer_dir=null"], "needs a GPT-2 tokenizer"),
        (["experiment=gpt2_wikitext2", "secure_eval.seq_len=1"], "secure_eval.seq_len=1"),
        (["experiment=gpt2_wikitext2", "data.max_length=256"], "exceeds the model's 128 positions"),
        (["experiment=gpt2_wikitext2", "secure_eval.generate_tokens=-1"], "secure_eval.generate_tokens=-1: must be >= 0"),
        (["experiment=gpt2_wikitext2", "secure_eval.heads_per_program=5"],
         "secure_eval.heads_per_program=5: must be in [1, model.heads=4]"),
        (["secure_eval.generate_tokens=2"], "generation is defined for causal language modelling (data.task=wikitext2), "
                                            "not data.task=synthetic"),
    ],
)
def test_lm_config_errors_are_named(compose_cfg, overrides, needle, lm_assets):
    wt, tok = lm_assets
    extra = [] if any("wikitext_dir" in o for o in overrides) else [f"data.wikitext_dir={wt}"]
    if not any("tokenizer_dir" in o for o in overrides) and "experiment=gpt2_wikitext2" in overrides:
        extra.append(f"data.tokenizer_dir={tok}")
    cfg = compose_cfg(*overrides, *extra) if "experiment=gpt2_wikitext2" in overrides else compose_cfg(*overrides)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert needle in str(err.value)


def test_lm_experiment_is_valid(compose_cfg, lm_assets):
    wt, tok = lm_assets
    validate(compose_cfg("experiment=gpt2_wikitext2", f"data.wikitext_dir={wt}", f"data.tokenizer_dir={tok}"))


def test_config_error_without_traceback(tmp_path: Path, lm_assets):
    wt, tok = lm_assets
    out = run_cli(tmp_path, "experiment=gpt2_wikitext2", f"data.wikitext_dir={wt}", f"data.tokenizer_dir={tok}",
               "finetune.lambdas=[]")
    assert out.returncode != 0
    assert "finetune.lambdas=[] trains no pruned candidate" in out.stderr and "Traceback" not in out.stderr


def test_lm_table_joins_search_and_secure_runs() -> None:
    """``report=lm`` rows: the search's test metrics, the newest secure run per method, ratios to
    ``none`` and the paper's 5.3x beside the pruned row at 128 tokens."""
    from pipeline.reporting.tables import lm_table

    search = {"model": "gpt2_small_lm", "max_length": 128, "run_id": "s1", "start_time": 1, "test/blocks": 64.0}
    for method, ppl, acc, kept in (("none", 900.0, 12.0, [127.0] * 2), ("bolt_we", 950.0, 11.0, [64.0] * 2),
                                   ("prune", 910.0, 11.5, [60.0, 30.0])):
        search |= {f"test/{method}/next_token_ppl": ppl, f"test/{method}/next_token_acc": acc,
                   f"test/{method}/kept_mean": sum(kept) / 2} | {f"test/{method}/kept/layer_{i}": k for i, k in enumerate(kept)}
    secure = pd.DataFrame([{"model": "gpt2_small_lm", "max_length": 128, "protocol": "CHEETAH", "method": m, "run_id": f"r_{m}_{t}",
                            "start_time": t, "time_s/lan": lan, "time_s/wan": 3 * lan, "comm_mb/total": 1024.0 * lan,
                            "agree/secure": 100.0, "examples/secure": 2.0}
                           for m, lan, t in (("none", 40.0, 1), ("none", 80.0, 0), ("bolt_we", 20.0, 1), ("prune", 10.0, 1))])
    table = lm_table(pd.DataFrame([search]), secure).set_index("method")
    assert list(table.index) == ["none", "bolt_we", "prune"]
    assert table.loc["none", "secure_run"] == "r_none_1"               # the newest run of a method
    assert table.loc["prune", "speedup_vs_none"] == 4.0 and table.loc["bolt_we", "speedup_vs_none"] == 2.0
    assert table.loc["prune", "comm_gb"] == 10.0 and table.loc["prune", "kept_after"] == "60.0-30.0"
    assert table.loc["prune", "paper_speedup"] == 5.3 and pd.isna(table.loc["none", "paper_speedup"])
    assert table.loc["prune", "test_ppl"] == 910.0 and table.loc["prune", "kept_mean"] == 45.0
    alone = lm_table(pd.DataFrame([search]), pd.DataFrame()).set_index("method")   # no secure run yet: no cost
    assert alone.loc["prune", "protocol"] == "—" and pd.isna(alone.loc["prune", "time_lan_s"])
    search |= {"test/prune_reduce/next_token_ppl": 915.0, "test/prune_reduce/next_token_acc": 11.4,
               "test/prune_reduce/kept_mean": 45.0, "test/prune_reduce/kept/layer_0": 60.0}
    full = lm_table(pd.DataFrame([search]), secure).set_index("method")   # the paper's figure moves to CipherPrune
    assert list(full.index) == ["none", "bolt_we", "prune", "prune_reduce"]
    assert full.loc["prune_reduce", "paper_speedup"] == 5.3 and pd.isna(full.loc["prune", "paper_speedup"])
