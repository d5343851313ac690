"""Paper tables from tidy run frames: Table 1 (cost per model and method) and Table 2
(ablation accuracy per task); ``pipeline.reporting.views`` writes them as CSV, Markdown and LaTeX.

Input frames come from :mod:`pipeline.reporting` loaders: Table 1 one row per FINISHED
``secure_eval`` method run, Table 2 one per FINISHED ``search`` run (one per seed), columns
``model, task, max_length, (method,) run_id, start_time`` plus the run's metrics under their
MLflow names (``time_s/lan``, ``dev/prune/metric`` ...).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import pandas as pd

from models import methods as registry
from models.approx import DEFAULT_FAMILY
from pipeline.reporting import paper
from pipeline.reporting.published import PUBLISHED_DEV, published_speedup

MISSING = "—"
FIXED_POINT_ROW = next(f"{m.name}_fixed_point" for m in registry.registered() if m.reduce)   # the search's
FIXED_POINT_LABEL = "CipherPrune, 18-bit fixed point"
GROUP = ["model", "task", "max_length", "protocol", "nonlinear"]


def newest(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One run per ``keys`` combination: the one that started last."""
    return frame.sort_values("start_time", ascending=False).drop_duplicates(keys, keep="first")


def task_label(task: str) -> str:
    """A task's name in reports (``models.data.TaskSpec.display``), the name itself for one not defined."""
    from models.data import TASKS

    return TASKS[task].display if task in TASKS else task


def label_of(method: str, family: str = DEFAULT_FAMILY) -> str:
    """A method's report label (``models.methods``), the name itself for one not registered; with a
    non-linearity family other than BOLT's (the paper's, whose labels these are) the family beside it."""
    label = registry.get(method).label if method in registry.names() else method
    return label if family == DEFAULT_FAMILY else f"{label} [{family}]"


def color_of(method: str) -> Optional[str]:
    """A method's figure colour (``models.methods``), None for one not registered."""
    return registry.get(method).color if method in registry.names() else None


def in_method_order(column: pd.Series) -> pd.Series:
    """Sort key for ``DataFrame.sort_values(key=...)``: the ``method`` column as an ordered
    categorical in the paper's order (unknown methods sort last, as missing values); others as is."""
    if column.name != "method":
        return column
    return pd.Series(pd.Categorical(column, categories=registry.names(), ordered=True), index=column.index)


def kept_tokens_sum(row: pd.Series) -> float:
    """Σ over layers of ``tokens_entering/layer_{i}`` (NaN when the run logged none)."""
    values = [row[c] for c in row.index if c.startswith("tokens_entering/layer_") and pd.notna(row[c])]
    return float(sum(values)) if values else math.nan


def _metric(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name].astype(float) if name in frame else pd.Series(math.nan, index=frame.index)


def named_dev_metrics(grp: pd.DataFrame, method: str) -> tuple[str, str]:
    """For one method's search runs (one per seed): the primary metric's name and the other dev
    metrics as ``"name mean ± std"`` over seeds, joined by ``; `` (MRPC's accuracy beside its F1,
    STS-B's Spearman beside its Pearson), as the task spec names them (column ``dev_metrics``:
    primary first; ``metric`` and none beside it when the runs do not say)."""
    declared = [n for n in str(grp["dev_metrics"].iloc[0]).split(",") if n] if "dev_metrics" in grp else []
    others = []
    for name in declared[1:]:
        values = _metric(grp, f"dev/{method}/{name}")
        if values.notna().any():
            spread = f" ± {values.std(ddof=1):.2f}" if values.notna().sum() > 1 else ""
            others.append(f"{name} {values.mean():.2f}{spread}")
    return (declared[0] if declared else "metric"), "; ".join(others)


def _opt(value: Optional[float]) -> float:
    return math.nan if value is None else float(value)


