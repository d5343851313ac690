"""GLUE data (and IMDB reviews): a local tsv tree (GLUE's ``glue_data`` layout; IMDB as
``imdb/{train,test}.tsv``) or the Hugging Face hub, tokenised with the checkpoint's tokenizer,
cached by ``datasets``; task metrics.

Raw splits have columns ``text_a`` (``text_b`` for pair tasks) and ``label``
(int; float for STS-B). Tokenised splits add ``input_ids``, ``attention_mask``,
``token_type_ids`` (each ``[max_length]``, padded) in torch format.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

Truncation = Literal["truncate", "reject"]


def _rank(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(len(x), dtype=float)
    xs = x[order]
    i = 0
    while i < len(x):  # average ranks of ties
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        r[order[i: j + 1]] = (i + j) / 2.0
        i = j + 1
    return r


def _counts(p: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """Binary confusion counts (tp, fp, fn, tn), class 1 positive."""
    return (float(((p == 1) & (y == 1)).sum()), float(((p == 1) & (y == 0)).sum()),
            float(((p == 0) & (y == 1)).sum()), float(((p == 0) & (y == 0)).sum()))


def _f1(p: np.ndarray, y: np.ndarray) -> float:
    tp, fp, fn, _ = _counts(p, y)
    return 200 * tp / max(2 * tp + fp + fn, 1e-9)


def _mcc(p: np.ndarray, y: np.ndarray) -> float:
    tp, fp, fn, tn = _counts(p, y)
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / den) * 100 if den > 0 else 0.0


METRICS: dict[str, Any] = {
    "accuracy": lambda p, y: float((p == y).mean()) * 100,
    "f1": _f1,
    "mcc": _mcc,
    "pearson": lambda p, y: float(np.corrcoef(p, y)[0, 1]) * 100,
    "spearman": lambda p, y: float(np.corrcoef(_rank(p), _rank(y))[0, 1]) * 100,
}
"""Metric name → ``f(preds, labels) -> percent`` (``[N]`` arrays each)."""
REGRESSION_METRICS = ("pearson", "spearman")


@dataclass(frozen=True)
class TaskSpec:
    """A classification or regression task over tsv files in GLUE's layout: ``folder`` under the data
    directory with the split ``files`` (``train``, ``dev``), the ``text_cols`` (one, or two for a
    sentence pair) and ``label_col`` (read with ``QUOTE_NONE``; ``header=False``: the file's
    ``column_names``), ``num_labels`` (1: regression), ``label_map`` (label strings to class ids),
    the primary ``metric`` and the ``metrics`` reported beside it (``METRICS`` keys), ``label`` (its
    name in reports), and where the Hugging Face hub has it (``hub_*``). Built-in tasks are
    ``TASKS``; a new one is declared in its data config (``conf/data/<task>.yaml``, ``spec:``)."""

    name: str
    folder: str
    files: dict[str, str]
    text_cols: tuple[str, ...]
    label_col: str
    num_labels: int
    metric: str
    header: bool = True
    column_names: tuple[str, ...] | None = None
    label_map: dict[str, int] | None = None
    hub_cols: tuple[str, ...] = ("sentence",)
    hub_splits: tuple[tuple[str, str], ...] = (("train", "train"), ("dev", "validation"))
    hub_dataset: tuple[str, ...] = ("nyu-mll/glue",)  # ``load_dataset`` path (+ config: the task name)
    metrics: tuple[str, ...] = ()
    label: str = ""

    def __post_init__(self) -> None:
        for name in (self.metric, *self.metrics):
            if name not in METRICS:
                raise ValueError(f"task {self.name}: unknown metric {name!r}; expected one of {sorted(METRICS)}")
        if (self.num_labels == 1) != (self.metric in REGRESSION_METRICS):
            raise ValueError(f"task {self.name}: metric {self.metric!r} does not fit num_labels={self.num_labels}")
        if not 1 <= len(self.text_cols) <= 2 or set(self.files) < {"train", "dev"}:
            raise ValueError(f"task {self.name}: expected 1 or 2 text_cols and files for train and dev, got "
                             f"{list(self.text_cols)} and {sorted(self.files)}")

    @property
    def dev_metrics(self) -> tuple[str, ...]:
        """The primary metric, then the others, each once."""
        return tuple(dict.fromkeys((self.metric, *self.metrics)))

    @property
    def display(self) -> str:
        """The task's name in reports."""
        return self.label or self.folder

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TaskSpec":
        """From a config mapping (lists for tuples, ``hub_splits`` as ``[[ours, hub], ...]``);
        ``ValueError`` naming an unknown or missing field."""
        known = set(cls.__dataclass_fields__)
        if set(d) - known or {"name", "folder", "files", "text_cols", "label_col", "num_labels", "metric"} - set(d):
            raise ValueError(f"task spec: unknown fields {sorted(set(d) - known)}, missing "
                             f"{sorted({'name', 'folder', 'files', 'text_cols', 'label_col', 'num_labels', 'metric'} - set(d))}")
        tuples = {k: tuple(tuple(x) if isinstance(x, (list, tuple)) else x for x in v)
                  for k, v in d.items() if isinstance(v, (list, tuple))}
        return cls(**{**d, **tuples, "files": dict(d["files"]),
                      "label_map": dict(d["label_map"]) if d.get("label_map") else None})


