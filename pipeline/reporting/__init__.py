"""Reading the MLflow runs the paper's tables and figures are made of.

The layout queried is docs/ARCHITECTURE.md "MLflow run layout": ``secure_eval`` stage runs
with nested ``kind=method`` runs, ``finetune`` stage runs with nested ``kind=candidate``
runs, ``search`` stage runs with a ``pareto.csv`` artifact. Only FINISHED runs whose stage
(parent) run is FINISHED too are read. Loaders return tidy frames: one row per run,
``model, task, max_length, method, run_id, parent_run_id, experiment, start_time`` and the
run's metrics under their MLflow names.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Mapping

import pandas as pd
import yaml

from models.approx import DEFAULT_FAMILY
from pipeline.config import PROJECT_ROOT

if TYPE_CHECKING:
    from pipeline.tracking import Tracker

PARENT = "tags.mlflow.parentRunId"
KEYS = ("model", "task", "max_length")
# absent on fine-tuning candidates' own params (protocol) or on runs from before non-linearity
# families, which all ran BOLT's forms (nonlinear): filled with these
OPTIONAL_KEYS = {"protocol": "—", "nonlinear": DEFAULT_FAMILY}


class ReportDataMissing(RuntimeError):
    """A required table has no FINISHED runs; the message names the experiment to launch."""


def launch_hint(experiment: str) -> str:
    """The command that fills MLflow experiment ``experiment`` (from conf/experiment/*.yaml)."""
    for path in sorted((PROJECT_ROOT / "conf" / "experiment").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text()) or {}
        if (spec.get("tracking") or {}).get("experiment") == experiment:
            sweep = bool(((spec.get("hydra") or {}).get("sweeper") or {}).get("params"))
            return f"python -m pipeline {'-m ' if sweep else ''}experiment={path.stem}"
    return f"python -m pipeline tracking.experiment={experiment}"


def experiment_ids(tracker: "Tracker", names: Iterable[str]) -> dict[str, str]:
    """Experiment id per name; names that do not exist are left out."""
    found: dict[str, str] = {}
    for name in names:
        exp = tracker.client.get_experiment_by_name(name)
        if exp is not None:
            found[name] = exp.experiment_id
    return found


def _search(tracker: "Tracker", ids: Mapping[str, str], filter_string: str) -> pd.DataFrame:
    if not ids:
        return pd.DataFrame()
    runs = tracker.runs_frame(list(ids.values()), filter_string)
    if runs.empty:
        return runs
    names = {v: k for k, v in ids.items()}
    runs["experiment"] = runs["experiment_id"].map(names)
    return runs


def _finished_children(tracker: "Tracker", ids: Mapping[str, str], stage: str,
                       kind: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(children, parents): FINISHED ``kind`` runs under FINISHED ``stage`` runs."""
    done = "attributes.status = 'FINISHED'"
    parents = _search(tracker, ids, f"tags.stage = '{stage}' and {done}")
    children = _search(tracker, ids, f"tags.kind = '{kind}' and {done}")
    if parents.empty or children.empty or PARENT not in children:
        return pd.DataFrame(), parents
    return children[children[PARENT].isin(set(parents["run_id"]))].copy(), parents


def _tidy(children: pd.DataFrame, parents: pd.DataFrame, numeric_tags: tuple[str, ...] = ()) -> pd.DataFrame:
    """Flat columns; run keys (model, task, max_length) from the run, else from its parent."""
    by_parent = parents.set_index("run_id")
    out = pd.DataFrame({"run_id": children["run_id"], "parent_run_id": children[PARENT],
                        "experiment": children["experiment"], "start_time": children["start_time"]})
    for key in KEYS:
        own = children[f"params.{key}"] if f"params.{key}" in children else pd.Series(None, index=children.index)
        inherited = children[PARENT].map(by_parent[f"params.{key}"]) if f"params.{key}" in by_parent else None
        out[key] = own.fillna(inherited) if inherited is not None else own
    for key, missing in OPTIONAL_KEYS.items():
        own = children.get(f"params.{key}", pd.Series(None, index=children.index, dtype=object))
        parent = children[PARENT].map(by_parent[f"params.{key}"]) if f"params.{key}" in by_parent else None
        out[key] = (own.fillna(parent) if parent is not None else own).fillna(missing)
    out["method"] = children["tags.method"] if "tags.method" in children else None
    for tag in numeric_tags:
        out[tag] = pd.to_numeric(children[f"tags.{tag}"], errors="coerce") if f"tags.{tag}" in children else None
    out = out.dropna(subset=list(KEYS) + ["method"])
    out["max_length"] = out["max_length"].astype(int)
    metrics = children.loc[out.index, [c for c in children if c.startswith("metrics.")]]
    metrics.columns = [c[len("metrics."):] for c in metrics.columns]
    return pd.concat([out, metrics], axis=1).reset_index(drop=True)


def method_runs(tracker: "Tracker", ids: Mapping[str, str]) -> pd.DataFrame:
    """Every FINISHED secure_eval method run (tag kind=method) under a FINISHED stage run."""
    children, parents = _finished_children(tracker, ids, "secure_eval", "method")
    return pd.DataFrame() if children.empty else _tidy(children, parents)


def candidate_runs(tracker: "Tracker", ids: Mapping[str, str]) -> pd.DataFrame:
    """Every FINISHED fine-tuning candidate (tag kind=candidate) under a FINISHED finetune run."""
    children, parents = _finished_children(tracker, ids, "finetune", "candidate")
    if children.empty:
        return pd.DataFrame()
    return _tidy(children, parents, numeric_tags=("lambda", "temperature"))


def search_runs(tracker: "Tracker", ids: Mapping[str, str]) -> pd.DataFrame:
    """Every FINISHED search stage run: ``model, task, max_length, seed, run_id, start_time`` and its
    metrics (``dev/{method}/...``: the selected models on dev, evaluated once; ``val/...``)."""
    runs = _search(tracker, ids, "tags.stage = 'search' and attributes.status = 'FINISHED'")
    if runs.empty or any(f"params.{k}" not in runs for k in KEYS):
        return pd.DataFrame()
    runs = runs.dropna(subset=[f"params.{k}" for k in KEYS])
    out = pd.DataFrame({k: runs[f"params.{k}"] for k in KEYS})
    out["max_length"] = out["max_length"].astype(int)
    out["seed"] = pd.to_numeric(runs.get("tags.seed", pd.Series(0, index=runs.index)), errors="coerce").fillna(0).astype(int)
    for tag in ("criterion", "reduce_forms"):              # GLUE searches tag them; LM searches have none
        out[tag] = runs.get(f"tags.{tag}", pd.Series("", index=runs.index)).fillna("")
    out["nonlinear"] = runs.get("tags.nonlinear", pd.Series(None, index=runs.index, dtype=object)).fillna(DEFAULT_FAMILY)
    # the task's dev metrics, primary first (tag ``dev_metrics``, written by the search from its task spec)
    out["dev_metrics"] = runs.get("tags.dev_metrics", pd.Series("", index=runs.index)).fillna("")
    out["run_id"], out["experiment"], out["start_time"] = runs["run_id"], runs["experiment"], runs["start_time"]
    metrics = runs[[c for c in runs if c.startswith("metrics.")]]
    metrics.columns = [c[len("metrics."):] for c in metrics.columns]
    return pd.concat([out, metrics], axis=1).reset_index(drop=True)


def pareto_tables(tracker: "Tracker", ids: Mapping[str, str]) -> dict[tuple[str, str, int], pd.DataFrame]:
    """``pareto.csv`` of the newest FINISHED search run per (model, task, max_length)."""
    runs = _search(tracker, ids, "tags.stage = 'search' and attributes.status = 'FINISHED'")
    tables: dict[tuple[str, str, int], pd.DataFrame] = {}
    if runs.empty or any(f"params.{k}" not in runs for k in KEYS):
        return tables
    runs = runs.dropna(subset=[f"params.{k}" for k in KEYS]).sort_values("start_time", ascending=False)
    for _, run in runs.iterrows():
        key = (run["params.model"], run["params.task"], int(run["params.max_length"]))
        if key in tables:
            continue
        try:
            table = pd.read_csv(tracker.download(run["run_id"], "pareto.csv"))
        except Exception:  # noqa: BLE001 - a search run without pareto.csv (no candidate: the baseline selected)
            continue
        table.attrs["search_run_id"] = run["run_id"]
        tables[key] = table
    return tables


__all__ = ["ReportDataMissing", "launch_hint", "experiment_ids", "method_runs", "candidate_runs",
           "search_runs", "pareto_tables"]