def table1(runs: pd.DataFrame) -> pd.DataFrame:
    """Table 1: one row per (model, task, max_length, protocol, nonlinear, method), ours beside the paper's.

    Every figure is the secure run's own, measured end to end and averaged over ``inputs`` dev
    inputs. Speed-ups are LAN time of the reference method (``none`` / ``bolt_we``) of the same
    model, task, length, protocol and non-linearity family divided by this row's LAN time; NaN
    where the reference is absent; ``speedup_vs_bolt_none`` divides BOLT's family's ``none`` instead
    (another family's gain over the paper's baseline), ``published_speedup`` is another engine's
    published pruning speed-up over its own unpruned run (``published.PUBLISHED_SPEEDUP``).
    ``ideal_vs_none``: Σ over layers of the tokens entering each layer under ``none`` over this
    row's (the speed-up if cost were linear in tokens); ``prune_share_pct``: Π_prune's and
    Π_reduce's share of the LAN time; ``reduce_ceiling``: ``T / (T − T_reducible)`` of the row's own
    run (LAN), the speed-up Π_reduce would give over it if every low-group GELU and layer ≥ 1
    softmax cost nothing (``CostReport.reducible``; on the ``prune`` row it bounds ``prune_reduce``'s
    gain over ``prune`` for any cheaper form). ``paper_model``: the paper's model whose numbers stand
    beside the row (the row's own where the paper has it, else BERT-base; 128 tokens only).
    ``cost_basis``: "end to end", or for an unpruned run measured on its first layers only
    (``secure_eval.unpruned_layers``) "k of L layers run, the rest repeated".
    """
    rows = newest(runs, GROUP + ["method"]).copy()
    measured, total = _metric(rows, "layers/measured"), _metric(rows, "layers/total")
    out = pd.DataFrame({
        "model": rows["model"], "task": rows["task"], "max_length": rows["max_length"].astype(int),
        "protocol": rows["protocol"], "nonlinear": rows["nonlinear"], "method": rows["method"],
        "label": [label_of(m, f) for m, f in zip(rows["method"], rows["nonlinear"])],
        "time_lan_s": _metric(rows, "time_s/lan"), "time_wan_s": _metric(rows, "time_s/wan"),
        "comm_gb": _metric(rows, "comm_mb/total") / 1024.0,
        "acc_dev": _metric(rows, "acc/dev"), "acc_secure": _metric(rows, "acc/secure"),
        "kept_tokens_sum": rows.apply(kept_tokens_sum, axis=1), "inputs": _metric(rows, "examples/secure"),
        "prune_share_pct": 100.0 * (_metric(rows, "time_s/lan/Prune").fillna(0.0) + _metric(rows, "time_s/lan/Reduce")
                                    .fillna(0.0)) / _metric(rows, "time_s/lan"),
        "reduce_ceiling": reduce_ceiling(_metric(rows, "time_s/lan"), _metric(rows, "time_s/lan/reducible")),
        "cost_basis": [f"{k:.0f} of {t:.0f} layers run, the rest repeated" if pd.notna(k) and k < t else "end to end"
                       for k, t in zip(measured, total)],
        "run_id": rows["run_id"],
    })
    keyed = pd.MultiIndex.from_frame(out[GROUP])
    references = [m.name for m in registry.registered() if m.reference]
    for ref in references:
        ref_time = out[out["method"] == ref].set_index(GROUP)["time_lan_s"]
        out[f"speedup_vs_{ref}"] = ref_time.reindex(keyed).to_numpy() / out["time_lan_s"].to_numpy()
    same_engine = GROUP[:-1]                              # another family's rows against BOLT's unpruned
    bolt_none = out[(out["method"] == registry.UNPRUNED) & (out["nonlinear"] == DEFAULT_FAMILY)].set_index(same_engine)
    out["speedup_vs_bolt_none"] = (bolt_none["time_lan_s"].reindex(pd.MultiIndex.from_frame(out[same_engine])).to_numpy()
                                   / out["time_lan_s"].to_numpy())
    out["published_speedup"] = [published_speedup(f, m) for f, m in zip(out["nonlinear"], out["method"])]
    ref_tokens = out[out["method"] == registry.UNPRUNED].set_index(GROUP)["kept_tokens_sum"]
    out["ideal_vs_none"] = ref_tokens.reindex(keyed).to_numpy() / out["kept_tokens_sum"].to_numpy()
    out["paper_model"] = [m if m in paper.MODEL_LABELS else paper.REFERENCE_MODEL for m in out["model"]]
    cells = [paper.table1_cell(r.paper_model, r.method, r.max_length) for r in out.itertuples()]
    out["paper_time_lan_s"] = [math.nan if c is None else c.time_lan_s for c in cells]
    out["paper_comm_gb"] = [math.nan if c is None else _opt(c.comm_gb) for c in cells]
    out["paper_acc"] = [math.nan if c is None else _opt(c.acc) for c in cells]
    for ref in references:
        out[f"paper_speedup_vs_{ref}"] = [
            _opt(paper.paper_speedup(r.paper_model, r.method, ref, r.max_length)) for r in out.itertuples()]
    out["paper_model"] = [paper.MODEL_LABELS[m] if c is not None else MISSING for m, c in zip(out["paper_model"], cells)]
    return out.sort_values(GROUP + ["method"], key=in_method_order).reset_index(drop=True)


