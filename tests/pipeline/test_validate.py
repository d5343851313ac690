"""Bad config values are rejected before any work, naming the value and what is allowed."""
from __future__ import annotations

import pytest

from pipeline.validate import ConfigError, validate


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["data.max_length=128"], "data.max_length=128 exceeds the model's 64 positions"),
        (["model.heads=5"], "model.hidden=64 is not divisible by model.heads=5"),
        (["finetune.lambdas=[0.1,-1]"], "finetune.lambdas contains -1"),
        (["finetune.beta_factor=0.5"], "finetune.beta_factor=0.5"),
        (["search.reduce_max_drop=-1"], "search.reduce_max_drop=-1"),
        (["search.beta_scales=[1.0,-0.5]"], "-0.5 is not a finite number >= 0"),
        (["protocol.field=FM16"], "protocol.field='FM16'"),
        (["protocol.fraction_bits=40"], "protocol.fraction_bits=40"),
        (["data.synthetic.seq_len=40"], "data.synthetic.seq_len=40"),
        (["model.checkpoint=/nonexistent/bert"], "model.checkpoint='/nonexistent/bert'"),
        (["data=sst2", "data.glue_dir=/tmp", "model=minilm_l6"], "has no SST-2/ folder"),
        (["secure_eval.methods=[]"], "secure_eval.methods is empty"),
        (["data.task=imbd"], "data.task='imbd': unknown GLUE task 'imbd'; expected one of"),
        (["secure_eval.methods=[none,magic]"], "secure_eval.methods entry='magic': unknown pruning method 'magic'; "
                                               "expected one of ['none', 'bolt_we', 'prune', 'prune_reduce']"),
        (["secure_eval.methods=[none,none]"], "names a method twice"),
        (["finetune.candidate_method=bolt_we"], "finetune.candidate_method=bolt_we: candidates are trained with a "
                                                "method that learns thresholds, one of ['prune', 'prune_reduce']"),
        (["nonlinear=bumblebee", "finetune.reduce_forms=polynomial"],
         "finetune.reduce_forms=polynomial with nonlinear=bumblebee: expected one of ['fast']"),
        (["experiment=gpt2_wikitext2", "nonlinear=bumblebee"], "nonlinear=bumblebee with data.task=wikitext2"),
    ],
)
def test_bad_values_are_named(compose_cfg, overrides, needle):
    cfg = compose_cfg(*overrides)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert needle in str(err.value)


SPEC = {"name": "polarity", "folder": "P", "files": {"train": "t.tsv", "dev": "d.tsv"}, "text_cols": ["s"],
        "label_col": "y", "num_labels": 2, "metric": "accuracy"}


@pytest.mark.parametrize(("task", "spec", "needle"), [
    ("polarity", {**SPEC, "metric": "acc"}, "data.task='polarity': task polarity: unknown metric 'acc'"),
    ("other", SPEC, "data.spec.name='polarity' but data.task='other'"),
    ("polarity", {**SPEC, "labels": 2}, "task spec: unknown fields ['labels']"),
    ("sst2", {**SPEC, "name": "sst2"}, "task 'sst2' is already defined differently"),
])
def test_bad_task_specs_are_named(compose_cfg, task, spec, needle):
    cfg = compose_cfg(f"data.task={task}")
    cfg.data.spec = spec
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert needle in str(err.value)


def test_default_and_experiments_are_valid(compose_cfg):
    for name in ("table1_smoke", "table2_smoke"):
        validate(compose_cfg(f"experiment={name}"))
    validate(compose_cfg())