_NLI = {"entailment": 0, "not_entailment": 1}
TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("sst2", "SST-2", {"train": "train.tsv", "dev": "dev.tsv"}, ("sentence",), "label", 2, "accuracy"),
    "mrpc": TaskSpec("mrpc", "MRPC", {"train": "train.tsv", "dev": "dev.tsv"}, ("#1 String", "#2 String"),
                     "Quality", 2, "f1", hub_cols=("sentence1", "sentence2"), metrics=("accuracy",)),
    "rte": TaskSpec("rte", "RTE", {"train": "train.tsv", "dev": "dev.tsv"}, ("sentence1", "sentence2"),
                    "label", 2, "accuracy", label_map=_NLI, hub_cols=("sentence1", "sentence2")),
    "qnli": TaskSpec("qnli", "QNLI", {"train": "train.tsv", "dev": "dev.tsv"}, ("question", "sentence"),
                     "label", 2, "accuracy", label_map=_NLI, hub_cols=("question", "sentence")),
    "stsb": TaskSpec("stsb", "STS-B", {"train": "train.tsv", "dev": "dev.tsv"}, ("sentence1", "sentence2"),
                     "score", 1, "pearson", hub_cols=("sentence1", "sentence2"), metrics=("spearman",)),
    "mnli": TaskSpec("mnli", "MNLI", {"train": "train.tsv", "dev": "dev_matched.tsv"}, ("sentence1", "sentence2"),
                     "gold_label", 3, "accuracy", label_map={"entailment": 0, "neutral": 1, "contradiction": 2},
                     hub_cols=("premise", "hypothesis"),
                     hub_splits=(("train", "train"), ("dev", "validation_matched"))),
    "cola": TaskSpec("cola", "CoLA", {"train": "train.tsv", "dev": "dev.tsv"}, ("sentence",), "label", 2,
                     "accuracy", header=False, column_names=("source", "label", "original_mark", "sentence"),
                     metrics=("mcc",)),
    # IMDB movie reviews (Maas et al. 2011; 25k train / 25k test, rows grouped by label: subsets are
    # shuffled first); "dev" is the test split. Long inputs: 12-13 % exceed 400 words.
    "imdb": TaskSpec("imdb", "imdb", {"train": "train.tsv", "dev": "test.tsv"}, ("sentence",), "label", 2,
                     "accuracy", hub_cols=("text",), hub_splits=(("train", "train"), ("dev", "test")),
                     hub_dataset=("stanfordnlp/imdb",), label="IMDB"),
    # offline default task written by models.synthetic.write_synthetic_task (GLUE layout)
    "synthetic": TaskSpec("synthetic", "SYNTHETIC", {"train": "train.tsv", "dev": "dev.tsv"}, ("sentence",),
                          "label", 2, "accuracy"),
}


