"""The causal-LM path (``data=wikitext2`` with a GPT-2) through ``python -m pipeline`` on a tiny
fake WikiText-2 directory and a tiny byte-level BPE tokenizer (offline, seconds)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from pipeline.config import PROJECT_ROOT
from pipeline.validate import ConfigError, validate
from tests.models.test_lm import write_fake_wikitext, write_tiny_bpe


@pytest.fixture
def lm_assets(tmp_path: Path) -> tuple[Path, Path]:
    return write_fake_wikitext(tmp_path / "wikitext-2"), write_tiny_bpe(tmp_path / "tok")


def _lm_overrides(wt: Path, tok: Path) -> list[str]:
    return ["experiment=gpt2_wikitext2", "model=gpt2_tiny", f"data.wikitext_dir={wt}", f"data.tokenizer_dir={tok}",
            "data.max_length=16", "finetune.max_steps=30", "finetune.batch_size=8", "finetune.eval_blocks=4",
            "secure_eval.num_examples=1", "secure_eval.seq_len=8"]


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", "pipeline", f"paths.outputs={tmp_path}", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=900, env=env, check=False)


def test_gpt2_wikitext2_chain(tmp_path: Path, lm_assets: tuple[Path, Path]) -> None:
    out = _run(tmp_path, *_lm_overrides(*lm_assets))
    assert out.returncode == 0, out.stderr[-4000:]
    log = out.stdout + out.stderr
    assert "search: skipped for data.task=wikitext2" in log
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["gpt2_wikitext2"])
    stages = runs[runs["tags.stage"].notna()].set_index("tags.stage")
    assert set(stages.index) == {"prepare", "finetune", "search", "secure_eval", "report"}
    assert set(stages["status"]) == {"FINISHED"}
    cand = runs[runs["tags.kind"] == "candidate"]
    assert len(cand) == 1 and cand.iloc[0]["tags.method"] == "none"
    c = cand.iloc[0]
    vocab = 300
    assert 1 < c["metrics.dev/perplexity"] < vocab / 4  # trained: far below a uniform model's 300
    assert 1 < c["metrics.test/perplexity"] < vocab / 4
    assert c["metrics.dev/perplexity_emulated"] > 1 and c["metrics.train/steps"] == 30
    assert "metrics.train/loss" in c and c["metrics.train/loss"] > 0
    client = mlflow.MlflowClient()
    losses = [m.value for m in client.get_metric_history(c["run_id"], "train/loss")]
    assert losses[-1] < losses[0]
    method = runs[runs["tags.kind"] == "method"]
    assert list(method["tags.method"]) == ["none"]
    m = method.iloc[0]
    assert m["metrics.agree/secure"] == 100.0 and m["metrics.comm_mb/total"] > 0
    assert m["metrics.logits/max_abs_err"] < 0.5


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["experiment=gpt2_wikitext2", "model=tiny_bert"], "needs model.family=gpt2, got model.family=bert"),
        (["model=gpt2_tiny"], "supports only data.task=wikitext2, got data.task=synthetic"),
        (["experiment=gpt2_wikitext2", "secure_eval.methods=[none,prune]"], "secure_eval.methods contains ['prune']"),
        (["experiment=gpt2_wikitext2", "data=wikitext2", "secure_eval.methods=[none]", "data.wikitext_dir=/nonexistent/wt"],
         "data.wikitext_dir='/nonexistent/wt' is not a directory; run `make lm-data`"),
        (["experiment=gpt2_wikitext2", "data.tokenizer_dir=null"], "needs a GPT-2 tokenizer"),
        (["experiment=gpt2_wikitext2", "secure_eval.seq_len=1"], "secure_eval.seq_len=1"),
        (["experiment=gpt2_wikitext2", "data.max_length=256"], "exceeds the model's 128 positions"),
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
    out = _run(tmp_path, "experiment=gpt2_wikitext2", f"data.wikitext_dir={wt}", f"data.tokenizer_dir={tok}",
               "secure_eval.methods=[none,bolt_we]")
    assert out.returncode != 0
    assert "secure_eval.methods contains ['bolt_we']" in out.stderr and "Traceback" not in out.stderr
