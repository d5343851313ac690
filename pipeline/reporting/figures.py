"""The paper's figures from tidy run frames (matplotlib, Agg backend), ours beside the paper's.

Each builder writes PNGs under ``out_dir`` and returns their paths, or raises
:class:`FigureSkipped` with the reason when its data is absent.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from models import methods as registry
from models.approx import DEFAULT_FAMILY
from pipeline.reporting import paper
from pipeline.reporting.tables import GROUP, color_of, in_method_order, label_of, newest

CANDIDATE_GROUP = ["model", "task", "max_length"]  # fine-tuning does not depend on the protocol
LINESTYLES = ("-", "--", ":", "-.")
OP_COLORS = {"Linear": "#4c72b0", "Softmax": "#dd8452", "GELU": "#55a868", "LayerNorm": "#c44e52",
             "Prune": "#8172b3", "Reduce": "#937860", "Other": "#bbbbbb"}


class FigureSkipped(Exception):
    """The figure's data is absent; the message says what is missing."""


def _layer_columns(frame: pd.DataFrame, prefix: str = "tokens_entering/layer_") -> list[str]:
    cols = [c for c in frame.columns if c.startswith(prefix) and c[len(prefix):].isdigit()]
    return sorted(cols, key=lambda c: int(c[len(prefix):]))


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not getattr(fig, "_laid_out", False):
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _slug(*parts: object) -> str:
    return "_".join(str(p).replace("/", "-").replace(" ", "-") for p in parts)


def kept_tokens(methods: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Tokens entering each layer per (model, length, method), absolute and as a ratio of
    the input length over relative depth, beside the paper's BERT-base schedule."""
    cols = _layer_columns(methods) if not methods.empty else []
    if not cols:
        raise FigureSkipped("no secure_eval run logged tokens_entering/layer_{i}")
    rows = newest(methods, GROUP + ["method"])
    rows = rows.sort_values(GROUP + ["method"], key=in_method_order)
    fig, (ax_abs, ax_rel) = plt.subplots(1, 2, figsize=(13, 5.5))
    ref = np.asarray(paper.KEPT_TOKENS["bert_base"], dtype=float)
    styles = {key: LINESTYLES[i % len(LINESTYLES)] for i, key in enumerate(rows[GROUP].drop_duplicates().itertuples(index=False))}
    for _, row in rows.iterrows():
        vals = row[cols].astype(float).dropna().to_numpy()
        if vals.size == 0:
            continue
        style = {"marker": "o", "ms": 3, "ls": styles[tuple(row[GROUP])], "color": color_of(row["method"]),
                 "label": f"{row['model']}/{row['task']}/L={row['max_length']}/{row['protocol']} {row['method']}"}
        ax_abs.plot(np.arange(vals.size), vals, **style)
        ax_rel.plot(np.arange(vals.size) / vals.size, vals / vals[0], **style)
    for length in sorted(rows["max_length"].unique()):
        ax_abs.plot(np.arange(ref.size), ref * length / paper.PAPER_MAX_LENGTH, color="k", lw=2, alpha=0.6,
                    label=f"paper BERT-base CipherPrune (scaled to {length})")
    ax_rel.plot(np.arange(ref.size) / ref.size, ref / ref[0], color="k", lw=2, alpha=0.6,
                label="paper BERT-base CipherPrune")
    ax_abs.set(xlabel="layer", ylabel="tokens entering layer", title="Kept tokens per layer")
    ax_rel.set(xlabel="relative depth (layer / layers)", ylabel="kept / input length",
               title="Keep ratio (paper: 128-55-54-52-49-45-24-14-5-2-1-1)")
    handles, labels = ax_abs.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=6, frameon=False)
    fig.tight_layout(rect=(0, 0.04 + 0.025 * math.ceil(len(labels) / 4), 1, 1))
    fig._laid_out = True
    return [_save(fig, out_dir / "kept_tokens.png")]


