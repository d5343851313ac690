"""Every stage is one module of ``pipeline/stages/`` and one entry of ``pipeline.config.STAGE_INPUTS``
(docs/ARCHITECTURE.md, "How to add a stage"); every task implements ``pipeline.tasks.Task``."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from pipeline.config import CHAIN, PROJECT_ROOT, STAGE_INPUTS, Stage
from pipeline.identity import identity_key
from pipeline.stages import STAGES
from pipeline.tasks import Task, task_of

STAGE_LIST = [s for s in Stage if s is not Stage.all]


@pytest.mark.parametrize("stage", STAGE_LIST, ids=[s.value for s in STAGE_LIST])
def test_a_stage_is_its_module_and_its_inputs(stage: Stage) -> None:
    module = STAGES[stage]
    assert Path(inspect.getfile(module)) == PROJECT_ROOT / "pipeline" / "stages" / f"{stage.value}.py"   # type: ignore[arg-type]
    assert callable(module.params) and callable(module.run)
    assert all(up in CHAIN and CHAIN.index(up) < CHAIN.index(stage) for up in STAGE_INPUTS[stage].upstream
               if stage in CHAIN)
    assert set(STAGE_INPUTS[stage].sections) <= {"model", "data", "nonlinear", "finetune", "search", "protocol",
                                                 "secure_eval", "report", "benchmark"}


def test_identity_reads_the_sections_a_stage_declares(compose_cfg) -> None:
    cfg = compose_cfg()
    base = identity_key(cfg, Stage.finetune)
    assert identity_key(compose_cfg("secure_eval.num_examples=3"), Stage.finetune) == base    # not finetune's
    assert identity_key(compose_cfg("finetune.seed=5"), Stage.finetune) != base
    assert identity_key(compose_cfg("nonlinear=bumblebee"), Stage.finetune) != base        # trained with other forms


@pytest.mark.parametrize("task", ["synthetic", "sst2", "wikitext2"])
def test_every_task_module_implements_the_protocol(task: str) -> None:
    module = task_of(task)
    for name, member in inspect.getmembers(Task, inspect.isfunction):
        if not name.startswith("_"):
            assert callable(getattr(module, name)), f"{module.__name__} lacks {name}"
            assert list(inspect.signature(getattr(module, name)).parameters) == \
                list(inspect.signature(member).parameters)[1:], name         # the protocol's, less self


def test_an_unknown_task_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="nope"):
        task_of("nope")
