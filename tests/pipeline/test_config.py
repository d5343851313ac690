"""Config composition: every experiment composes; typos and bad names fail at composition."""
from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from pipeline.config import Protocol, Stage
from tests.pipeline.conftest import CONF_DIR

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def test_default_composes(compose_cfg):
    cfg = compose_cfg()
    assert cfg.stage is Stage.all
    assert cfg.model.name == "tiny_bert" and cfg.data.task == "synthetic"
    assert cfg.protocol.protocol is Protocol.CHEETAH
    assert cfg.secure_eval.methods == ["none", "bolt_we", "prune", "prune_reduce"]


def test_config_enums_are_the_library_names(compose_cfg):
    """The Hydra enums are the one list of each name the libraries define (no second spelling)."""
    from models.approx import FAMILIES, REDUCE_FORMS, RING_BITS
    from models.methods import builtin_names
    from pipeline.config import NonlinearName, ReduceFormsName, Transport
    from protocols.spec import FIELDS, PROTOCOLS, TRANSPORTS

    assert tuple(compose_cfg().secure_eval.methods) == builtin_names()
    assert tuple(p.value for p in Protocol) == PROTOCOLS
    assert tuple(t.value for t in Transport) == TRANSPORTS
    assert FIELDS == tuple(RING_BITS) == ("FM32", "FM64", "FM128")
    assert tuple(n.value for n in NonlinearName) == tuple(FAMILIES)
    assert tuple(n.value for n in ReduceFormsName) == tuple(REDUCE_FORMS)


def test_there_are_experiments():
    assert {"table1_smoke", "table2_smoke"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(compose_cfg, name):
    cfg = compose_cfg(f"experiment={name}")
    assert cfg.tracking.experiment, name
    assert cfg.model.layers > 0 and cfg.data.max_length > 0


def test_a_task_gets_its_experiment_budget_and_the_command_line_wins(compose_cfg):
    """``conf/budget/<experiment>_<task>.yaml`` applies after the experiment (IMDB at 512 tokens,
    4,000 reviews; RTE batches of 16), the command line over it, and no budget without its file."""
    imdb = compose_cfg("experiment=table2", "data=imdb")
    assert (imdb.data.max_length, imdb.data.train_limit, imdb.data.dev_limit, imdb.finetune.batch_size) == (512, 4000, 1000, 16)
    rte = compose_cfg("experiment=table2", "data=rte", "finetune.epochs=2")
    assert (rte.finetune.epochs, rte.finetune.batch_size, rte.finetune.candidate_method) == (2.0, 16, "prune")
    cola = compose_cfg("experiment=table2", "data=cola")
    assert (cola.data.max_length, cola.finetune.epochs, cola.finetune.batch_size) == (128, 3.0, 32)
    assert compose_cfg("data=imdb").data.max_length == 512 and compose_cfg("data=imdb").finetune.epochs == 5.0


def test_typo_in_key_names_the_key(compose_cfg):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg("finetune.lamdas=[0.1]")
    assert "lamdas" in str(err.value.__cause__ or err.value)


def test_wrong_type_names_the_key(compose_cfg):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg("finetune.epochs=many")
    assert "epochs" in str(err.value.__cause__ or err.value)


@pytest.mark.parametrize(
    ("override", "bad"),
    [("protocol.protocol=CHEETA", "CHEETA"), ("stage=train", "train")],
)
def test_unknown_enum_value_is_named_with_choices(compose_cfg, override, bad):
    with pytest.raises((ConfigCompositionException, ValidationError, ConfigKeyError)) as err:
        compose_cfg(override)
    text = str(err.value.__cause__ or err.value)
    assert bad in text and "expected one of" in text


def test_unknown_model_lists_options(compose_cfg):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg("model=gpt5")
    assert "gpt5" in str(err.value) and "tiny_bert" in str(err.value)


def test_every_finetune_field_reaches_a_training_config() -> None:
    """A ``finetune`` field is either read by the stage or passed to a library training config
    under its own name: a field neither consumes (a typo, a renamed library field) fails here."""
    from dataclasses import fields

    from models.lm import LMTrainConfig
    from models.training import FinetuneConfig as TrainConfig
    from pipeline.config import FinetuneConfig
    from pipeline.tasks.common import FINETUNE_STAGE_ONLY, training_config

    library = {f.name for cls in (TrainConfig, LMTrainConfig) for f in fields(cls)}
    dropped = [f.name for f in fields(FinetuneConfig)
               if f.name not in FINETUNE_STAGE_ONLY and f.name not in library]
    assert dropped == []
    section = FinetuneConfig(lr=0.123, warmup_ratio=0.2, patience=None)
    built = training_config(section, TrainConfig, method="none")
    assert (built.lr, built.warmup_ratio, built.patience, built.ops, built.method) == (0.123, 0.2, None, "emulated", "none")
    assert training_config(section, LMTrainConfig, steps=7).steps == 7



def test_a_family_s_spu_options_reach_the_secure_session(compose_cfg) -> None:
    from pipeline.tasks.common import session_spec

    assert session_spec(compose_cfg("nonlinear=bumblebee")).runtime_options == (
        ("cheetah_2pc_config.enable_mul_lsb_error", True),)
    assert session_spec(compose_cfg()).runtime_options == ()
