"""Results records: the runs a report read, committed to the repository, and brought back into a store.

A record is a directory (``results/<report name>/``) holding ``record.json`` (what wrote it, the
machine, the experiments) and ``runs/<run id>.json``, one readable JSON file per run: experiment,
status, start and end, parent, params, tags (``code_tree``, ``git_sha`` among them), every metric
with its history (``[step, value, timestamp]``, e.g. per layer or per input), and the small JSON/CSV
artifacts the reports and the resume logic read (``RECORDED_ARTIFACTS``). Checkpoints stay out (their
size): a stage run of the record can be read, not reused; the chain trains them again from the same
config and code.

``import_record`` brings a record into a store with MLflow's client APIs: each run is created again
(MLflow gives it a new id; tag ``recorded_run_id`` keeps the record's), with its params, metric
histories, tags (parent and id-valued tags mapped to the new ids) and artifacts, then terminated
with its recorded status and end time. Importing twice adds nothing. A relaunch then finds the
record's FINISHED units by their identity (``pipeline.identity``), e.g. a secure_eval batch by its
``resume_key``, and runs only what is missing.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from benchmarks.common import machine_facts
from pipeline.tracking import RECORDED

RECORD = "record.json"
RECORDED_ARTIFACTS = ("input.json", "leakage.json", "pareto.csv", "thresholds.json", "dataset.json", "results.md",
                      "rows.json")
"""Artifacts a record carries (small; what reports and resume read)."""
KEPT_MLFLOW_TAGS = (MLFLOW_PARENT_RUN_ID, "mlflow.runName")


def _metrics(client: MlflowClient, run: Any) -> dict[str, list[list[float]]]:
    """Every metric's history ``[[step, value, timestamp ms], ...]``, by name."""
    return {name: [[m.step, m.value, m.timestamp] for m in sorted(client.get_metric_history(run.info.run_id, name),
                                                                  key=lambda m: (m.step, m.timestamp))]
            for name in sorted(run.data.metrics)}


def _artifacts(client: MlflowClient, run_id: str, tmp: Path) -> dict[str, str]:
    """The ``RECORDED_ARTIFACTS`` a run has (anywhere in its artifact tree), as text by path."""
    out: dict[str, str] = {}
    pending = [""]
    while pending:
        for item in client.list_artifacts(run_id, pending.pop() or None):
            if item.is_dir:
                pending.append(item.path)
            elif Path(item.path).name in RECORDED_ARTIFACTS:
                out[item.path] = Path(client.download_artifacts(run_id, item.path, str(tmp))).read_text()
    return out


def run_record(client: MlflowClient, run_id: str, experiment: str, tmp: Path,
               recorded: Mapping[str, str]) -> dict[str, Any]:
    """One run as a JSON-able dict (module docstring). ``recorded`` maps the store's ids of runs
    brought in from a record to their recorded ids, so that a run and the tags naming runs (its
    parent, its upstream runs) are written as the record first wrote them."""
    run = client.get_run(run_id)
    tags = {k: recorded.get(v, v) for k, v in sorted(run.data.tags.items())
            if (not k.startswith("mlflow.") or k in KEPT_MLFLOW_TAGS) and k != RECORDED}
    return {"run_id": recorded.get(run_id, run_id), "experiment": experiment, "status": run.info.status,
            "start_time": run.info.start_time, "end_time": run.info.end_time, "params": dict(sorted(run.data.params.items())),
            "tags": tags, "metrics": _metrics(client, run), "artifacts": _artifacts(client, run_id, tmp)}


def write_record(out: Path, runs: Iterable[dict[str, Any]], about: Mapping[str, Any],
                 recorded: Iterable[str] = ()) -> Path:
    """Write ``runs`` (``run_record`` dicts) and ``about`` (command, experiments, ...) to ``out``; the
    runs of an earlier record there are kept unless rewritten (a record grows over launches). A run
    of ``recorded`` (brought in from a record) whose file is already there is left as recorded, and
    when every run is, ``record.json`` keeps the machine that measured them."""
    (out / "runs").mkdir(parents=True, exist_ok=True)
    keep, ids, measured = set(recorded), [], False
    for run in runs:
        path = out / "runs" / f"{run['run_id']}.json"
        ids.append(run["run_id"])
        if run["run_id"] in keep and path.is_file():
            continue
        path.write_text(json.dumps(run, indent=1, sort_keys=True) + "\n")
        measured = measured or run["run_id"] not in keep
    earlier = json.loads((out / RECORD).read_text()) if (out / RECORD).is_file() else {}
    machine = machine_facts() if measured or "machine" not in earlier else earlier["machine"]
    (out / RECORD).write_text(json.dumps({**about, "machine": machine, "runs_written": len(ids)}, indent=1) + "\n")
    return out


def read_runs(record: Path) -> list[dict[str, Any]]:
    """The runs of a record, parents before children; ``FileNotFoundError`` naming a missing record."""
    folder = Path(record) / "runs"
    if not folder.is_dir():
        raise FileNotFoundError(f"{record} is not a results record (no runs/ folder): write one with "
                                "`python -m pipeline stage=report report.publish=true`")
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    depth = {r["run_id"]: 0 for r in runs}
    parents = {r["run_id"]: r["tags"].get(MLFLOW_PARENT_RUN_ID) for r in runs}
    for run_id in depth:
        parent = parents[run_id]
        while parent in parents:
            depth[run_id] += 1
            parent = parents[parent]
    return sorted(runs, key=lambda r: (depth[r["run_id"]], r["start_time"] or 0))


def import_record(client: MlflowClient, record: Path) -> dict[str, str]:
    """Bring the runs of ``record`` into ``client``'s store (module docstring); returns record id → store
    id for every run of the record (those imported earlier included)."""
    existing = {r.data.tags[RECORDED]: r.info.run_id for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()], f"tags.{RECORDED} != ''", max_results=50_000)}
    ids = dict(existing)
    for run in read_runs(record):
        if run["run_id"] not in ids:
            ids[run["run_id"]] = _create(client, run, ids)
    return ids


def _create(client: MlflowClient, run: dict[str, Any], ids: Mapping[str, str]) -> str:
    """One recorded run created in the store; tags naming recorded runs point at their new ids."""
    experiment = client.get_experiment_by_name(run["experiment"])
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(run["experiment"])
    tags = {k: ids.get(v, v) for k, v in run["tags"].items()} | {RECORDED: run["run_id"]}
    new = client.create_run(experiment_id, start_time=run["start_time"], tags=tags,
                            run_name=run["tags"].get("mlflow.runName"))
    run_id = new.info.run_id
    metrics = [Metric(name, value, int(ts), int(step)) for name, history in run["metrics"].items()
               for step, value, ts in history]
    params = [Param(k, v) for k, v in run["params"].items()]
    for start in range(0, len(metrics), 1000):               # MLflow's batch limits
        client.log_batch(run_id, metrics=metrics[start:start + 1000])
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start:start + 100])
    for path, text in run["artifacts"].items():
        client.log_text(run_id, text, path)
    client.set_terminated(run_id, run["status"], end_time=run["end_time"])
    return run_id
