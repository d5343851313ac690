"""The two Hydra plugins the pipeline ships configs for: the submitit launcher (each job in its
own process, nested under the multirun's MLflow parent run) and the Optuna sweeper
(``hydra/sweeper=pareto``: jobs return ``sweep.objectives`` of their stage run, the Pareto
front lands in ``optimization_results.yaml``)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution

from pipeline.config import PipelineConfig, Stage, register_configs
from pipeline.sweep import objective_values
from pipeline.tracking import Tracker
from pipeline.validate import ConfigError, validate
from tests.pipeline.conftest import CONF_DIR
from tests.pipeline.test_multirun import _launch, _runs


def _sweep_dir(tmp_path: Path) -> Path:
    (found,) = (tmp_path / "multirun").glob("*/*")
    return found


def _parent_and_children(tmp_path: Path):
    """The one FINISHED multirun parent run and the prepare runs nested under it."""
    runs = _runs(tmp_path)
    parents = runs[runs["tags.kind"] == "multirun"]
    assert len(parents) == 1 and parents.iloc[0]["status"] == "FINISHED"
    children = runs[runs["tags.stage"] == "prepare"]
    assert set(children["tags.mlflow.parentRunId"]) == {parents.iloc[0]["run_id"]}
    assert set(children["status"]) == {"FINISHED"}
    return parents.iloc[0], children


def _train_rows(runs):
    """Rows of the generated train split per prepare run: train plus the validation split carved
    from it, where the prepare stage logs one (``examples/val``)."""
    val = runs["metrics.examples/val"].fillna(0) if "metrics.examples/val" in runs else 0
    return runs["metrics.examples/train"] + val


def test_submitit_local_jobs_run_in_own_processes_under_one_parent(tmp_path):
    done = _launch(tmp_path, "hydra/launcher=local_submitit", "data.synthetic.seed=0,1")
    assert done.returncode == 0, done.stderr[-3000:]
    parent, children = _parent_and_children(tmp_path)
    assert parent["tags.pid"].isdigit() and parent["tags.host"]   # a killed launcher's parent can be reaped
    assert len(children) == 2 and children["run_id"].nunique() == 2
    assert children["tags.sections_hash"].nunique() == 2          # the two seeds: two datasets
    assert set(children["metrics.examples/dev"]) == {16.0}        # data.synthetic.n_dev=16
    assert set(_train_rows(children)) == {64.0}                   # data.synthetic.n_train=64
    assert children["metrics.tokens_mean/train"].nunique() == 2
    # submitit ran each job in a process of its own, not in the launching one
    assert children["tags.pid"].nunique() == 2
    results = list((_sweep_dir(tmp_path) / ".submitit").glob("*/*_result.pkl"))
    assert len(results) == 2


def _resolved(run_id: str, tmp_path: Path) -> dict:
    """The config a run logged (``config/resolved.json``)."""
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (tmp_path / "downloads" / run_id).mkdir(parents=True)
    path = client.download_artifacts(run_id, "config/resolved.json", str(tmp_path / "downloads" / run_id))
    return json.loads(Path(path).read_text())


def test_optuna_pareto_sweep_returns_stage_metrics_as_objectives(tmp_path):
    # the yaml's fine-tuning search space is replaced by a cheap one over the prepare stage
    done = _launch(tmp_path, "hydra/sweeper=pareto", "hydra.sweeper.n_trials=3", "hydra.sweeper.params=null",
                   "sweep.stage=prepare", "sweep.objectives=[examples/train,tokens_mean/train]",
                   "data.synthetic.seq_len=choice(10,20,30)")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in _sweep_dir(tmp_path).glob("[0-9]*")) == ["0", "1", "2"]   # n_trials=3 jobs
    _, children = _parent_and_children(tmp_path)
    # one prepare run per distinct seq_len tried (a repeated trial reuses its FINISHED run)
    by_len = {_resolved(r, tmp_path)["data"]["synthetic"]["seq_len"]: row
              for r, row in children.set_index("run_id").iterrows()}
    assert len(by_len) == len(children) >= 1 and set(by_len) <= {10, 20, 30}
    results = OmegaConf.to_container(OmegaConf.load(_sweep_dir(tmp_path) / "optimization_results.yaml"))
    assert results["name"] == "optuna"
    solutions = results["solutions"]
    assert solutions
    for solution in solutions:
        row = by_len[solution["params"]["data.synthetic.seq_len"]]
        assert solution["values"] == [row["metrics.examples/train"], row["metrics.tokens_mean/train"]]
    # direction [maximize, minimize]: examples/train is the same in every trial (n_train=64), so
    # the Pareto front is the trials with the fewest tokens per example
    assert set(_train_rows(children)) == {64.0} and children["metrics.examples/train"].nunique() == 1
    fewest = min(row["metrics.tokens_mean/train"] for row in by_len.values())
    assert {s["params"]["data.synthetic.seq_len"] for s in solutions} == \
        {n for n, row in by_len.items() if row["metrics.tokens_mean/train"] == fewest}


PARETO = CONF_DIR / "hydra" / "sweeper" / "pareto.yaml"
PARETO_OBJECTIVES = "[objective/val_metric,objective/tokens_kept]"


def _pareto_space() -> tuple[dict, dict]:
    """The search space and fixed overrides the Optuna plugin reads from ``pareto.yaml``'s params."""
    params = OmegaConf.load(PARETO).params
    return create_params_from_overrides([f"{k}={v}" for k, v in params.items()])


