"""report: regenerate the paper's tables and figures from MLflow runs.

Reads the experiments ``report.experiments`` (default: this config's
``tracking.experiment``), selects FINISHED runs by the tags and params of
docs/ARCHITECTURE.md "MLflow run layout" (newest run per table row), and writes
Markdown, CSV and LaTeX tables and PNG figures under
``<paths.outputs>/reports/<report.name>/``, all logged as artifacts (``report/``) of
this run. A table without runs fails the stage, naming the experiment to launch; a
figure without data is skipped with a note in ``index.md`` and ``summary.json``.

``report.publish=true`` also writes them, with a record of every FINISHED run of the experiments
read (``pipeline.record``), to ``<report.results_dir>/<report.name>/``: commit it, and the tables
regenerate from git alone with ``report.source=<that directory>``, which reads the record (brought
into a temporary store) instead of the tracking store. Run ids shown are the record's.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd

from models.approx import DEFAULT_FAMILY
from pipeline.config import PipelineConfig
from pipeline.context import StageContext
from protocols.meter import NETWORKS, ROUNDS_PER_SEND_ACTION

log = logging.getLogger(__name__)
LINKS = "; ".join(f"{n.name.upper()} " + (f"{n.bandwidth_bps / 1e9:g} Gbps" if n.bandwidth_bps >= 1e9 else
                                           f"{n.bandwidth_bps / 1e6:g} Mbps") + f", {n.rtt_s * 1e3:g} ms RTT"
                  for n in NETWORKS)

TABLES: dict[str, str] = {
    "table1": "Table 1: secure inference cost per model and method, measured end to end unless the cost column "
              "says otherwise (per input, averaged over the inputs column), ours beside the paper's (BERT, 128 "
              "tokens, LAN). LAN and WAN times are modelled from measured parts: the compute time plus the "
              f"bytes at the link's bandwidth and the rounds (estimated: {ROUNDS_PER_SEND_ACTION} per send) at "
              f"its RTT ({LINKS})",
    "table2": "Table 2: ablation, dev metric per task and method (mean ± std over seeds; models selected on a "
              "validation split carved from train, dev evaluated once), ours vs the paper (BERT-base)",
    "lm": "GPT-2 on WikiText-2: next-token prediction over a pruned context (test contexts; selected on dev), "
          "secure cost per context measured end to end, the paper's GPT-2 speed-up beside it",
    "ops": "Secure LAN seconds per op class and method (per input, measured end to end by the cost meter)",
}
FIGURES: tuple[str, ...] = ("kept_tokens", "breakdown", "pareto", "scaling")


def params(cfg: PipelineConfig) -> dict[str, Any]:
    """Curated params of a report run: its name, the experiments it reads, what it builds."""
    r = cfg.report
    return {"report": r.name, "experiments": list(r.experiments) or [cfg.tracking.experiment],
            "tables": list(r.tables), "figures": list(r.figures)}


def _check_names(cfg: PipelineConfig) -> None:
    bad_t = [t for t in cfg.report.tables if t not in TABLES]
    bad_f = [f for f in cfg.report.figures if f not in FIGURES]
    if bad_t or bad_f:
        raise ValueError(f"unknown report.tables {bad_t} / report.figures {bad_f}; "
                         f"tables: {sorted(TABLES)}, figures: {list(FIGURES)}")


def _missing(what: str, names: list[str], uri: str, detail: str) -> Exception:
    from pipeline.reporting import ReportDataMissing, launch_hint

    hints = " or ".join(f"`{launch_hint(n)}`" for n in names)
    where = ", ".join(f"'{n}'" for n in names)
    return ReportDataMissing(f"{what} needs FINISHED secure_eval runs (nested runs with tag kind=method "
                             f"under a FINISHED secure_eval stage run{detail}) in MLflow experiment {where} "
                             f"at {uri}; found none. Launch {hints} first.")


def _table(name: str, methods: pd.DataFrame, searches: pd.DataFrame, names: list[str], uri: str) -> pd.DataFrame:
    from pipeline.reporting import ReportDataMissing, launch_hint, tables

    if name == "table1":
        if methods.empty:
            raise _missing("Table 1", names, uri, "")
        if "time_s/lan" not in methods or methods["time_s/lan"].isna().all():
            raise _missing("Table 1", names, uri, " with metric time_s/lan")
        return tables.table1(methods)
    if name == "ops":
        if methods.empty or "time_s/lan" not in methods:
            raise _missing("The op breakdown", names, uri, " with metric time_s/lan")
        return tables.ops_table(methods)
    if name == "lm":
        table = tables.lm_table(searches, methods)
        if table.empty:
            raise ReportDataMissing(f"the LM table needs a FINISHED LM search run (test/none/next_token_ppl ...) in MLflow "
                                    f"experiment {', '.join(repr(n) for n in names)} at {uri}; found none. "
                                    f"Launch `python -m pipeline experiment=gpt2_wikitext2` first.")
        return table
    if searches.empty or "dev/none/metric" not in searches:
        hints = " or ".join(f"`{launch_hint(n)}`" for n in names)
        raise ReportDataMissing(f"Table 2 needs FINISHED search runs with dev metrics (dev/none/metric ...) in MLflow "
                                f"experiment {', '.join(repr(n) for n in names)} at {uri}; found none. Launch {hints} first.")
    return tables.table2(searches)


def _table_metrics(name: str, table: pd.DataFrame) -> dict[str, float]:
    """Headline numbers of a table as report-run metrics (speed-ups, accuracies)."""
    out: dict[str, float] = {f"{name}/rows": float(len(table))}
    for _, r in table.iterrows():
        named = ("model", "task", "protocol", "nonlinear", "criterion", "reduce_forms")
        shown = [k for k in named if k in r and pd.notna(r[k]) and not (k == "nonlinear" and r[k] == DEFAULT_FAMILY)]
        key = "/".join([*(str(r[k]) for k in shown),
                        f"L{r['max_length']}", str(r["method"])])
        for col in ("speedup_vs_none", "speedup_vs_bolt_we", "time_lan_s", "metric_mean", "drop_mean", "test_ppl", "test_acc"):
            if col in r and pd.notna(r[col]):
                out[f"{name}/{col}/{key}"] = float(r[col])
    return out


def _index(out_dir: Path, sources: dict[str, Any], built: list[str], notes: list[str]) -> Path:
    lines = [f"# Report `{sources['report']}`", "",
             f"Experiments read: {', '.join(sources['experiments'])} (tracking URI {sources['uri']}); "
             f"{sources['method_runs']} secure_eval method runs, {sources['candidate_runs']} fine-tuning "
             f"candidates, {sources['search_runs']} search runs (Table 2: one per seed); newest FINISHED run per row.", ""]
    for name in built:
        lines += [(out_dir / f"{name}.md").read_text(), ""]
    lines += [f"![{p.stem}]({p.name})" for p in sorted(out_dir.glob("*.png"))]
    if notes:
        lines += ["", "## Skipped figures", *[f"- {n}" for n in notes]]
    path = out_dir / "index.md"
    path.write_text("\n".join(lines) + "\n")
    return path


@contextmanager
def _store(ctx: StageContext) -> Iterator[Any]:
    """The tracker the report reads: this stage's own, or (``report.source``) a temporary store
    holding the record."""
    if not ctx.cfg.report.source:
        yield ctx.tracker
        return
    import mlflow

    from pipeline.record import import_record
    from pipeline.tracking import Tracker

    with tempfile.TemporaryDirectory(prefix="cipherprune-record-") as tmp:
        cfg = dataclasses.replace(ctx.cfg, tracking=dataclasses.replace(ctx.cfg.tracking, uri=f"sqlite:///{tmp}/record.db"),
                                  paths=dataclasses.replace(ctx.cfg.paths, outputs=tmp))
        try:
            tracker = Tracker(cfg)
            import_record(tracker.client, Path(ctx.cfg.report.source))
            yield tracker
        finally:
            mlflow.set_tracking_uri(ctx.tracker.uri)       # Tracker set the process-wide URI to the record's


def _recorded(tracker: Any, experiment_ids: list[str]) -> dict[str, str]:
    """Store id → recorded id of the runs of ``experiment_ids`` brought in from a record
    (``report.source`` or ``tracking.records``), so that tables and records name them as recorded."""
    from pipeline.tracking import RECORDED

    runs = tracker.runs_frame(experiment_ids, f"tags.{RECORDED} != ''")
    return dict(zip(runs["run_id"], runs[f"tags.{RECORDED}"])) if not runs.empty else {}


def _recorded_ids(frame: pd.DataFrame, back: dict[str, str]) -> pd.DataFrame:
    """``frame`` with store run ids replaced by the record's (cells holding one id or comma-joined ids)."""
    if not back:
        return frame
    out = frame.copy()
    for col in out.select_dtypes(include="object").columns:
        out[col] = [",".join(back.get(v, v) for v in x.split(",")) if isinstance(x, str) else x for x in out[col]]
    return out


