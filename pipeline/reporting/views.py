"""How the tables read: column names, formatting, and the views a reader compares (each one
question, at most ten columns), written as CSV (raw, every column), Markdown and LaTeX."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
from tabulate import LATEX_ESCAPE_RULES, tabulate

from models import methods as registry
from models.approx import DEFAULT_FAMILY
from pipeline.reporting import paper
from pipeline.reporting.tables import MISSING, task_label


def _fmt(value: object, digits: int) -> str:
    if isinstance(value, float):
        return MISSING if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _headers(columns: Iterable[str]) -> list[str]:
    names = {
        "max_length": "len", "label": "method", "time_lan_s": "LAN (s)", "time_wan_s": "WAN (s)",
        "comm_gb": "comm (GB)", "acc_dev": "acc dev", "acc_secure": "acc secure",
        "kept_tokens_sum": "Σ kept", "speedup_vs_none": "× vs w/o WE", "speedup_vs_bolt_we": "× vs BOLT",
        "inputs": "inputs", "prune_share_pct": "prune+reduce (% LAN)",
        "reduce_ceiling": "Π_reduce ceiling ×", "cost_basis": "cost", "ideal_vs_none": "ideal × (Σ tokens)",
        "paper_model": "paper model", "paper_time_lan_s": "paper LAN (s)", "paper_comm_gb": "paper comm (GB)", "paper_acc": "paper acc",
        "paper_speedup_vs_none": "paper × vs w/o WE", "paper_speedup_vs_bolt_we": "paper × vs BOLT",
        "metric_name": "dev metric", "other_metrics": "other dev metrics (mean ± std)",
        "metric_mean": "dev mean", "metric_std": "± std", "drop_mean": "Δ vs unpruned", "drop_std": "Δ ± std",
        "n_seeds": "seeds", "schedule": "tokens entering each layer", "real_schedule": "% of real tokens entering",
        "reduced_pct": "kept tokens on cheap forms (%)", "beta_scales": "β scale per seed", "paper_metric": "paper (BERT-base)",
        "published": "published, unpruned (model)", "speedup_vs_bolt_none": "× vs BOLT's w/o WE",
        "published_speedup": "published × vs its w/o WE",
        "test_ppl": "test ppl (next token)", "test_acc": "test top-1 (%)", "kept_mean": "mean kept",
        "kept_after": "tokens left after each layer", "test_contexts": "test contexts", "agree_secure": "secure = torch (%)",
        "secure_contexts": "secure contexts", "paper_speedup": "paper GPT-2 ×", "search_run": "search run",
        "secure_run": "secure run", "generated_tokens": "generated tokens",
        **{f"lan_{op}": f"{op} (s)" for op in (*paper.OPS, "Other")},
        "generate_lan_s_per_token": "LAN s / generated token", "generate_wan_s_per_token": "WAN s / generated token",
    }
    out = []
    for c in columns:
        if c.startswith("paper_acc_"):
            out.append(f"paper {task_label(c[10:])}")
        elif c.startswith("acc_") and c not in names:
            out.append(task_label(c[4:]))
        else:
            out.append(names.get(c, c))
    return out


DISPLAY_DROP = ("method", "run_id", "tasks", "seeds")


def display(table: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """Formatted strings for Markdown / LaTeX: rounded numbers, ``—`` for missing values."""
    shown = table.drop(columns=[c for c in DISPLAY_DROP if c in table])
    text = shown.apply(lambda col: col.map(lambda v: _fmt(v, digits)))
    text.columns = _headers(shown.columns)
    return text


# Characters tabulate's LaTeX escaping leaves alone, as LaTeX (applied after tabulate escaped the rest).
LATEX_SYMBOLS = {"—": "--", "×": r"$\times$", "Σ": r"$\Sigma$", "†": r"$^\dagger$", "≈": r"$\approx$"}


def _numeric(value: object) -> bool:
    try:
        float(str(value))
    except ValueError:
        return str(value) == MISSING
    return True


def to_latex(text: pd.DataFrame, caption: str) -> str:
    """A booktabs ``table`` environment: ``tabulate``'s ``latex_booktabs`` (its escaping; the cells
    keep :func:`display`'s formatting, numeric columns right-aligned) inside ``table`` with the
    caption; a few symbols tabulate leaves alone mapped to LaTeX."""
    align = ["right" if all(_numeric(v) for v in text[c]) else "left" for c in text.columns]
    body = tabulate(text.values.tolist(), headers=list(text.columns), tablefmt="latex_booktabs",
                    disable_numparse=True, colalign=align)
    caption_tex = "".join(LATEX_ESCAPE_RULES.get(c, c) for c in caption)
    out = "\n".join([r"\begin{table}[t]", r"\centering", rf"\caption{{{caption_tex}}}", body, r"\end{table}", ""])
    for char, tex in LATEX_SYMBOLS.items():
        out = out.replace(char, tex)
    return out


PUBLISHED_VIEW = "Unpruned beside a published model of its depth"
# a family other than BOLT's is named in the label (``label_of``); the CSV has the nonlinear column
_T1_KEYS = ("model", "task", "max_length", "protocol", "label")
_T2_KEYS = ("model", "task", "max_length", "criterion", "reduce_forms", "label")
FAMILIES_VIEW = "Across non-linearity families (LAN)"
VIEWS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "table1": (
        ("Cost per input", (*_T1_KEYS, "time_lan_s", "time_wan_s", "comm_gb", "inputs", "cost_basis")),
        ("Speed-ups (LAN)", (*_T1_KEYS, "speedup_vs_none", "speedup_vs_bolt_we", "ideal_vs_none", "reduce_ceiling",
                             "prune_share_pct")),
        ("Tokens and accuracy", (*_T1_KEYS, "kept_tokens_sum", "acc_dev", "acc_secure", "paper_acc")),
        ("The paper beside (BERT, 128 tokens, LAN)", (*_T1_KEYS, "paper_model", "paper_time_lan_s", "paper_comm_gb",
                                                     "paper_speedup_vs_none", "paper_speedup_vs_bolt_we")),
        (FAMILIES_VIEW, (*_T1_KEYS, "speedup_vs_none", "published_speedup", "speedup_vs_bolt_none",
                         "paper_speedup_vs_none")),
    ),
    "table2": (
        ("Dev metric", (*_T2_KEYS, "metric_name", "metric_mean", "metric_std", "n_seeds")),
        ("Drop from unpruned", (*_T2_KEYS, "drop_mean", "drop_std", "paper_metric", "other_metrics")),
        ("Tokens", (*_T2_KEYS, "schedule", "real_schedule", "reduced_pct", "beta_scales")),
        (PUBLISHED_VIEW, ("model", "task", "max_length", "label", "metric_name", "metric_mean", "metric_std",
                          "published")),
    ),
}
"""Per table, the views a reader compares, each one question and at most ten columns (the CSV has all)."""
VIEW_ROWS: dict[str, Callable[[pd.DataFrame], pd.Series]] = {
    PUBLISHED_VIEW: lambda t: t["method"] == registry.UNPRUNED,
    FAMILIES_VIEW: lambda t: t["nonlinear"] != DEFAULT_FAMILY,
}
"""Views that show some rows only (by title): which; a view with no such row is left out."""


def _view_rows(table: pd.DataFrame, title: str) -> pd.Series:
    """The rows view ``title`` shows (``VIEW_ROWS``), all where it names none or lacks the columns."""
    try:
        return VIEW_ROWS[title](table)
    except KeyError:                                     # no filter, or a table without its column
        return pd.Series(True, index=table.index)


def write_table(table: pd.DataFrame, out_dir: Path, name: str, caption: str) -> list[Path]:
    """``<name>.csv`` (raw, every column), ``<name>.md`` and ``<name>.tex`` (formatted, one table per
    ``VIEWS[name]`` entry when the table has views, else the whole table); returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.csv", out_dir / f"{name}.md", out_dir / f"{name}.tex"]
    table.to_csv(paths[0], index=False)
    views = [(title, [c for c in cols if c in table]) for title, cols in VIEWS.get(name, ((caption, tuple(table)),))]
    texts = [(title, display(table.loc[rows, cols])) for title, cols in views
             if (rows := _view_rows(table, title)).any() or table.empty]
    md = [f"**{caption}**", ""]
    for title, text in texts:
        md += ([f"*{title}*", ""] if len(texts) > 1 else []) + [text.to_markdown(index=False), ""]
    paths[1].write_text("\n".join(md))
    paths[2].write_text("\n".join(to_latex(text, f"{caption}: {title}" if len(texts) > 1 else caption)
                                  for title, text in texts))
    return paths