def test_pareto_sweeper_is_seeded_nsga2_over_two_objectives(compose_cfg):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        composed = compose(config_name="config", overrides=["hydra/sweeper=pareto"], return_hydra_config=True)
    sweeper = composed.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.sampler._target_ == "optuna.samplers.NSGAIISampler"
    assert sweeper.sampler.seed == 0 and list(sweeper.direction) == ["maximize", "minimize"]
    assert sweeper.n_jobs == 1 and sweeper.storage is None and sweeper.n_trials > 0
    space, fixed = _pareto_space()
    assert set(space) == {"finetune.lambdas", "finetune.temperatures", "finetune.theta_quantiles"}
    assert fixed == {"sweep.objectives": PARETO_OBJECTIVES}   # not searched: given to every trial
    cfg = compose_cfg(f"sweep.objectives={PARETO_OBJECTIVES}", "stage=finetune")
    assert cfg.sweep.objectives == ["objective/val_metric", "objective/tokens_kept"] and cfg.sweep.stage is Stage.finetune
    assert len(cfg.sweep.objectives) == len(sweeper.direction)
    validate(cfg)


@pytest.mark.parametrize("key", sorted(_pareto_space()[0]))
def test_pareto_choice_arrives_as_one_element_list(compose_cfg, key):
    """Each choice, as the plugin writes it into a trial's overrides, composes into the typed
    config as a list of one float: one pruned candidate per trial."""
    distribution = _pareto_space()[0][key]
    assert isinstance(distribution, CategoricalDistribution) and len(distribution.choices) >= 3
    section, name = key.split(".")
    parser = OverridesParser.create()
    for choice in distribution.choices:
        override = f"{key}={choice}"                     # what the sweeper passes to a trial
        value = parser.parse_override(override).value()
        assert isinstance(value, list) and len(value) == 1 and isinstance(value[0], float), override
        assert getattr(getattr(compose_cfg(override), section), name) == value


@pytest.fixture
def prepare_run(compose_cfg, monkeypatch) -> tuple[PipelineConfig, Tracker, str]:
    """A FINISHED prepare run with two metrics in a store under tmp_path."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose_cfg("stage=prepare", "sweep.stage=prepare")
    tracker = Tracker(cfg)
    with tracker.stage_run(Stage.prepare, {}, {}, []) as run:
        run.log_metrics({"examples/train": 64, "tokens_mean/train": 12.5})
    return cfg, tracker, run.run_id


def test_objective_values_read_the_stage_run(prepare_run):
    cfg, tracker, run_id = prepare_run
    produced = {Stage.prepare: run_id}
    assert objective_values(cfg, produced, tracker) is None          # no objectives: a plain sweep job
    cfg.sweep.objectives = ["tokens_mean/train"]
    assert objective_values(cfg, produced, tracker) == 12.5          # one objective: a float
    cfg.sweep.objectives = ["tokens_mean/train", "examples/train"]
    assert objective_values(cfg, produced) == [12.5, 64.0]           # several: a list, in order (new Tracker)


def test_missing_objective_names_metric_stage_run_and_what_exists(prepare_run):
    cfg, tracker, run_id = prepare_run
    cfg.sweep.objectives = ["examples/train", "objective/val_metric"]
    with pytest.raises(ValueError) as err:
        objective_values(cfg, {Stage.prepare: run_id}, tracker)
    message = str(err.value)
    for needle in ("['objective/val_metric']", "prepare run", run_id, "['examples/train', 'tokens_mean/train']"):
        assert needle in message, message
    cfg.sweep.stage = Stage.finetune
    with pytest.raises(ValueError, match="sweep.stage=finetune: this job produced no finetune run"):
        objective_values(cfg, {Stage.prepare: run_id}, tracker)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["stage=prepare", "sweep.stage=finetune"], "sweep.stage=finetune: stage=prepare produces no finetune run"),
        (["stage=all", "sweep.stage=report"], "sweep.stage=report: sweep.objectives=['acc/dev'] must be metrics of a run"),
        (["stage=all", "sweep.stage=all"], "sweep.stage=all"),
    ],
)
def test_objectives_need_a_stage_run_of_this_job(compose_cfg, overrides, needle):
    cfg = compose_cfg(*overrides, "sweep.objectives=[acc/dev]")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert needle in str(err.value)
    validate(compose_cfg(*overrides))                                # no objectives: nothing to check