def table2(searches: pd.DataFrame) -> pd.DataFrame:
    """Table 2 (ablation, accuracy): one row per (model, task, max_length, nonlinear, criterion, reduce_forms, method) from
    the search runs (newest per seed; the methods, then CipherPrune with SPU's fixed-point rounding
    emulated too, ``FIXED_POINT_ROW``): the dev metric's name (``metric_name``), mean and standard deviation
    over seeds (``n_seeds``), the task's other dev metrics (``other_metrics``, ``named_dev_metrics``), its
    drop from unpruned (mean of the per-seed differences, and their std), the mean tokens entering each
    layer (``schedule``, padding included, mean over seeds) and the share of each input's real tokens
    entering it (``real_schedule``, %), for Π_reduce rows the share of
    kept tokens given the cheap forms (``reduced_pct``, mean over seeds) and the β scale each seed's
    calibration took (``beta_scales``), the paper's BERT-base value beside it, on the unpruned row a
    published model's value (``published``, ``pipeline.reporting.published``), and the search runs it
    averages. Search runs without dev metrics (GPT-2's) are skipped."""
    keys = ["model", "task", "max_length", "nonlinear", "criterion", "reduce_forms"]
    rows = newest(searches.dropna(subset=["dev/none/metric"]), [*keys, "seed"])
    records: list[dict[str, object]] = []
    for (model, task, length, nonlinear, criterion, forms), grp in rows.groupby(keys, sort=True):
        base = _metric(grp, "dev/none/metric")
        for method in (*registry.names(), FIXED_POINT_ROW):
            values = _metric(grp, f"dev/{method}/metric")
            if values.isna().all():
                continue                                    # a method the search did not evaluate
            drop = values - base
            layers = _layer_columns(grp, f"dev/{method}/entering/layer_")
            shares = _layer_columns(grp, f"dev/{method}/real_share/layer_")
            reduces = method == FIXED_POINT_ROW or registry.get(method).reduce
            high = grp.get(f"dev/{method}/high_ratio/mean")
            scales = grp.sort_values("seed").get("reduce/beta_scale")   # in the order of the seeds column
            metric_name, other_metrics = named_dev_metrics(grp, method)
            records.append({
                "model": model, "task": task, "max_length": int(length), "nonlinear": nonlinear, "criterion": criterion,
                "reduce_forms": forms, "method": method,
                "label": label_of(FIXED_POINT_LABEL if method == FIXED_POINT_ROW else method, nonlinear),
                "metric_name": metric_name, "metric_mean": float(values.mean()),
                "metric_std": float(values.std(ddof=1)) if values.notna().sum() > 1 else math.nan,
                "drop_mean": float(drop.mean()) if method != registry.UNPRUNED else math.nan,
                "drop_std": float(drop.std(ddof=1)) if method != registry.UNPRUNED and drop.notna().sum() > 1 else math.nan,
                "n_seeds": int(values.notna().sum()), "other_metrics": other_metrics,
                "schedule": "-".join(f"{grp[c].astype(float).mean():.1f}" for c in layers),
                "real_schedule": "-".join(f"{grp[c].astype(float).mean():.0f}" for c in shares),
                "reduced_pct": 100 * (1 - float(high.astype(float).mean())) if reduces and high is not None else math.nan,
                "beta_scales": ",".join(f"{v:g}" for v in scales.astype(float)) if reduces and scales is not None
                and scales.notna().all() else "",
                "published": PUBLISHED_DEV[task].label() if method == registry.UNPRUNED and task in PUBLISHED_DEV else math.nan,
                "paper_metric": paper.ABLATION_ACC.get(method, {}).get(task, math.nan) if int(length) == paper.PAPER_MAX_LENGTH
                else math.nan,
                "seeds": ",".join(str(s) for s in sorted(grp["seed"])), "run_id": ",".join(grp["run_id"]),
            })
    out = pd.DataFrame.from_records(records)
    return out.sort_values([*keys, "method"], key=in_method_order).reset_index(drop=True)


def _layer_columns(frame: pd.DataFrame, prefix: str) -> list[str]:
    """The columns ``{prefix}{i}`` of ``frame``, by layer."""
    return sorted((c for c in frame if c.startswith(prefix)), key=lambda c: int(c.rsplit("_", 1)[1]))


