"""Adding a GLUE-style task is one YAML file: a data config declaring its ``spec`` (folder, files,
columns, labels, metrics) over a small tsv in its own layout runs prepare → finetune → search →
secure_eval (and the report), with no other file touched."""
from __future__ import annotations

from pathlib import Path

import mlflow

from models.synthetic import make_examples, write_tiny_checkpoint

TASK_YAML = """# A made-up task: the synthetic polarity sentences with the label first and the text in a column "review"
defaults:
  - data_schema
task: polarity
glue_dir: {data}
max_length: 32
spec:
  name: polarity
  label: Polarity
  folder: POLARITY
  files: {{train: train.tsv, dev: dev.tsv}}
  text_cols: [review]
  label_col: verdict
  label_map: {{negative: 0, positive: 1}}
  num_labels: 2
  metric: f1
  metrics: [accuracy]
"""


def _write_task(root: Path) -> tuple[Path, Path]:
    """The tsv files (``verdict\\treview``, labels as words) and the YAML config dir."""
    data = root / "data" / "POLARITY"
    data.mkdir(parents=True)
    for split, n, seed in (("train", 600, 0), ("dev", 120, 1)):
        rows = [f"{'positive' if y else 'negative'}\t{text}" for text, y in make_examples(n, seed)]
        (data / f"{split}.tsv").write_text("verdict\treview\n" + "\n".join(rows) + "\n")
    conf = root / "conf"
    (conf / "data").mkdir(parents=True)
    (conf / "data" / "polarity.yaml").write_text(TASK_YAML.format(data=root / "data"))
    return conf, write_tiny_checkpoint(root / "checkpoint")


def test_a_new_task_is_one_yaml_file(compose_cfg, tmp_path, monkeypatch) -> None:
    from pipeline.runner import run_pipeline

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    conf, checkpoint = _write_task(tmp_path)
    cfg = compose_cfg(f"hydra.searchpath=[file://{conf}]", "data=polarity", f"model.checkpoint={checkpoint}",
                      "protocol=semi2k", "finetune.lambdas=[0.2]", "secure_eval.num_examples=1",
                      "secure_eval.methods=[none,prune]")
    run_pipeline(cfg)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["cipherprune"])
    stages = runs[runs["tags.stage"].notna()].set_index("tags.stage")
    assert set(stages["status"]) == {"FINISHED"} and len(stages) == 5
    assert stages.loc["prepare", "metrics.examples/train"] + stages.loc["prepare", "metrics.examples/val"] == 600
    search = stages.loc["search"]
    assert search["tags.dev_metrics"] == "f1,accuracy"                        # the spec's metrics, primary first
    assert search["metrics.dev/none/metric"] == search["metrics.dev/none/f1"] > 80   # learnable, scored by F1
    assert 80 < search["metrics.dev/none/accuracy"] <= 100
    methods = runs[runs["tags.kind"] == "method"].set_index("tags.method")
    assert set(methods.index) == {"none", "prune"} and (methods["metrics.agree/secure"] == 100.0).all()
    assert methods.loc["prune", "metrics.tokens_entering/layer_1"] < methods.loc["none", "metrics.tokens_entering/layer_1"]
    table2 = (tmp_path / "reports" / "default" / "table2.md").read_text()
    assert "polarity" in table2 and "f1" in table2