def _regenerate(cfg: PipelineConfig, experiments: list[str]) -> str:
    """The command that rebuilds a published report from its record: the report config chosen
    (``report=<choice>``), and its name and experiments when they were given on the command line."""
    from hydra.core.hydra_config import HydraConfig

    name = cfg.report.name
    choice = HydraConfig.get().runtime.choices.get("report") if HydraConfig.initialized() else None
    extra = f" report.name={name} 'report.experiments=[{','.join(experiments)}]'" if choice and choice != name else ""
    return f"python -m pipeline stage=report report={choice or name}{extra} report.source=results/{name}"


def _publish(ctx: StageContext, tracker: Any, ids: dict[str, str], out_dir: Path, back: dict[str, str]) -> Path:
    """Copy the report to ``<results_dir>/<name>/`` and record every FINISHED run of the experiments
    read (report runs excepted) beside it (``pipeline.record``)."""
    from pipeline.record import run_record, write_record

    target = Path(ctx.cfg.report.results_dir) / ctx.cfg.report.name
    target.mkdir(parents=True, exist_ok=True)
    for path in out_dir.iterdir():
        shutil.copy2(path, target / path.name)
    runs = tracker.runs_frame(list(ids.values()), "attributes.status = 'FINISHED'")
    names = {v: k for k, v in ids.items()}
    with tempfile.TemporaryDirectory() as tmp:
        records = [run_record(tracker.client, r["run_id"], names[r["experiment_id"]], Path(tmp), back)
                   for _, r in runs.iterrows() if r.get("tags.stage") != "report"]
    name = ctx.cfg.report.name
    write_record(target, records, {"report": name, "experiments": sorted(ids),
                                   "regenerate": _regenerate(ctx.cfg, sorted(ids)),
                                   "checkpoints": "not recorded (size): the chain trains them again from the same "
                                                  "config and code (tags code_tree, git_sha of each run)"},
                 recorded=back.values())
    log.info(f"report: published {len(records)} runs and the report to {target}")
    return target


