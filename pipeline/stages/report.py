"""report: regenerate the paper's tables and figures from MLflow runs.

Reads the experiments ``report.experiments`` (default: this config's
``tracking.experiment``), selects FINISHED runs by the tags and params of
docs/ARCHITECTURE.md "MLflow run layout" (newest run per table row), and writes
Markdown, CSV and LaTeX tables and PNG figures under
``<paths.outputs>/reports/<report.name>/``, all logged as artifacts (``report/``) of
this run. A table without runs fails the stage, naming the experiment to launch; a
figure without data is skipped with a note in ``index.md`` and ``summary.json``.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from pipeline.config import PipelineConfig
from pipeline.context import StageContext

log = logging.getLogger(__name__)

TABLES: dict[str, str] = {
    "table1": "Table 1: secure inference cost per model and method, measured end to end unless the cost column "
              "says otherwise (per input, averaged over the inputs column), ours beside the paper's (BERT, 128 "
              "tokens, LAN)",
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
        key = "/".join([*(str(r[k]) for k in ("model", "task", "protocol", "criterion", "reduce_forms") if k in r and pd.notna(r[k])),
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


def run(ctx: StageContext) -> None:
    """Build the configured tables (required) and figures (skipped with a note without data)."""
    from pipeline import reporting
    from pipeline.reporting import figures, tables

    cfg = ctx.cfg
    _check_names(cfg)
    names = list(cfg.report.experiments) or [cfg.tracking.experiment]
    ids = reporting.experiment_ids(ctx.tracker, names)
    out_dir = Path(cfg.paths.outputs).resolve() / "reports" / cfg.report.name
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a report directory holds only the latest regeneration
    out_dir.mkdir(parents=True)
    methods = reporting.method_runs(ctx.tracker, ids)
    candidates = reporting.candidate_runs(ctx.tracker, ids) if "pareto" in cfg.report.figures else pd.DataFrame()
    searches = reporting.search_runs(ctx.tracker, ids)

    built: list[str] = []
    metrics: dict[str, float] = {"method_runs": float(len(methods)), "candidate_runs": float(len(candidates))}
    for name in cfg.report.tables:
        table = _table(name, methods, searches, names, ctx.tracker.uri)
        tables.write_table(table, out_dir, name, TABLES[name])
        metrics.update(_table_metrics(name, table))
        built.append(name)
        log.info(f"report: {name} with {len(table)} rows -> {out_dir / name}.md")

    builders: dict[str, Callable[[], list[Path]]] = {
        "kept_tokens": lambda: figures.kept_tokens(methods, out_dir),
        "breakdown": lambda: figures.breakdown(methods, out_dir),
        "pareto": lambda: figures.pareto(candidates, reporting.pareto_tables(ctx.tracker, ids), out_dir),
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
    sources = {"report": cfg.report.name, "experiments": names, "experiment_ids": ids, "uri": ctx.tracker.uri,
               "method_runs": len(methods), "candidate_runs": len(candidates), "search_runs": len(searches),
               "runs": sorted(methods["run_id"]) if not methods.empty else []}
    _index(out_dir, sources, built, notes)
    ctx.run.log_dict({**sources, "tables": built, "figures": figure_files, "skipped": notes},
                     "report/summary.json")
    ctx.run.log_metrics(metrics)
    ctx.run.log_artifact(out_dir, "report")
    log.info(f"report: {len(built)} tables, {sum(map(len, figure_files.values()))} figures in {out_dir}")
