"""What differs per kind of task; the stages in ``pipeline/stages/`` do the rest.

A task module implements ``Task``: ``pipeline.tasks.glue`` (synthetic and GLUE-style classification
with a BERT) and ``pipeline.tasks.lm`` (causal language modelling on WikiText-2 with a GPT-2). It
supplies its data (``prepare``), how its baseline and one candidate train and what they score on
the validation split (``baseline``, ``train_candidate``: ``acc/val`` and ``tokens_kept/mean``, which
the one selection rule reads), what follows the pick (``after_selection``: GLUE calibrates β and
scores dev once, GPT-2 scores test once) and its secure evaluation with its reference
(``secure_evaluator``). The candidate grid, the baseline's reuse, the selection rule and the
per-method secure loop are the stages'. A GLUE-style task is data: a built-in ``models.data.TASKS``
entry, or a ``spec`` its data config declares (``declared_task``).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

from pipeline.config import DataConfig, PipelineConfig, Stage

if TYPE_CHECKING:
    from pipeline.context import StageContext
    from pipeline.tasks.common import DatasetManifest, Selection
    from pipeline.tracking import StageRun

LM_TASKS = ("wikitext2",)


@dataclass(frozen=True)
class GridPoint:
    """One candidate's pruning hyper-parameters: kept-token penalty λ, mask temperature T and the
    quantile θ starts at."""

    lambda_: float
    temperature: float
    theta_quantile: float

    @property
    def name(self) -> str:
        return f"lambda_{self.lambda_:g}_T_{self.temperature:g}_q_{self.theta_quantile:g}"

    def as_dict(self) -> dict[str, float]:
        """As the candidate run's params and tags name them."""
        return {"lambda": self.lambda_, "temperature": self.temperature, "theta_quantile": self.theta_quantile}


@dataclass
class Baseline:
    """The unpruned baseline: its run, the model every candidate starts from (None: no candidates
    are trained) and the metrics the finetune stage run repeats."""

    run_id: str
    start: Any
    summary: dict[str, float] = field(default_factory=dict)


@dataclass
class Selected:
    """What a task adds after the pick: metrics and tags of the search run, and the selected-checkpoint
    methods the pick can serve (``models.methods``; e.g. Π_reduce needs a β)."""

    metrics: dict[str, float]
    tags: dict[str, str]
    serves: tuple[str, ...]


class SecureEvaluator(Protocol):
    """A task's secure evaluation of one method on its inputs, then its reference step."""

    params: dict[str, Any]
    reference_step: str

    def evaluate(self, run: "StageRun", method: str, checkpoint_run: str) -> tuple[dict[str, float], dict[str, Any]]:
        """Metrics and the leakage record of ``method`` run securely on the checkpoint of ``checkpoint_run``."""
        ...

    def summary(self, method: str, metrics: dict[str, float]) -> str:
        """One log line on the method's outcome."""
        ...


class Task(Protocol):
    """What a kind of task supplies to the stages (module docstring)."""

    def params(self, stage: Stage, cfg: PipelineConfig) -> dict[str, Any]: ...

    def prepare(self, ctx: "StageContext") -> None: ...

    def baseline(self, ctx: "StageContext", manifest: "DatasetManifest") -> Baseline: ...

    def train_candidate(self, ctx: "StageContext", run: "StageRun", model: Any, manifest: "DatasetManifest",
                        point: GridPoint) -> dict[str, float]: ...

    def after_selection(self, ctx: "StageContext", selection: "Selection", manifest: "DatasetManifest") -> Selected: ...

    def secure_evaluator(self, ctx: "StageContext", selection: "Selection",
                         manifest: "DatasetManifest") -> SecureEvaluator: ...


def task_of(task: str) -> Task:
    """The module implementing ``Task`` for ``task`` (imported on first use): ``lm`` for ``LM_TASKS``,
    ``glue`` for a task of ``models.data.TASKS``; ``ValueError`` naming any other."""
    if task in LM_TASKS:
        return cast(Task, importlib.import_module("pipeline.tasks.lm"))
    from models.data import get_task

    get_task(task)
    return cast(Task, importlib.import_module("pipeline.tasks.glue"))


def declared_task(data: DataConfig) -> None:
    """Register the task spec ``data.spec`` declares (``models.data.register_task``; ``ValueError`` when
    it does not parse, is named other than ``data.task`` or redefines a task)."""
    if data.spec is None:
        return
    from models.data import TaskSpec, register_task

    spec = TaskSpec.from_dict(dict(data.spec))
    if spec.name != data.task:
        raise ValueError(f"data.spec.name={spec.name!r} but data.task={data.task!r}: a declared task is named by both")
    register_task(spec)
