"""One secure_eval method, input by input, resumable: every batch of inputs (one input with
``secure_eval.batch_size=1``) is a nested MLflow run under the method's run (tag ``kind=input``,
``examples`` = its dev indices) that logs, as the secure run goes, each layer's cost and token counts
with MLflow ``step`` = layer (``layer/time_s``, ``layer/time_s_lan``, ``layer/time_s_wan``,
``layer/comm_mb``, ``layer/tokens_entering``, ``layer/tokens_kept`` (batch means over its inputs) and
``layer/time_s_lan/{op}`` per op class),
then the batch's totals and its outcome (``input.json``: logits, tokens per layer, labels, reveals,
cost) and ends FINISHED. A progress bar counts layers over the whole method, with an ETA.

Resuming: an input run carries ``resume_key`` (``pipeline.identity.identity_key``: the stage's
config less ``secure_eval.num_examples`` and ``methods``, its upstream runs, the code version).
A relaunch, after a crash, a stop or with more ``num_examples``, takes the FINISHED input runs of
the same key and method from any earlier secure_eval run and runs only the others; the method run
says how many it reused and from where (``examples/reused``, tag ``inputs_reused_from``);
``tracking.resume=false`` runs every input again.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
from tqdm.auto import tqdm

from models import methods
from pipeline.config import Stage
from pipeline.context import StageContext
from pipeline.identity import RESUME_IGNORED, identity_key
from pipeline.tasks.common import session_spec
from pipeline.tracking import StageRun

INPUT_FILE = "input.json"
PER_RUN = ("layers/measured", "layers/total")   # a batch's figures that are not spread over its inputs
log = logging.getLogger(__name__)


@dataclass
class InputRecord:
    """A batch of inputs run securely: dev indices ``examples`` ``[B]``; per input its ``logits``
    ``[num_labels]``, tokens ``entering`` and ``kept`` per layer ``[L]``, its label; the batch's cost
    metrics (``CostReport.to_metrics`` and kernel counts, for the whole batch), the values revealed
    (``RevealRecord.to_dict``), who held each input, and the input run's id."""

    examples: list[int]
    logits: list[list[float]]
    entering: list[list[int]]
    kept: list[list[int]]
    labels: list[Any]
    cost: dict[str, float]
    reveals: list[dict[str, Any]]
    ownership: dict[str, str]
    run_id: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any], run_id: str) -> "InputRecord":
        return cls(**{**data, "run_id": run_id})


Compute = Callable[[Callable[[Any], None]], InputRecord]
"""Runs one batch securely, calling its argument after each layer with ``LayerDone``; the record
it returns has no ``run_id`` yet."""


def finished_records(ctx: StageContext, key: str, method: str) -> dict[tuple[int, ...], InputRecord]:
    """The FINISHED input runs of ``method`` under resume key ``key``, by their dev indices (the
    newest run of each batch)."""
    out: dict[tuple[int, ...], InputRecord] = {}
    for run in ctx.tracker.finished_units({"kind": "input", "method": method, "resume_key": key}):
        examples = tuple(int(i) for i in run.data.tags["examples"].split(","))
        if examples in out:
            continue
        path = ctx.tracker.artifact_location(run.info.run_id, INPUT_FILE)
        if not path.is_file():
            log.warning(f"input run {run.info.run_id} is FINISHED without {INPUT_FILE}; running its inputs again")
            continue
        out[examples] = InputRecord.from_dict(json.loads(path.read_text()), run.info.run_id)
    return out


def layer_metrics(done: Any) -> dict[str, float]:
    """One layer's figures (``LayerDone``): its cost (also per op class, LAN) and the batch's mean
    tokens entering and kept."""
    from protocols.meter import LAN, NETWORKS

    batch = len(done.entering)
    out = {"layer/time_s": done.cost.wall_s, "layer/comm_mb": done.cost.bytes_total / 2**20,
           "layer/tokens_entering": sum(done.entering) / batch, "layer/tokens_kept": sum(done.kept) / batch}
    out.update({f"layer/time_s_{net.name}": done.cost.network_time(net) for net in NETWORKS})
    out.update({f"layer/time_s_lan/{op}": part.network_time(LAN) for op, part in done.cost.by_op().items()})
    return out


def run_input(method_run: StageRun, method: str, key: str, examples: list[int], compute: Compute,
              progress: Optional[Any] = None) -> InputRecord:
    """Run one batch in its own input run (module docstring); ``progress``: a tqdm bar advanced by
    one per layer."""
    tags = {"kind": "input", "method": method, "resume_key": key, "examples": ",".join(map(str, examples))}
    with method_run.child(f"{method}/{tags['examples']}", tags) as run:
        def on_layer(done: Any) -> None:
            run.log_metrics(layer_metrics(done), step=done.layer)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(inputs=tags["examples"], layer=f"{done.layer + 1}/{done.layers}")

        record = compute(on_layer)
        record.run_id = run.run_id
        run.log_metrics(record.cost)
        run.log_dict({k: v for k, v in asdict(record).items() if k != "run_id"}, INPUT_FILE)
    return record


def _kernel_metrics(cost: Any) -> dict[str, float]:
    """Executions of SPU's matmul kernels: ``mpc/mmul_sv`` (secret × private), ``mpc/mmul_aa`` (secret × secret)."""
    return {f"mpc/{name}": float(count) for name, count in cost.kernel_counts().items() if name.startswith("mmul")}