def run(ctx: StageContext) -> None:
    """Build the configured tables (required) and figures (skipped with a note without data)."""
    with _store(ctx) as tracker:
        _build(ctx, tracker)


def _build(ctx: StageContext, tracker: Any) -> None:
    """The report from ``tracker``'s runs (see ``run``)."""
    from pipeline import reporting
    from pipeline.reporting import figures, views

    cfg = ctx.cfg
    _check_names(cfg)
    names = list(cfg.report.experiments) or [cfg.tracking.experiment]
    ids = reporting.experiment_ids(tracker, names)
    back = _recorded(tracker, list(ids.values()))
    out_dir = Path(cfg.paths.outputs).resolve() / "reports" / cfg.report.name
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a report directory holds only the latest regeneration
    out_dir.mkdir(parents=True)
    methods = reporting.method_runs(tracker, ids)
    candidates = reporting.candidate_runs(tracker, ids) if "pareto" in cfg.report.figures else pd.DataFrame()
    searches = reporting.search_runs(tracker, ids)

    built: list[str] = []
    metrics: dict[str, float] = {"method_runs": float(len(methods)), "candidate_runs": float(len(candidates))}
    for name in cfg.report.tables:
        table = _recorded_ids(_table(name, methods, searches, names, tracker.uri), back)
        views.write_table(table, out_dir, name, TABLES[name])
        metrics.update(_table_metrics(name, table))
        built.append(name)
        log.info(f"report: {name} with {len(table)} rows -> {out_dir / name}.md")

    builders: dict[str, Callable[[], list[Path]]] = {
        "kept_tokens": lambda: figures.kept_tokens(methods, out_dir),
        "breakdown": lambda: figures.breakdown(methods, out_dir),
        "pareto": lambda: figures.pareto(candidates, reporting.pareto_tables(tracker, ids), out_dir),
        "scaling": lambda: figures.scaling(methods, out_dir),
    }
    notes: list[str] = []
    figure_files: dict[str, list[str]] = {}
    for name in cfg.report.figures:
        try:
            figure_files[name] = [p.name for p in builders[name]()]
        except figures.FigureSkipped as why:
            notes.append(f"{name}: {why}")
            log.warning(f"report: figure {name} skipped: {why}")
    uri = cfg.report.source if cfg.report.source else tracker.uri
    sources = {"report": cfg.report.name, "experiments": names, "experiment_ids": ids, "uri": uri,
               "method_runs": len(methods), "candidate_runs": len(candidates), "search_runs": len(searches),
               "runs": sorted(back.get(r, r) for r in methods["run_id"]) if not methods.empty else []}
    _index(out_dir, sources, built, notes)
    ctx.run.log_dict({**sources, "tables": built, "figures": figure_files, "skipped": notes},
                     "report/summary.json")
    ctx.run.log_metrics(metrics)
    ctx.run.log_artifact(out_dir, "report")
    if cfg.report.publish:
        _publish(ctx, tracker, ids, out_dir, back)
    log.info(f"report: {len(built)} tables, {sum(map(len, figure_files.values()))} figures in {out_dir}")
