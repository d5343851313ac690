"""Checks on a composed config that need more than types: run before any expensive work.

Each problem raises ``ConfigError`` naming the bad value and what is allowed.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.config import PipelineConfig, Stage, Task

FIELDS = ("FM32", "FM64", "FM128")
GLUE_FOLDERS = {"sst2": "SST-2", "mrpc": "MRPC", "rte": "RTE", "qnli": "QNLI", "stsb": "STS-B",
                "mnli": "MNLI", "cola": "CoLA"}


class ConfigError(ValueError):
    """A config value that cannot work; the message names it."""


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{name}={value}: must be > 0")


def validate(cfg: PipelineConfig) -> None:
    """Raise ``ConfigError`` for the first problem found."""
    m, d, f, p = cfg.model, cfg.data, cfg.finetune, cfg.protocol
    for name in ("hidden", "layers", "heads", "intermediate", "max_positions"):
        _positive(f"model.{name}", getattr(m, name))
    if m.hidden % m.heads:
        raise ConfigError(f"model.hidden={m.hidden} is not divisible by model.heads={m.heads}")
    _positive("data.max_length", d.max_length)
    max_positions = m.max_positions
    if m.checkpoint:
        config = Path(m.checkpoint).expanduser() / "config.json"
        if not config.is_file():
            raise ConfigError(f"model.checkpoint={m.checkpoint!r}: {config} does not exist")
        hf = json.loads(config.read_text())
        max_positions = int(hf.get("max_position_embeddings", hf.get("n_positions", max_positions)))
    if d.max_length > max_positions:
        raise ConfigError(
            f"data.max_length={d.max_length} exceeds the model's {max_positions} positions "
            f"(model={m.name}); use data.max_length<={max_positions}"
        )
    if d.task is Task.synthetic and d.synthetic.seq_len + 2 > d.max_length:
        raise ConfigError(
            f"data.synthetic.seq_len={d.synthetic.seq_len} needs data.max_length>={d.synthetic.seq_len + 2} "
            f"([CLS]/[SEP] included), got {d.max_length}"
        )
    if d.glue_dir and d.task.value in GLUE_FOLDERS and cfg.stage in (Stage.all, Stage.prepare):
        folder = Path(d.glue_dir) / GLUE_FOLDERS[d.task.value]
        if not folder.is_dir():
            raise ConfigError(f"data.glue_dir={d.glue_dir!r} has no {GLUE_FOLDERS[d.task.value]}/ folder for task {d.task.value}")
    for lam in f.lambdas:
        if lam < 0:
            raise ConfigError(f"finetune.lambdas contains {lam}: λ must be >= 0")
    for t in f.temperatures:
        _positive("finetune.temperatures entry", t)
    _positive("finetune.epochs", f.epochs)
    _positive("finetune.lr", f.lr)
    if not 0 <= f.theta_quantile <= 1:
        raise ConfigError(f"finetune.theta_quantile={f.theta_quantile}: must be in [0, 1]")
    if f.beta_factor < 1:
        raise ConfigError(f"finetune.beta_factor={f.beta_factor}: must be >= 1 so that β >= θ")
    if cfg.search.max_drop < 0:
        raise ConfigError(f"search.max_drop={cfg.search.max_drop}: must be >= 0 (accuracy points)")
    if p.field not in FIELDS:
        raise ConfigError(f"protocol.field={p.field!r}: expected one of {list(FIELDS)}")
    ring = {"FM32": 32, "FM64": 64, "FM128": 128}[p.field]
    if not 0 < p.fraction_bits < ring // 2:
        raise ConfigError(f"protocol.fraction_bits={p.fraction_bits}: must be in 1..{ring // 2 - 1} for {p.field}")
    _positive("protocol.connect_timeout_s", p.connect_timeout_s)
    _positive("protocol.recv_timeout_s", p.recv_timeout_s)
    _positive("secure_eval.num_examples", cfg.secure_eval.num_examples)
    if not cfg.secure_eval.methods:
        raise ConfigError("secure_eval.methods is empty: give at least one of none, bolt_we, prune, prune_reduce")