def _run_batch(session: Any, spec: Any, request: Any, method: str, chunk: tuple[int, ...], options: dict[str, Any],
               on_layer: Any) -> InputRecord:
    """One batch of the client's inputs through the secure forward (``evaluate_request``), as a record."""
    from protocols.secure_model import evaluate_request

    before = len(session.reveals)
    results, cost, public = evaluate_request(session, spec, request, method, on_layer=on_layer, **options)
    ran = options.get("layers") or spec.layers
    cost = cost.with_layers_repeated(ran, spec.layers)          # unchanged when every layer ran
    missing = spec.layers - ran                                  # unpruned: every token enters every layer
    return InputRecord(examples=list(chunk), logits=[np.asarray(r.logits).reshape(-1).tolist() for r in results],
                       entering=[list(r.entering_per_layer) + r.entering_per_layer[-1:] * missing for r in results],
                       kept=[list(r.kept_per_layer) + r.kept_per_layer[-1:] * missing for r in results],
                       labels=list(public["labels"]),
                       cost={**cost.to_metrics(), **_kernel_metrics(cost), "layers/measured": float(ran),
                             "layers/total": float(spec.layers)},
                       reveals=[r.to_dict() for r in session.reveals[before:]], ownership=dict(session.ownership))


@contextmanager
def method_session(ctx: StageContext, method: str, checkpoint: Path, purpose: str = "client") -> Iterator[tuple[Any, Any, Path]]:
    """An open two-party session for ``method``: the server's party writes the release of the
    embedding tables (``ReleaseEmbeddings``) to a directory of the client's, ``…/<method>/<purpose>``
    under this stage run's outputs, and provides its own weights and thresholds from ``checkpoint``
    (``ServerRequest``). Yields the session, the public architecture (from the release) and the
    release directory, which the client's requests name."""
    from protocols.provision import ReleaseEmbeddings, ServerRequest, model_spec_of
    from protocols.session import TwoPartySession

    release = Path(ctx.cfg.paths.outputs) / "secure_eval" / ctx.run.run_id / method / purpose
    with TwoPartySession(session_spec(ctx.cfg)) as session:
        session.run_on("server", ReleaseEmbeddings(str(checkpoint), str(release)))
        session.provide("server", ServerRequest(str(checkpoint), methods.get(method).thresholds))
        yield session, model_spec_of(release), release


def run_method(ctx: StageContext, method_run: StageRun, method: str, checkpoint: Path, n: int,
               request_for: Callable[[tuple[int, ...], str], Any], **options: Any,
               ) -> tuple[dict[str, float], list[InputRecord], dict[str, Any]]:
    """``method`` on the client's first ``n`` inputs, ``secure_eval.batch_size`` to a program, each
    batch in its own input run (``run_input``; FINISHED batches of an earlier launch with the same
    ``resume_key`` are reused, not run). The server's party releases the embedding tables and loads
    ``checkpoint`` itself (``ServerRequest``); the client's party loads each batch itself from
    ``request_for(indices, release directory)`` (a ``ClientRequest`` or ``ContextRequest``);
    ``options``: ``evaluate_request``'s (criterion, reduce forms, non-linearity family, last_only, layers: with fewer
    than the model's, the cost is composed, ``CostReport.with_layers_repeated``, and metrics
    ``layers/measured`` < ``layers/total`` say so). Returns the cost per
    input (each batch's cost spread over its inputs, plus ``examples/reused``), the batches' records
    in input order and the leakage record (every value revealed, and who held each input). Also
    ``memory/peak_rss_mb/{client,server}``: each party process's peak RSS in this launch (MiB;
    with ``threads`` both are the one process)."""
    from protocols.secure_model import batch_ranges

    key = identity_key(ctx.cfg, Stage.secure_eval, upstream=ctx.tracker.lineage(ctx.upstream), code=ctx.tracker.code.tree,
                       ignored=RESUME_IGNORED[Stage.secure_eval])
    chunks = [tuple(chunk) for chunk in batch_ranges(n, ctx.cfg.secure_eval.batch_size)]
    earlier = finished_records(ctx, key, method) if ctx.cfg.tracking.resume else {}
    records = {k: v for k, v in earlier.items() if k in chunks}
    todo = [chunk for chunk in chunks if chunk not in records]
    method_run.set_tags({"resume_key": key, "inputs_reused_from": ",".join(r.run_id for r in records.values()) or "-"})
    if records:
        log.info(f"secure {method}: {sum(map(len, records))} input(s) FINISHED in an earlier launch, reused")
    if todo:
        with method_session(ctx, method, checkpoint) as (session, spec, release):
            ran = options.get("layers") or spec.layers
            with tqdm(total=len(todo) * ran, desc=f"secure {method}", unit="layer") as bar:
                for chunk in todo:
                    compute = partial(_run_batch, session, spec, request_for(chunk, str(release)), method, chunk, options)
                    records[chunk] = run_input(method_run, method, key, list(chunk), compute, bar)
            memory = {f"memory/peak_rss_mb/{owner}": mb for owner, mb in session.peak_rss_mb().items()}
    ordered = [records[chunk] for chunk in chunks]
    sums: dict[str, float] = defaultdict(float)
    for record in ordered:
        for name, value in record.cost.items():
            if name not in PER_RUN:
                sums[name] += value / n
    sums.update({name: ordered[0].cost[name] for name in PER_RUN if name in ordered[0].cost})
    sums["examples/reused"] = float(sum(len(chunk) for chunk in chunks if chunk not in todo))
    if todo:
        sums.update(memory)      # each party's peak RSS over this launch's inputs
    reveals = [{"examples": r.examples, **rev} for r in ordered for rev in r.reveals]
    return dict(sums), ordered, {"reveals": reveals, "ownership": ordered[0].ownership}
