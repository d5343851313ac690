"""finetune: the unpruned baseline, then one crypto-aware pruning candidate per (λ, T).

Each model is a nested MLflow run (tag ``kind=candidate``) holding its checkpoint,
thresholds and hard-mask dev metrics; the search stage chooses among them.
"""
from __future__ import annotations

import copy
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig, Task
from pipeline.stages import StageContext
from pipeline.stages.common import DatasetManifest, curated_params


def params(cfg: PipelineConfig) -> dict[str, Any]:
    f = cfg.finetune
    return {**curated_params(cfg), "epochs": f.epochs, "lr": f.lr, "threshold_lr": f.threshold_lr,
            "prune_epochs": f.prune_epochs, "prune_lr": f.prune_lr, "lambdas": f.lambdas, "temperatures": f.temperatures, "hard_epochs": f.hard_epochs,
            "ops": f.ops.value, "fixed_point": f.fixed_point, "seed": f.seed, "batch_size": f.batch_size,
            **({"max_steps": f.max_steps, "max_minutes": f.max_minutes, "warmup_ratio": f.warmup_ratio,
                "eval_blocks": f.eval_blocks} if cfg.data.task is Task.wikitext2 else {})}


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


def run(ctx: StageContext) -> None:
    from models.training import FinetuneConfig, finetune, set_seed
    from models.weights import save_checkpoint

    import torch

    cfg, f = ctx.cfg, ctx.cfg.finetune
    if cfg.data.task is Task.wikitext2:
        from pipeline.stages import lm_task

        return lm_task.finetune(ctx)
    torch.set_num_threads(f.torch_threads)
    manifest = DatasetManifest.from_run(ctx.tracker, ctx.upstream["prepare"])
    train, dev = manifest.load("train"), manifest.load("dev")
    set_seed(f.seed)
    base_model, port_report = _initial_model(cfg, manifest)
    ctx.run.set_tags({"weights": port_report[:250]})
    base_cfg = FinetuneConfig(
        epochs=f.epochs, batch_size=f.batch_size, lr=f.lr, threshold_lr=f.threshold_lr,
        hard_epochs=f.hard_epochs, method="none", ops_mode=f.ops.value, fixed_point=f.fixed_point,
        seed=f.seed, max_steps=f.max_steps, patience=f.patience, theta_quantile=f.theta_quantile,
        beta_factor=f.beta_factor,
    )
    plans = [("baseline", base_cfg, 0.0, 0.0)]
    plans += [(f"lambda_{lam:g}_T_{t:g}",
               replace(base_cfg, method="prune", lambda_=lam, temperature=t, epochs=f.prune_epochs, lr=f.prune_lr),
               lam, t) for lam in f.lambdas for t in f.temperatures]
    for name, train_cfg, lam, temp in plans:
        model = base_model if train_cfg.method == "none" else copy.deepcopy(base_model)
        tags = {"kind": "candidate", "method": train_cfg.method, "lambda": lam, "temperature": temp,
                "upstream_prepare": ctx.upstream["prepare"]}
        with ctx.run.child(name, tags) as child:
            child.log_params({"lambda": lam, "temperature": temp, "method": train_cfg.method})
            result = finetune(model, train, dev, manifest.task, train_cfg, log_metrics=child.log_metrics)
            metrics = result.eval.flat()
            metrics["acc/dev"] = result.eval.metrics["metric"]
            metrics["kept_tokens/mean"] = sum(result.eval.kept_tokens) / len(result.eval.kept_tokens)
            child.log_metrics(metrics)
            with tempfile.TemporaryDirectory() as tmp:
                thresholds = result.thresholds if train_cfg.method != "none" else None
                save_checkpoint(model, Path(tmp) / "checkpoint", thresholds, tokenizer_dir=manifest.tokenizer_dir)
                child.log_artifact(Path(tmp) / "checkpoint", "checkpoint")
                if thresholds is not None:
                    child.log_dict(thresholds.to_dict(), "thresholds.json")
        ctx.run.log_metrics({f"acc/{name}": metrics["acc/dev"]})
