"""Hugging Face weight port (every key and shape checked), numpy export for the secure
engine, and checkpoint save/load (safetensors + config.json + thresholds.json)."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.bert import BertClassifier
from models.config import BertConfig, OpsConfig
from models.thresholds import ThresholdsArtifact, read_thresholds, write_thresholds

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "merges.txt", "vocab.json")
_IGNORED_SUFFIXES = ("position_ids", "attn.bias", "attn.masked_bias")


@dataclass
class PortReport:
    """What a port did: keys freshly initialised, keys in the file that were ignored,
    and whether ``bert.`` prefixes were added (``BertModel``-only checkpoint)."""

    initialised: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    added_prefix: str = ""

    def __str__(self) -> str:
        return (f"PortReport(added_prefix={self.added_prefix!r}, initialised={self.initialised}, "
                f"ignored={len(self.ignored)} keys)")


def read_state_dict(ckpt_dir: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of ``model.safetensors`` (preferred) or ``pytorch_model.bin`` in ``ckpt_dir``."""
    d = Path(ckpt_dir)
    if (d / "model.safetensors").is_file():
        from safetensors.torch import load_file
        return load_file(str(d / "model.safetensors"))
    if (d / "pytorch_model.bin").is_file():
        return torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{d}: no model.safetensors or pytorch_model.bin")


def port_state_dict(
    model: nn.Module, sd: dict[str, torch.Tensor], allow_missing: tuple[str, ...] = ()
) -> PortReport:
    """Copy ``sd`` into ``model`` by Hugging Face name, asserting every key and shape.

    Keys of the model starting with ``pruning.`` are never required. Model keys missing
    from ``sd`` raise ``KeyError`` unless they start with a prefix in ``allow_missing`` (then
    they keep their fresh initialisation, reported). A shape mismatch raises ``ValueError``
    naming the key and both shapes. Extra keys in ``sd`` are reported as ignored.
    """
    rep = PortReport()
    target = model.state_dict()
    if isinstance(model, BertClassifier) and not any(k.startswith("bert.") for k in sd):
        sd = {("bert." + k): v for k, v in sd.items()}
        rep.added_prefix = "bert."
    new: dict[str, torch.Tensor] = {}
    for k, t in target.items():
        if k.startswith("pruning."):
            new[k] = sd.get(k, t)
            continue
        if k not in sd:
            if any(k.startswith(p) for p in allow_missing):
                rep.initialised.append(k)
                new[k] = t
                continue
            raise KeyError(f"weight port: checkpoint lacks key {k!r} (expected shape {tuple(t.shape)})")
        v = sd[k]
        if tuple(v.shape) != tuple(t.shape):
            raise ValueError(f"weight port: key {k!r} has shape {tuple(v.shape)} in the checkpoint "
                             f"but {tuple(t.shape)} in the model")
        new[k] = v.to(t.dtype)
    rep.ignored = sorted(k for k in sd if k not in target and not k.endswith(_IGNORED_SUFFIXES))
    model.load_state_dict(new)
    return rep


def load_hf_bert(
    ckpt_dir: str | Path, num_labels: int | None = None, ops_cfg: OpsConfig | None = None
) -> tuple[BertClassifier, PortReport]:
    """Load a local HF BERT checkpoint (``BertForSequenceClassification`` or ``BertModel``).

    ``num_labels`` overrides the config; a checkpoint without ``classifier.*`` (or with a
    different label count) gets a fresh classifier, reported in ``PortReport.initialised``.
    Thresholds from a ``thresholds.json`` beside it are loaded when present.
    """
    d = Path(ckpt_dir)
    cfg = BertConfig.from_hf(json.loads((d / "config.json").read_text()), num_labels)
    model = BertClassifier(cfg, ops_cfg)
    sd = read_state_dict(d)
    if "classifier.weight" in sd and sd["classifier.weight"].shape[0] != cfg.num_labels:
        sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
    allow = ("classifier.",) + (("bert.pooler.",) if not any("pooler" in k for k in sd) else ())
    rep = port_state_dict(model, sd, allow_missing=allow)
    if (d / "thresholds.json").is_file():
        set_thresholds(model, read_thresholds(d / "thresholds.json", cfg.layers))
    return model, rep


