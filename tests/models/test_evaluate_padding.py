"""``evaluate`` cuts padding only where no result moves: a random 3-layer BERT with thresholds that
prune about half the real tokens, on 70 inputs of 4 to 31 real tokens padded to 32, scored by the
length-sorted, cut batches (``eval_batches``) and by a plain loop at the full padded length."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset

from models import methods
from models.bert import BertClassifier
from models.config import BertConfig, OpsConfig
from models.data import compute_metrics
from models.training import eval_batches, evaluate, init_thresholds

N0 = 32


@pytest.fixture(scope="module")
def setup() -> tuple[BertClassifier, Dataset]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    lengths = rng.integers(4, N0, size=70)
    ids = np.zeros((70, N0), dtype=np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(5, 100, size=n)
        ids[i, 0] = 1
    mask = (ids != 0).astype(np.int64)
    ds = Dataset.from_dict({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
                            "label": rng.uniform(0, 5, size=70).astype(np.float32)}).with_format("torch")
    model = BertClassifier(BertConfig(vocab_size=100, hidden=32, layers=3, heads=2, intermediate=64,
                                      max_positions=N0, num_labels=1))
    model.ops_cfg = OpsConfig("emulated")
    init_thresholds(model, ds, quantile=0.9)            # θ_l at the 30, 60, 90 % quantiles of real tokens' scores
    with torch.no_grad():
        model.pruning.beta.copy_(model.pruning.theta * 1.5)
    return model, ds


def _full_length(model: BertClassifier, ds: Dataset, method: str) -> tuple[dict[str, float], list[float], list[float]]:
    """The reference: every batch at the full padded length, in order."""
    model.eval()
    with torch.no_grad():
        b = ds[:]
        out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], method=method, mask_mode="hard")
    metrics = compute_metrics("stsb", out.logits.squeeze(-1).numpy(), b["label"].numpy())
    return metrics, out.kept_tokens.mean(0).tolist(), out.keep_ratio.tolist()


@pytest.mark.parametrize("method", methods.builtin_names())
def test_evaluate_gives_the_full_length_results(setup: tuple, method: str) -> None:
    model, ds = setup
    ev = evaluate(model, ds, "stsb", method, batch_size=16)
    metrics, kept, ratio = _full_length(model, ds, method)
    assert ev.n0 == N0 and ev.metrics["pearson"] == pytest.approx(metrics["pearson"], abs=1e-3)   # percent points
    assert ev.kept_tokens == pytest.approx(kept, abs=1e-4) and ev.keep_ratio == pytest.approx(ratio, abs=1e-5)
    if methods.get(method).thresholds:
        assert 0.2 < ev.keep_ratio[0] < 0.9 and ev.kept_tokens[0] < N0 / 2    # real tokens pruned, padding gone
    if method == "none":
        assert ev.kept_tokens == [N0] * 3


@pytest.mark.parametrize("method, cut", [("none", True), ("bolt_we", False), ("prune", True), ("prune_reduce", True)])
def test_only_methods_that_ignore_padding_are_cut(setup: tuple, method: str, cut: bool) -> None:
    _, ds = setup
    widths = [b["input_ids"].shape[1] for b, _ in eval_batches(ds, method, 16)]
    assert len(widths) == 5 and (max(widths) < N0 if cut else widths == [N0] * 5)
    if cut:
        assert widths == sorted(widths)              # by length: each batch pads to about its own length
