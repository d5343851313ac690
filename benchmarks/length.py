"""Thresholds across input lengths: accuracy and kept tokens of fine-tuned checkpoints on data of
another length (plaintext torch, hard masks, the secure run's approximations; no MPC).

    python -m pipeline stage=benchmark benchmark=length +benchmark.checkpoints.unpruned=A +benchmark.checkpoints.relative=B

Each ``task:max_length`` entry of ``benchmark.data`` is tokenised with the reference checkpoint's
tokenizer, ``limit`` examples (dev shuffled with seed 0; IMDB: test). The reference runs ``none``
and ``bolt_we``; every other checkpoint ``prune`` with its own thresholds and criterion. Per cell:
the task metric, its difference from the reference's ``none`` on the same examples, and the mean
tokens entering each layer. The attention-average score ``S`` has mean ``1/c`` over ``c`` real
tokens, so an ``absolute`` θ tuned on short inputs removes most of a long one; a ``relative`` θ
(``c·S``) should keep a similar share at both lengths.
"""
from __future__ import annotations

import logging
from pathlib import Path

from benchmarks.common import BenchResult, LogMetrics, markdown
from benchmarks.configs import LengthBench
from models import methods

log = logging.getLogger(__name__)


def _examples(cfg: LengthBench, entry: str, tokenizer_dir: Path) -> tuple[str, int, object]:
    """``(task, max_length, tokenised subset)`` of one ``task:max_length`` entry."""
    from transformers import AutoTokenizer

    from models.data import load_glue_raw, tokenize_split

    task, _, length = entry.partition(":")
    if not length.isdigit() or task not in cfg.sources:
        raise ValueError(f"benchmark.data entry {entry!r}: expected task:max_length with the task in "
                         f"benchmark.sources {sorted(cfg.sources)}")
    raw = load_glue_raw(task, cfg.sources[task], ("dev",))["dev"]
    raw = raw.shuffle(seed=0).select(range(min(cfg.limit, len(raw))))
    tokenised = tokenize_split(raw, AutoTokenizer.from_pretrained(str(tokenizer_dir)), int(length), "truncate", entry)
    return task, int(length), tokenised


def run(cfg: LengthBench, log_metrics: LogMetrics) -> BenchResult:
    """One row per (data entry, checkpoint, method), measured in one run."""
    import torch

    from models.config import OpsConfig
    from models.training import evaluate
    from models.weights import load_checkpoint

    if cfg.reference not in cfg.checkpoints:
        raise ValueError(f"benchmark.reference={cfg.reference!r} is not a key of benchmark.checkpoints {sorted(cfg.checkpoints)}")
    models = {label: load_checkpoint(path)[0] for label, path in cfg.checkpoints.items()}
    torch.set_num_threads(1)
    rows: list[dict[str, object]] = []
    for entry in cfg.data:
        task, length, data = _examples(cfg, entry, Path(cfg.checkpoints[cfg.reference]))
        plan = [(cfg.reference, m.name) for m in methods.registered() if m.checkpoint == "baseline"]
        plan += [(label, cfg.method) for label in cfg.checkpoints if label != cfg.reference]
        reference_metric = None
        for label, method in plan:
            ops = OpsConfig("emulated", nonlinear=models[label].ops_cfg.nonlinear)   # the family it trained with
            ev = evaluate(models[label], data, task, method, cfg.batch_size, ops_cfg=ops)
            entering = [float(ev.n0), *ev.kept_tokens[:-1]]
            metric = ev.metrics["metric"]
            reference_metric = metric if reference_metric is None else reference_metric
            criterion = models[label].pruning.criterion if methods.get(method).thresholds else "—"
            row = {"data": entry, "checkpoint": label, "method": method, "criterion": criterion, "metric": metric,
                   "delta": metric - reference_metric, "entering": entering}
            rows.append(row)
            key = f"{task}_{length}/{label}/{method}"
            log_metrics({f"{key}/metric": metric, f"{key}/delta": metric - reference_metric,
                         **{f"{key}/entering/layer_{i}": k for i, k in enumerate(entering)}})
            log.info(f"{entry} {label} {method}: {metric:.2f} ({metric - reference_metric:+.2f}), entering {entering}")
    cells = [[r["data"], r["checkpoint"], r["method"], r["criterion"], f"{r['metric']:.2f}", f"{r['delta']:+.2f}",
              "-".join(f"{k:.1f}" for k in r["entering"])] for r in rows]  # type: ignore[attr-defined]
    table = markdown(cells, ["data", "checkpoint", "method", "criterion", "metric", "Δ vs unpruned",
                             "tokens entering each layer"])
    text = (f"{cfg.limit} examples per data entry (seed 0); plaintext, emulated ops, hard masks; measured\n\n{table}\n")
    return BenchResult(text, {}, rows)