def set_thresholds(model: nn.Module, a: ThresholdsArtifact) -> None:
    """Copy ``a.theta`` / ``a.beta``, ``a.criterion`` and ``a.reduce_forms`` into ``model.pruning``, and
    ``a.nonlinear`` (the family the model was trained with) into ``model.ops_cfg``."""
    with torch.no_grad():
        model.pruning.theta.copy_(torch.tensor(a.theta))
        model.pruning.beta.copy_(torch.tensor(a.beta))
    model.pruning.criterion = a.criterion
    model.pruning.reduce_forms = a.reduce_forms
    model.ops_cfg = replace(model.ops_cfg, nonlinear=a.nonlinear)


def get_thresholds(model: nn.Module, temperature: float = 1e-3, lambda_: float = 0.0) -> ThresholdsArtifact:
    """Artifact from ``model.pruning`` (θ clipped to ≥ 0, and ≤ 1 for the absolute criterion; β raised to ≥ θ)
    and the family of ``model.ops_cfg`` (what it trained with)."""
    criterion = model.pruning.criterion
    th = model.pruning.theta.detach().clamp(0, 1 if criterion == "absolute" else None)
    be = torch.maximum(model.pruning.beta.detach(), th)
    return ThresholdsArtifact(th.tolist(), be.tolist(), temperature, lambda_, criterion, model.pruning.reduce_forms,
                              model.ops_cfg.nonlinear)


def to_numpy_weights(model: nn.Module) -> dict[str, np.ndarray]:
    """HF-named float32 numpy weights (torch layout; GPT-2 Conv1D ``[in, out]``), no ``pruning.*``."""
    return {k: v.detach().cpu().to(torch.float32).numpy().copy()
            for k, v in model.state_dict().items() if not k.startswith("pruning.")}


def save_checkpoint(
    model: nn.Module, out_dir: str | Path, thresholds: ThresholdsArtifact | None = None,
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """Write ``model.safetensors`` (HF names), ``config.json``, optional ``thresholds.json``
    and the tokenizer files of ``tokenizer_dir`` into ``out_dir``; returns ``out_dir``."""
    from safetensors.torch import save_file
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()
          if not k.startswith("pruning.")}
    if "lm_head.weight" in sd and "transformer.wte.weight" in sd:
        sd["lm_head.weight"] = sd["lm_head.weight"].clone()
    save_file(sd, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(model.cfg.to_hf(), indent=2) + "\n")  # type: ignore[union-attr]
    if thresholds is not None:
        write_thresholds(d / "thresholds.json", thresholds)
    if tokenizer_dir is not None:
        for f in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / f).is_file():
                shutil.copy(Path(tokenizer_dir) / f, d / f)
    return d


def load_checkpoint(
    ckpt_dir: str | Path, ops_cfg: OpsConfig | None = None
) -> tuple[BertClassifier, ThresholdsArtifact | None]:
    """Inverse of :func:`save_checkpoint` for BERT: strict port (no fresh keys)."""
    d = Path(ckpt_dir)
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"checkpoint directory {str(ckpt_dir)!r} has no config.json (expected a fine-tuned "
                                "checkpoint, e.g. outputs/mlartifacts/<experiment>/<run id>/artifacts/checkpoint)")
    cfg = BertConfig.from_hf(json.loads((d / "config.json").read_text()))
    model = BertClassifier(cfg, ops_cfg)
    port_state_dict(model, read_state_dict(d))
    th = read_thresholds(d / "thresholds.json", cfg.layers) if (d / "thresholds.json").is_file() else None
    if th is not None:
        set_thresholds(model, th)
    return model, th


def load_hf_gpt2(ckpt_dir: str | Path, ops_cfg: OpsConfig | None = None) -> tuple[nn.Module, PortReport]:
    """Load a local HF ``GPT2LMHeadModel`` checkpoint (``lm_head.weight`` may be absent: tied);
    thresholds from a ``thresholds.json`` beside it are loaded when present."""
    from models.config import GPT2Config
    from models.gpt2 import GPT2LM

    d = Path(ckpt_dir)
    model = GPT2LM(GPT2Config.from_hf(json.loads((d / "config.json").read_text())), ops_cfg)
    sd = read_state_dict(d)
    if not any(k.startswith("transformer.") for k in sd):
        sd = {"transformer." + k: v for k, v in sd.items()}
    sd.setdefault("lm_head.weight", sd.get("transformer.wte.weight", torch.empty(0)))
    report = port_state_dict(model, sd)
    if (d / "thresholds.json").is_file():
        set_thresholds(model, read_thresholds(d / "thresholds.json", model.cfg.layers))
    return model, report