def get_task(task: str) -> TaskSpec:
    """Spec of ``task`` (a built-in one of ``TASKS`` or one ``register_task`` added); clear error otherwise."""
    if task not in TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; expected one of {sorted(TASKS)}")
    return TASKS[task]


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add ``spec`` (a task declared in a data config) to ``TASKS``; registering the same spec again is a
    no-op, another spec under a taken name a ``ValueError``. Returns it."""
    if TASKS.get(spec.name, spec) != spec:
        raise ValueError(f"task {spec.name!r} is already defined differently: {TASKS[spec.name]}")
    TASKS[spec.name] = spec
    return spec


def _number(y: Any) -> float:
    """``y`` as a float, NaN when it is not a number."""
    try:
        return float(y)
    except (TypeError, ValueError):
        return math.nan


def _label(y: Any, spec: TaskSpec, where: str) -> int | float:
    """``y`` as ``spec``'s label: a finite float (regression), a ``label_map`` key, or an integer
    class id in ``[0, num_labels)``; ``ValueError`` naming ``where`` and the value otherwise."""
    number = _number(y)
    if spec.num_labels == 1:
        if not math.isfinite(number):
            raise ValueError(f"{where}: label {y!r} is not a finite number ({spec.name} is a regression task)")
        return number
    if spec.label_map is not None and isinstance(y, str) and y in spec.label_map:
        return spec.label_map[y]
    if not (number.is_integer() and 0 <= number < spec.num_labels):
        names = sorted(spec.label_map) if spec.label_map else []
        expected = f"one of {names} or " if names else ""
        raise ValueError(f"{where}: unknown label {y!r} for {spec.name}; expected {expected}an integer in "
                         f"[0, {spec.num_labels})")
    return int(number)


def _normalise(ds: Any, spec: TaskSpec, cols: tuple[str, ...], label_col: str, where: str, first_line: int = 0) -> Any:
    """Rows as ``text_a`` (``text_b``) and ``label``; errors name ``where``, the row and its line in
    the file (``first_line``: the file line of row 0; 0 for hub data, which has none)."""
    names = ["text_a", "text_b"][: len(cols)]

    def fix(ex: dict[str, Any], i: int) -> dict[str, Any]:
        out: dict[str, Any] = {n: str(ex[c]).strip() for n, c in zip(names, cols)}
        line = f", line {first_line + i}" if first_line else ""
        out["label"] = _label(ex[label_col], spec, f"{where} row {i}{line}")
        return out

    return ds.map(fix, with_indices=True, remove_columns=ds.column_names, desc=f"normalise {spec.name}")


def _check_text(path: Path, header: bool) -> None:
    """``ValueError`` unless ``path`` is UTF-8 text with at least one data row (naming the file, and
    the line and bytes of the first undecodable sequence)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(f"{path}: not UTF-8 text: bytes {raw[e.start:e.end + 3]!r} at line {line} "
                         f"(byte {e.start}); re-encode the file as UTF-8") from None
    rows = [line for line in text.splitlines() if line.strip()]
    if len(rows) <= int(header):
        raise ValueError(f"{path}: no data rows (an empty split has no metric)")


