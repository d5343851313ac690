"""The classification tasks' secure_eval stage: for every method a nested run (tag
``kind=method``) logs the plaintext-emulated dev metric of that method on the whole dev set
(torch, hard masks, the secure path's approximations; evaluated once, by the search stage, and
copied from its run), the secure run's agreement with the JAX
plaintext reference (run one input at a time) on the first ``secure_eval.num_examples`` dev
inputs, the cost meter's figures per input (with ``secure_eval.batch_size`` > 1, inputs run
``batch_size`` to a program and each batch's cost is spread over its inputs), SPU's matmul
kernel counts, the kept tokens per layer and the leakage record (every value revealed, and who
holds each input). The unpruned methods run the search's baseline, the pruned ones its pick.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pipeline.config import Method, Stage
from pipeline.context import StageContext
from pipeline.tasks.common import DatasetManifest, Selection, curated_params, session_spec, thresholds_of
from pipeline.tasks.secure_inputs import InputRecord, finished_records, run_input
from pipeline.tracking import StageRun, resume_key

BASELINE_METHODS = (Method.none, Method.bolt_we)
_DATA_HELD_BY = {"threads": "one process holds both parties (threads): it loads the checkpoint and the dev rows",
                 "processes": "each party process loads its own data (server: checkpoint, client: dev rows)",
                 "remote": "each party daemon loads its own data on its own host (server: checkpoint, client: dev rows)"}
log = logging.getLogger(__name__)


def _load(ctx: StageContext, run_id: str) -> tuple[Any, Any, dict[str, np.ndarray]]:
    """Torch model, its transformer spec and its numpy weights from a candidate run."""
    from models.weights import load_checkpoint, to_numpy_weights
    from protocols.model_spec import TransformerSpec

    ckpt = ctx.tracker.artifact_location(run_id, "checkpoint")   # read in place from a local store
    model, _ = load_checkpoint(ckpt)
    spec = TransformerSpec.from_hf_config(json.loads((ckpt / "config.json").read_text()))
    return model, spec, to_numpy_weights(model)


def _run_batch(session: Any, spec: Any, request: Any, method: str, thresholds: Any, chunk: tuple[int, ...],
               on_layer: Any) -> InputRecord:
    """One batch of dev inputs through the secure forward (``evaluate_request``), as a record."""
    from protocols.secure_model import evaluate_request

    before = len(session.reveals)
    results, cost, public = evaluate_request(session, spec, request, method, criterion=thresholds.criterion,
                                             reduce_forms=thresholds.reduce_forms, on_layer=on_layer)
    return InputRecord(examples=list(chunk), logits=[r.logits.tolist() for r in results],
                       entering=[list(r.entering_per_layer) for r in results],
                       kept=[list(r.kept_per_layer) for r in results], labels=list(public["labels"]),
                       cost={**cost.to_metrics(), **_kernel_metrics(cost)},
                       reveals=[r.to_dict() for r in session.reveals[before:]], ownership=dict(session.ownership))


def _secure_step(ctx: StageContext, method_run: StageRun, method: Method, checkpoint: Path,
                 manifest: DatasetManifest, n: int, thresholds: Any) -> tuple[dict[str, float], list[InputRecord], dict[str, Any]]:
    """The two-party run, input by input (``pipeline.tasks.secure_inputs``: one input run per batch,
    per-layer metrics, progress, and the FINISHED batches of an earlier launch reused): the server's
    party loads the checkpoint, the client's party the tokenised dev rows (with the transports
    ``processes`` and ``remote`` this process opens neither; with ``threads`` it loads both, as the
    one process holding both parties); ``thresholds``' public criterion and reduce forms fix the
    programs. Returns the cost per input, the batches' records (in dev order) and the leakage record."""
    from protocols.provision import ClientRequest, ReleaseEmbeddings, ServerRequest, model_spec_of
    from protocols.secure_model import batch_ranges
    from protocols.session import TwoPartySession

    key = resume_key(ctx.cfg, Stage.secure_eval, ctx.upstream, ctx.tracker.code)
    chunks = [tuple(chunk) for chunk in batch_ranges(n, ctx.cfg.secure_eval.batch_size)]
    earlier = finished_records(ctx, key, method.value) if ctx.cfg.tracking.resume else {}
    records = {k: v for k, v in earlier.items() if k in chunks}
    todo = [chunk for chunk in chunks if chunk not in records]
    method_run.set_tags({"resume_key": key, "inputs_reused_from": ",".join(r.run_id for r in records.values()) or "-"})
    if records:
        log.info(f"secure {method.value}: {sum(map(len, records))} input(s) FINISHED in an earlier launch, reused")
    if todo:
        release = Path(ctx.cfg.paths.outputs) / "secure_eval" / ctx.run.run_id / method.value / "client"
        with TwoPartySession(session_spec(ctx.cfg)) as session:
            session.run_on("server", ReleaseEmbeddings(str(checkpoint), str(release)))
            spec = model_spec_of(release)            # the public architecture, from the release
            session.provide("server", ServerRequest(str(checkpoint), method.value))
            with tqdm(total=len(todo) * spec.layers, desc=f"secure {method.value}", unit="layer") as bar:
                for chunk in todo:
                    request = ClientRequest(manifest.splits["dev"], chunk, str(release))
                    records[chunk] = run_input(method_run, method.value, key, list(chunk), partial(
                        _run_batch, session, spec, request, method.value, thresholds, chunk), bar)
    ordered = [records[chunk] for chunk in chunks]
    sums: dict[str, float] = defaultdict(float)
    for record in ordered:
        for name, value in record.cost.items():
            sums[name] += value / n          # the batch's cost, spread over its inputs
    sums["examples/reused"] = float(sum(len(chunk) for chunk in chunks if chunk not in todo))
    reveals = [{"examples": r.examples, **rev} for r in ordered for rev in r.reveals]
    return dict(sums), ordered, {"reveals": reveals, "ownership": ordered[0].ownership}