def lm_table(searches: pd.DataFrame, methods: pd.DataFrame) -> pd.DataFrame:
    """The GPT-2 LM table: one row per (model, max_length, protocol, method): the newest LM search
    run's test next-token perplexity and top-1 accuracy, mean kept tokens and the tokens left after
    each layer (``kept_after``), joined with the newest secure_eval method run of the same model,
    length and protocol (LAN/WAN seconds, GB per context, the ratio to ``none``, the secure argmax
    agreement and how many contexts it averages; protocol ``—`` and no cost without one; with
    ``secure_eval.generate_tokens``, the tokens generated and the LAN/WAN seconds per generated
    token), the paper's GPT-2 speed-up beside the pruned row."""
    done = searches.dropna(subset=["test/none/next_token_ppl"]) if "test/none/next_token_ppl" in searches else searches.iloc[0:0]
    keys = ["model", "max_length", "protocol", "method"]
    secure = newest(methods, keys) if not methods.empty else pd.DataFrame(columns=[*keys, "run_id"])
    keyed = secure.set_index(keys)
    records: list[dict[str, object]] = []
    for _, s in newest(done, ["model", "max_length"]).iterrows():
        # the rebuttal's GPT-2 speed-up stands beside CipherPrune (prune_reduce) when the search scored it
        paper_row = [m.name for m in registry.registered() if m.thresholds
                     and pd.notna(s.get(f"test/{m.name}/next_token_ppl", math.nan))][-1:]
        same = secure[(secure["model"] == s["model"]) & (secure["max_length"] == s["max_length"])]
        for protocol in sorted(set(same["protocol"])) or [MISSING]:
            for method in registry.names():
                key = f"test/{method}/"
                if pd.isna(s.get(f"{key}next_token_ppl", math.nan)):
                    continue
                layers = sorted((c for c in s.index if c.startswith(f"{key}kept/layer_") and pd.notna(s[c])),
                                key=lambda c: int(c.rsplit("_", 1)[1]))
                run = keyed.loc[(s["model"], s["max_length"], protocol, method)] if (
                    s["model"], s["max_length"], protocol, method) in keyed.index else pd.Series(dtype=object)
                records.append({
                    "model": s["model"], "max_length": int(s["max_length"]), "protocol": protocol, "method": method,
                    "label": label_of(method), "test_ppl": float(s[f"{key}next_token_ppl"]),
                    "test_acc": float(s[f"{key}next_token_acc"]), "kept_mean": float(s[f"{key}kept_mean"]),
                    "kept_after": "-".join(f"{float(s[c]):.1f}" for c in layers),
                    "test_contexts": float(s.get("test/blocks", math.nan)),
                    "time_lan_s": float(run.get("time_s/lan", math.nan)), "time_wan_s": float(run.get("time_s/wan", math.nan)),
                    "comm_gb": float(run.get("comm_mb/total", math.nan)) / 1024.0,
                    "agree_secure": float(run.get("agree/secure", math.nan)),
                    "reduce_ceiling": reduce_ceiling(float(run.get("time_s/lan", math.nan)),
                                                     float(run.get("time_s/lan/reducible", math.nan))),
                    "secure_contexts": float(run.get("examples/secure", math.nan)),
                    "generated_tokens": float(run.get("generate/tokens", math.nan)),
                    "generate_lan_s_per_token": float(run.get("generate/time_s/lan_per_token", math.nan)),
                    "generate_wan_s_per_token": float(run.get("generate/time_s/wan_per_token", math.nan)),
                    "paper_speedup": paper.GPT2_SPEEDUP.get(int(s["max_length"]), math.nan) if method in paper_row else math.nan,
                    "search_run": s["run_id"], "secure_run": str(run.get("run_id", MISSING))})
    out = pd.DataFrame.from_records(records)
    if out.empty:
        return out
    group = ["model", "max_length", "protocol"]
    base = out[out["method"] == registry.UNPRUNED].set_index(group)["time_lan_s"]
    out["speedup_vs_none"] = base.reindex(pd.MultiIndex.from_frame(out[group])).to_numpy() / out["time_lan_s"]
    return out.sort_values(keys, key=in_method_order).reset_index(drop=True)


def ops_table(methods: pd.DataFrame) -> pd.DataFrame:
    """Where each method's secure time goes: one row per (model, task, length, protocol, method),
    the newest method run's LAN seconds per op class (``time_s/lan/{op}``, per input, as the
    meter measured them; ``lan_<op>``), its total and bytes, and the run id."""
    rows = newest(methods, GROUP + ["method"]).sort_values(GROUP + ["method"], key=in_method_order)
    out = rows[GROUP + ["method"]].copy()
    out["label"] = [label_of(m, f) for m, f in zip(out["method"], out["nonlinear"])]
    for op in (*paper.OPS, "Other"):
        out[f"lan_{op}"] = _metric(rows, f"time_s/lan/{op}")
    out["time_lan_s"] = _metric(rows, "time_s/lan")
    out["comm_gb"] = _metric(rows, "comm_mb/total") / 1024.0
    out["inputs"] = _metric(rows, "examples/secure")
    out["secure_run"] = rows["run_id"]
    return out.reset_index(drop=True)


def reduce_ceiling(total: Any, reducible: Any) -> Any:
    """``T / (T − T_reducible)``: a run's speed-up if every program Π_reduce can touch cost nothing
    (``protocols.meter.CostReport.reducible``); floats or Series, NaN where either is missing."""
    return total / (total - reducible)
