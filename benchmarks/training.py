"""Fine-tuning steps per second by how batches are padded, side by side in one run.

    python -m pipeline stage=benchmark benchmark=training [benchmark.data=[sst2:128,imdb:512]]

Per ``task:max_length`` entry of ``benchmark.data`` (``limit`` training examples, tokenised with the
pretrained model's tokenizer) and per method (``none``: the unpruned baseline's steps; a method
with learned thresholds: a candidate's soft-mask steps), ``steps`` optimizer steps of ``batch_size``
examples in each padding mode: ``full`` (every batch at ``max_length``, as the secure run pads),
``trim`` (each batch cut to its own longest input) and ``buckets`` (batches drawn by length,
``models.training.LengthBatches``, then cut). Trimming decides nothing differently: importance
scores ignore padding rows (``tests/protocols/test_padding.py``). Reported: steps per second, the
mean padded length of a batch, and each mode's speed over ``full``. Times depend on the machine's
load; the padded lengths do not.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from benchmarks.common import BenchResult, LogMetrics, machine, markdown
from benchmarks.configs import TrainingBench

log = logging.getLogger(__name__)
MODES = ("full", "trim", "buckets")


def _examples(cfg: TrainingBench, entry: str) -> tuple[str, int, Any, Any]:
    """``(task, max_length, tokenised training subset, tokenizer directory)`` of one entry."""
    import importlib
    from pathlib import Path

    from transformers import AutoTokenizer

    from models.data import load_glue_raw, tokenize_split

    task, _, length = entry.partition(":")
    if not length.isdigit() or task not in cfg.sources:
        raise ValueError(f"benchmark.data entry {entry!r}: expected task:max_length with the task in "
                         f"benchmark.sources {sorted(cfg.sources)}")
    tokenizer_dir = Path(importlib.import_module(cfg.package).get_model_path())
    raw = load_glue_raw(task, cfg.sources[task], ("train",))["train"]
    raw = raw.shuffle(seed=0).select(range(min(cfg.limit, len(raw))))
    tokenised = tokenize_split(raw, AutoTokenizer.from_pretrained(str(tokenizer_dir)), int(length), "truncate", entry)
    return task, int(length), tokenised, tokenizer_dir


def _steps_per_second(model: Any, ds: Any, cfg: TrainingBench, mode: str, method: str) -> tuple[float, float]:
    """``(steps per second, mean padded length)`` of ``cfg.steps`` steps after one warm-up step."""
    import torch
    from torch.utils.data import DataLoader

    from models.training import LengthBatches, batch_lengths, trimmed

    g = torch.Generator().manual_seed(0)
    loader = (DataLoader(ds, batch_sampler=LengthBatches(batch_lengths(ds), cfg.batch_size, g)) if mode == "buckets"
              else DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, generator=g, drop_last=True))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    soft = method != "none"
    lengths: list[int] = []
    start = 0.0
    for i, raw in enumerate(loader):
        if i == 1:
            start = time.perf_counter()
        if i > cfg.steps:
            break
        b = trimmed(raw, mode != "full")
        lengths.append(int(b["input_ids"].shape[1]))
        out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], method=method,
                    mask_mode="soft" if soft else "hard", temperature=0.05)
        loss = torch.nn.functional.cross_entropy(out.logits, b["label"].long())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return cfg.steps / (time.perf_counter() - start), sum(lengths[1:]) / len(lengths[1:])


def run(cfg: TrainingBench, log_metrics: LogMetrics) -> BenchResult:
    """One row per (entry, method, padding mode), measured in one run."""
    import torch

    from models.weights import load_hf_bert

    torch.set_num_threads(cfg.threads)
    rows: list[dict[str, Any]] = []
    for entry in cfg.data:
        task, length, ds, tokenizer_dir = _examples(cfg, entry)
        for method in cfg.methods:
            full = None
            for mode in MODES:
                model, _ = load_hf_bert(tokenizer_dir, num_labels=2)
                rate, padded = _steps_per_second(model.train(), ds, cfg, mode, method)
                full = rate if mode == "full" else full
                row = {"task": task, "max_length": length, "method": method, "mode": mode, "steps_per_s": rate,
                       "padded_length": padded, "vs_full": rate / full if full else float("nan")}
                rows.append(row)
                log_metrics({f"{task}_{length}/{method}/{mode}/steps_per_s": rate,
                             f"{task}_{length}/{method}/{mode}/padded_length": padded})
                log.info(f"training {entry} {method} {mode}: {rate:.2f} steps/s, batches padded to {padded:.1f}")
    table = markdown([[r["task"], r["max_length"], r["method"], r["mode"], f"{r['steps_per_s']:.2f}",
                       f"{r['padded_length']:.1f}", f"{r['vs_full']:.2f}"] for r in rows],
                     ["task", "len", "method", "padding", "steps/s", "padded length", "× vs full"])
    report = (f"Fine-tuning steps per second by padding ({cfg.steps} steps of {cfg.batch_size}, MiniLM-L6, "
              f"{cfg.threads} threads; {machine()})\n\n{table}\n")
    return BenchResult(report, {f"{r['task']}_{r['max_length']}/{r['method']}/{r['mode']}/vs_full": r["vs_full"]
                                for r in rows}, rows)