def _evaluate_method(ctx: StageContext, method_run: StageRun, method: Method, run_id: str, thresholds: Any, manifest: DatasetManifest,
                     dev: Any, searched: dict[str, float]) -> tuple[dict[str, float], dict[str, Any]]:
    """The secure run's cost, accuracy and schedule (``_secure_step``), then the plaintext reference
    step, outside the two-party run and in this process (it needs both parties' data): the JAX
    plaintext twin's agreement one input at a time and the torch emulation's schedule on the same
    inputs; the emulation's whole-dev metric and schedule come from the search run (``dev``).
    Returns the metrics and the leakage record."""
    from models.config import OpsConfig
    from models.training import evaluate
    from protocols.model_spec import PruningSpec
    from protocols.secure_model import plaintext_forward

    n = min(ctx.cfg.secure_eval.num_examples, len(dev))
    metrics, records, leakage = _secure_step(ctx, method_run, method, ctx.tracker.artifact_location(run_id, "checkpoint"),
                                             manifest, n, thresholds)
    logits = [np.asarray(row) for r in records for row in r.logits]
    labels = [label for r in records for label in r.labels]
    entering = [row for r in records for row in r.entering]
    model, spec, weights = _load(ctx, run_id)          # reference step from here on
    pruning = PruningSpec(method=method.value, theta=tuple(thresholds.theta), beta=tuple(thresholds.beta),
                          criterion=thresholds.criterion, reduce_forms=thresholds.reduce_forms)
    agree = correct = 0
    for i, (result, label) in enumerate(zip(logits, labels)):
        example = tuple(np.asarray(dev[i][k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
        pred = int(np.argmax(result))
        agree += pred == int(np.argmax(plaintext_forward(spec, weights, *example, pruning).logits))
        correct += pred == int(label)
    metrics.update({"acc/dev": searched[f"dev/{method.value}/metric"], "acc/secure": 100.0 * correct / n,
                    "agree/secure": 100.0 * agree / n, "examples/secure": n, "batch_size": float(ctx.cfg.secure_eval.batch_size)})
    mean_kept = np.mean(np.asarray(entering, dtype=float), axis=0)
    metrics.update({f"kept_tokens/layer_{i}": float(k) for i, k in enumerate(mean_kept)})
    prefix = f"dev/{method.value}/entering/layer_"                  # tokens entering each layer, whole dev
    metrics.update({f"kept_tokens_emulated/layer_{k[len(prefix):]}": v for k, v in searched.items() if k.startswith(prefix)})
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
    searched = ctx.tracker.run_metrics(search_id)
    if "dev/none/metric" not in searched:
        raise RuntimeError(f"search run {search_id} has no dev metrics (written before the search evaluated dev); "
                           "re-run stage=search")
    for method in ctx.cfg.secure_eval.methods:
        run_id = selection.baseline_run_id if method in BASELINE_METHODS else selection.selected_run_id
        tags = {"kind": "method", "method": method.value, "checkpoint_run": run_id}
        with ctx.run.child(method.value, tags) as child:
            child.log_params({**curated_params(ctx.cfg), "method": method.value})
            child.set_tags({"data_held_by": _DATA_HELD_BY[ctx.cfg.protocol.transport.value],
                            "reference_step": "plaintext twin and torch emulation, in the coordinator after the "
                                              "two-party run (they need both parties' data)"})
            metrics, leakage = _evaluate_method(ctx, child, method, run_id, thresholds, manifest, dev, searched)
            child.log_metrics(metrics)
            child.log_dict({"declared": "per layer: kept token count per input (and high-group size for "
                                        "prune_reduce); final logits to the client", **leakage}, "leakage.json")
        ctx.run.log_metrics({f"time_s/lan/{method.value}": metrics["time_s/lan"],
                             f"comm_mb/{method.value}": metrics["comm_mb/total"]})