def _stack(ax: Any, frame: pd.DataFrame, prefix: str, ylabel: str, title: str) -> bool:
    ops = [op for op in (*paper.OPS, "Other") if f"{prefix}{op}" in frame]
    if not ops:
        return False
    bottom = np.zeros(len(frame))
    x = np.arange(len(frame))
    for op in ops:
        vals = frame[f"{prefix}{op}"].astype(float).fillna(0.0).to_numpy()
        ax.bar(x, vals, bottom=bottom, color=OP_COLORS[op], label=op)
        bottom += vals
    ax.set_xticks(x, [label_of(m) for m in frame["method"]], rotation=20, fontsize=7)
    ax.set(ylabel=ylabel, title=title)
    ax.margins(y=0.08)
    return True


def breakdown(methods: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Stacked LAN / WAN time and communication by op class per method, one PNG per
    (model, task, length), with the paper's Figure 10 (BERT-base, LAN) beside it."""
    if methods.empty or not any(c.startswith(("time_s/lan/", "comm_mb/")) for c in methods):
        raise FigureSkipped("no secure_eval run logged time_s/lan/{op} or comm_mb/{op}")
    rows = newest(methods, GROUP + ["method"])
    paths: list[Path] = []
    for (model, task, length, protocol, family), grp in rows.groupby(GROUP):
        grp = grp.sort_values("method", key=in_method_order)
        fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
        drawn = [_stack(axes[0], grp, "time_s/lan/", "s per inference", "Ours: LAN time"),
                 _stack(axes[1], grp, "time_s/wan/", "s per inference", "Ours: WAN time"),
                 _stack(axes[2], grp, "comm_mb/", "MB per inference", "Ours: communication")]
        if not any(drawn):
            plt.close(fig)
            continue
        fig10 = pd.DataFrame([{"method": m, **{f"op/{k}": v for k, v in ops.items()}}
                              for m, ops in paper.BREAKDOWN_LAN_S.items()])
        _stack(axes[3], fig10, "op/", "s", "Paper Fig. 10: BERT-base LAN (128)")
        axes[0].legend(fontsize=7)
        fig.suptitle(f"Cost breakdown: {model}, {task}, {length} tokens, {protocol}, {family}'s non-linearities")
        named = (model, task, length, protocol, *(() if family == DEFAULT_FAMILY else (family,)))
        paths.append(_save(fig, out_dir / f"breakdown_{_slug(*named)}.png"))
    if not paths:
        raise FigureSkipped("no per-op cost metrics in any secure_eval run")
    return paths


def pareto_front(points: pd.DataFrame) -> pd.Series:
    """True for candidates on ``models.thresholds.pareto_front`` (the search stage's rule:
    non-dominated in accuracy up and kept tokens down; of exact duplicates the first)."""
    from models.thresholds import Candidate
    from models.thresholds import pareto_front as front

    cands = [Candidate(metric=float(a), cost=float(k), name=str(i))
             for i, a, k in zip(points.index, points["acc"], points["kept_tokens_mean"])]
    on_front = {c.name for c in front(cands)}
    return pd.Series([str(i) in on_front for i in points.index], index=points.index)


def _candidate_points(grp: pd.DataFrame, pareto_csv: pd.DataFrame | None) -> pd.DataFrame:
    """Pruned candidates with on_front / selected, from the search's pareto.csv if present."""
    pruned = grp[grp["method"] != registry.UNPRUNED]
    pts = pd.DataFrame({"run_id": pruned["run_id"], "acc": pruned.get("acc/val"),
                        "kept_tokens_mean": pruned.get("tokens_kept/mean")}).dropna(subset=["acc", "kept_tokens_mean"])
    if pareto_csv is not None and set(pts["run_id"]) & set(pareto_csv["run_id"]):
        flags = pareto_csv.set_index("run_id")[["on_front", "selected"]].astype(bool)
        pts = pts.join(flags, on="run_id")
        pts[["on_front", "selected"]] = pts[["on_front", "selected"]].fillna(False).astype(bool)
        pts.attrs["source"] = f"pareto.csv of search run {pareto_csv.attrs.get('search_run_id', '?')}"
    else:
        pts["on_front"] = pareto_front(pts) if not pts.empty else []
        pts["selected"] = False
        pts.attrs["source"] = "front computed from candidates"
    return pts


def pareto(candidates: pd.DataFrame, tables: Mapping[tuple[str, str, int], pd.DataFrame],
           out_dir: Path) -> list[Path]:
    """Validation metric vs mean kept tokens of the fine-tuning candidates, Pareto front highlighted,
    the search's pick starred, the unpruned baseline as a horizontal line."""
    if candidates.empty or not {"acc/val", "tokens_kept/mean"} <= set(candidates.columns):
        raise FigureSkipped("no FINISHED fine-tuning candidates with acc/val and tokens_kept/mean")
    groups = [(k, g) for k, g in candidates.groupby(CANDIDATE_GROUP) if (g["method"] != registry.UNPRUNED).any()]
    if not groups:
        raise FigureSkipped("no pruned fine-tuning candidates")
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), squeeze=False)
    for ax, ((model, task, length), grp) in zip(axes[0], groups):
        pts = _candidate_points(grp, tables.get((model, task, int(length))))
        ax.scatter(pts["kept_tokens_mean"], pts["acc"], c="#999999", label="candidate")
        front = pts[pts["on_front"]].sort_values("kept_tokens_mean")
        ax.plot(front["kept_tokens_mean"], front["acc"], "o-", c="#c44e52", label="Pareto front")
        sel = pts[pts["selected"]]
        ax.scatter(sel["kept_tokens_mean"], sel["acc"], marker="*", s=250, c="gold", edgecolors="k",
                   zorder=5, label="selected")
        for _, p in pts.iterrows():
            lam = grp.set_index("run_id").get("lambda", pd.Series(dtype=float)).get(p["run_id"], math.nan)
            if pd.notna(lam):
                ax.annotate(f"λ={lam:g}", (p["kept_tokens_mean"], p["acc"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        base = grp[grp["method"] == registry.UNPRUNED].get("acc/val")
        if base is not None and base.notna().any():
            ax.axhline(float(base.max()), ls="--", c="k", lw=1, label="unpruned baseline")
        ax.set(xlabel="mean kept tokens per layer", ylabel="validation metric",
               title=f"{model}, {task}, {length} tokens\n({pts.attrs['source']})")
        ax.title.set_fontsize(8)
        ax.legend(fontsize=7)
    return [_save(fig, out_dir / "pareto.png")]


def scaling(methods: pd.DataFrame, out_dir: Path) -> list[Path]:
    """LAN time per method at each max_length (e.g. 128 vs 512), speed-up vs ``none`` on top."""
    if methods.empty or "time_s/lan" not in methods:
        raise FigureSkipped("no secure_eval run logged time_s/lan")
    rows = newest(methods, GROUP + ["method"])
    groups = [(k, g) for k, g in rows.groupby(["model", "task", "protocol", "nonlinear"]) if g["max_length"].nunique() >= 2]
    if not groups:
        raise FigureSkipped("scaling needs secure_eval runs of one model and task at two or more max_length "
                            "values (e.g. `python -m pipeline -m experiment=scaling_512`)")
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.2), squeeze=False)
    for ax, ((model, task, protocol, family), grp) in zip(axes[0], groups):
        methods_here = grp.drop_duplicates("method").sort_values("method", key=in_method_order)["method"].tolist()
        lengths = sorted(grp["max_length"].unique())
        width = 0.8 / len(lengths)
        for j, length in enumerate(lengths):
            at = grp[grp["max_length"] == length].set_index("method")
            times = [float(at["time_s/lan"].get(m, math.nan)) for m in methods_here]
            x = np.arange(len(methods_here)) + j * width
            ax.bar(x, times, width, label=f"{length} tokens")
            base = float(at["time_s/lan"].get("none", math.nan))
            for xi, t in zip(x, times):
                if pd.notna(t) and pd.notna(base) and t > 0:
                    ax.annotate(f"{base / t:.1f}×", (xi, t), ha="center", fontsize=7,
                                xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(np.arange(len(methods_here)) + width * (len(lengths) - 1) / 2,
                      [label_of(m) for m in methods_here], fontsize=8)
        ax.set(ylabel="LAN time per inference (s)",
               title=f"{model}, {task}, {protocol}, {family}: scaling with length (× = speed-up vs BOLT w/o WE)\n"
                     f"paper (BERT-base): {paper.SPEEDUP_VS_NONE_BASE}× at 128, {paper.SPEEDUP_512}× at 512")
        ax.title.set_fontsize(9)
        ax.margins(y=0.1)
        ax.legend(fontsize=7, loc="upper right")
    return [_save(fig, out_dir / "scaling.png")]