def load_glue_raw(
    task: str, glue_dir: str | Path | None = None, splits: tuple[str, ...] = ("train", "dev"),
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Raw splits ``{"train": Dataset, "dev": Dataset}`` of ``task``.

    From ``glue_dir/<Folder>/<file>.tsv`` when ``glue_dir`` is given (``FileNotFoundError``
    naming the missing file otherwise; read with ``QUOTE_NONE``), else from the hub
    (``load_dataset("nyu-mll/glue", task)``, IMDB ``load_dataset("stanfordnlp/imdb")``; needs network).
    """
    import datasets

    spec = get_task(task)
    out: dict[str, Any] = {}
    if glue_dir is None:
        hub = dict(spec.hub_splits)
        for s in splits:
            path = spec.hub_dataset + ((task,) if spec.hub_dataset == ("nyu-mll/glue",) else ())
            try:
                ds = datasets.load_dataset(*path, split=hub[s], cache_dir=str(cache_dir) if cache_dir else None)
            except ConnectionError as e:
                raise ConnectionError(f"{task}: could not load {'/'.join(path)} from the Hugging Face hub ({e}); "
                                      "pass glue_dir, a local copy in GLUE's tsv layout") from e
            out[s] = _normalise(ds, spec, spec.hub_cols, "label", f"hub {'/'.join(path)}:{hub[s]}")
        return out
    for s in splits:
        if s not in spec.files:
            raise ValueError(f"{task}: unknown split {s!r}; expected {sorted(spec.files)}")
        path = Path(glue_dir) / spec.folder / spec.files[s]
        if not path.is_file():
            raise FileNotFoundError(f"GLUE {task} {s} split: missing file {path}")
        _check_text(path, spec.header)
        kw: dict[str, Any] = dict(delimiter="\t", quoting=csv.QUOTE_NONE, encoding="utf-8-sig",
                                  keep_default_na=False, na_filter=False)
        if not spec.header:
            kw["column_names"] = list(spec.column_names or ())
        ds = datasets.load_dataset("csv", data_files={s: str(path)}, split=s,
                                   cache_dir=str(cache_dir) if cache_dir else None, **kw)
        missing = [c for c in (*spec.text_cols, spec.label_col) if c not in ds.column_names]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {ds.column_names}")
        out[s] = _normalise(ds, spec, spec.text_cols, spec.label_col, str(path), first_line=2 if spec.header else 1)
    return out


def tokenize_split(
    ds: Any, tokenizer: Any, max_length: int = 128, truncation: Truncation = "truncate",
    split_name: str = "split",
) -> Any:
    """Tokenise a raw split to ``max_length`` (padded); ``truncation="reject"`` raises
    ``ValueError`` naming the first example (index and text) longer than ``max_length``."""
    if truncation not in ("truncate", "reject"):
        raise ValueError(f"truncation must be 'truncate' or 'reject', got {truncation!r}")
    pair = "text_b" in ds.column_names

    def enc(batch: dict[str, list[Any]], idx: list[int]) -> dict[str, Any]:
        args = (batch["text_a"], batch["text_b"]) if pair else (batch["text_a"],)
        if truncation == "reject":
            lens = [len(x) for x in tokenizer(*args, truncation=False)["input_ids"]]
            for i, n in zip(idx, lens):
                if n > max_length:
                    j = idx.index(i)
                    txt = batch["text_a"][j] + (" ||| " + batch["text_b"][j] if pair else "")
                    raise ValueError(f"{split_name} example {i} has {n} tokens > max_length "
                                     f"{max_length} (truncation='reject'): {txt[:200]!r}")
        return dict(tokenizer(*args, truncation=True, max_length=max_length, padding="max_length",
                              return_token_type_ids=True))

    out = ds.map(enc, batched=True, with_indices=True, desc=f"tokenise {split_name}")
    out.set_format("torch", columns=["input_ids", "attention_mask", "token_type_ids", "label"])
    return out


def load_glue(
    task: str, tokenizer_dir: str | Path, glue_dir: str | Path | None = None, max_length: int = 128,
    truncation: Truncation = "truncate", splits: tuple[str, ...] = ("train", "dev"),
    cache_dir: str | Path | None = None, max_train: int | None = None, seed: int = 0,
) -> dict[str, Any]:
    """Tokenised torch-format splits of ``task`` with the tokenizer in ``tokenizer_dir``.

    ``max_train``: keep a seeded random subset of that many training examples.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    raw = load_glue_raw(task, glue_dir, splits, cache_dir)
    if max_train is not None and "train" in raw and len(raw["train"]) > max_train:
        raw["train"] = raw["train"].shuffle(seed=seed).select(range(max_train))
    return {s: tokenize_split(d, tok, max_length, truncation, f"{task}/{s}") for s, d in raw.items()}


def compute_metrics(task: str, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's ``dev_metrics`` in percent (``preds``: scores for a regression task, class ids
    otherwise), and ``metric``: the primary one."""
    spec = get_task(task)
    p, y = np.asarray(preds, dtype=float).ravel(), np.asarray(labels, dtype=float).ravel()
    out = {name: METRICS[name](p, y) for name in spec.dev_metrics}
    out["metric"] = out[spec.metric]
    return out
