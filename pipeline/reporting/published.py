"""Published figures printed beside ours: dev metrics of unpruned models of MiniLM-L6's size beside
our baselines (Table 2), and other engines' published pruning speed-ups (Table 1).

A baseline's dev metric means little without what a model of its size reaches when fine-tuned
well. The closest published, peer-reviewed numbers are DistilBERT's (6 layers like MiniLM-L6, but
768 wide where MiniLM-L6 is 384: about 4x its parameters outside the embeddings), GLUE dev, median of 5
runs (Sanh et al., 2019, "DistilBERT, a distilled version of BERT", Table 1; IMDB test accuracy
from its Table 2), in percent. The paper does not name the metric of its MRPC and STS-B columns
(F1 or accuracy; Pearson or Spearman), so those cells say "score".
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping


@dataclass(frozen=True)
class PublishedMetric:
    """One published dev (IMDB: test) value: the metric's value (%), its name and the model."""

    value: float
    metric: str
    model: str

    def label(self) -> str:
        """``"91.3 acc (DistilBERT-6L)"``: what a table cell prints."""
        return f"{self.value:g} {self.metric} ({self.model})"


DISTILBERT = "DistilBERT-6L"

PUBLISHED_DEV: Mapping[str, PublishedMetric] = MappingProxyType({
    "sst2": PublishedMetric(91.3, "acc", DISTILBERT),
    "mrpc": PublishedMetric(87.5, "score", DISTILBERT),
    "stsb": PublishedMetric(86.9, "score", DISTILBERT),
    "rte": PublishedMetric(59.9, "acc", DISTILBERT),
    "cola": PublishedMetric(51.3, "MCC", DISTILBERT),
    "qnli": PublishedMetric(89.2, "acc", DISTILBERT),
    "mnli": PublishedMetric(82.2, "acc", DISTILBERT),
    "imdb": PublishedMetric(92.82, "test acc", DISTILBERT),
})
"""Per task, the published unpruned value beside our unpruned baseline (module docstring)."""


PUBLISHED_SPEEDUP: Mapping[str, PublishedMetric] = MappingProxyType({
    "bumblebee": PublishedMetric(4.47, "× end to end", "SecDTD, token dropping on BumbleBee"),
})
"""Per non-linearity family, a published token-pruning speed-up over that family's own unpruned
engine, printed beside our pruned rows of the family: SecDTD (EuroS&P 2026) drops tokens
dynamically on BumbleBee's engine. BOLT's family has the paper's own figures (``paper``)."""


def published_speedup(family: str, method: str) -> str:
    """The published speed-up cell of a Table 1 row: ``PUBLISHED_SPEEDUP[family]`` on a pruned
    method's row (one with learned thresholds), else empty."""
    from models import methods

    cell = PUBLISHED_SPEEDUP.get(family)
    known = method in methods.names() and methods.get(method).thresholds
    return cell.label() if cell is not None and known else ""
