"""Adding a pruning method is one module plus one registry entry: the toy ``topk_quarter``
(``tests/methods/topk_quarter.py``) runs, registered from this test and touching no other file,
through the torch emulation, plain JAX, SEMI2K, the pipeline's search and secure_eval, and
``report=table1``."""
from __future__ import annotations

from typing import Iterator

import mlflow
import numpy as np
import pytest
import torch

from models import methods
from models.bert import BertClassifier
from models.config import BertConfig, OpsConfig
from protocols.model_spec import PruningSpec, TransformerSpec
from protocols.plaintext import random_weights
from protocols.secure_model import plaintext_batch, run_batch
from protocols.session import SessionSpec, TwoPartySession
from tests.methods import topk_quarter

TINY = dict(vocab_size=50, hidden=32, layers=2, heads=2, intermediate=64, max_positions=16)
EXAMPLES = [(np.array([1, 5, 9, 3, 7, 2, 11, 4, 8, 6, 0, 0]), np.array([1.0] * 10 + [0.0] * 2), None),
            (np.array([1, 12, 13, 14, 15, 16, 17, 0, 0, 0, 0, 0]), np.array([1.0] * 7 + [0.0] * 5), None)]


@pytest.fixture
def toy() -> Iterator[methods.MethodSpec]:
    spec = methods.register(topk_quarter.SPEC)
    yield spec
    methods.unregister(spec.name)


def _torch_kept(spec: TransformerSpec, w: dict[str, np.ndarray]) -> list[list[list[int]]]:
    """Per example, the positions present after each layer in the torch emulation (hard masks)."""
    model = BertClassifier(BertConfig(**TINY), OpsConfig("emulated")).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()}, strict=False)
    out = []
    for ids, mask, _ in EXAMPLES:
        with torch.no_grad():
            res = model(torch.as_tensor(ids)[None], torch.as_tensor(mask)[None], method="topk_quarter")
        out.append([torch.nonzero(m[0]).flatten().tolist() for m in res.present])
    return out


def test_unknown_method_is_refused_everywhere() -> None:
    with pytest.raises(ValueError, match="unknown pruning method 'topk_quarter'"):
        PruningSpec("topk_quarter")
    with pytest.raises(ValueError, match="already registered"):
        methods.register(methods.get("prune"))


def test_toy_method_in_torch_plain_jax_and_semi2k(toy: methods.MethodSpec) -> None:
    """The same kept positions in the three executions (the top quarter of the tokens present, [CLS]
    first: 12 → 3 → 1 and 12 → 3 → 1), and the secure logits within fixed-point noise of plain JAX."""
    spec = TransformerSpec(**TINY)
    w = random_weights(spec, seed=4, scale=1.0)
    pruning = PruningSpec(toy.name)
    plain = plaintext_batch(spec, w, EXAMPLES, pruning)
    expected = _torch_kept(spec, w)
    for res, positions in zip(plain, expected):
        assert res.kept_per_layer == [3, 1] and [sorted(p) for p in res.kept_positions] == positions
        assert positions[0][0] == 0 and positions[1] == [0]
    with TwoPartySession(SessionSpec(protocol="SEMI2K")) as s:
        secure = run_batch(s, spec, w, EXAMPLES, pruning, trace_positions=True)
        opened = [r.purpose for r in s.reveals]
    for got, ref in zip(secure, plain):
        assert got.kept_positions == ref.kept_positions
        assert np.max(np.abs(got.logits - ref.logits)) < 2e-3 * max(1.0, float(np.max(np.abs(ref.logits))))
    assert "kept count" not in opened                     # its counts are public: nothing opened but logits


def test_toy_method_through_the_pipeline_and_table1(toy: methods.MethodSpec, compose_cfg, tmp_path, monkeypatch) -> None:
    """The embedded default chain (SEMI2K, threads) with the toy beside ``none``: the search scores it on
    dev, secure_eval runs it on the baseline's checkpoint with the torch twin's schedule (32 → 8 → 2
    tokens entering the layers), and table1 shows it under its label with its speed-up over unpruned."""
    from pipeline.runner import run_pipeline

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose_cfg("protocol=semi2k", "data.synthetic.n_train=600", "data.synthetic.n_dev=120",
                      "finetune.lambdas=[0.2]", "secure_eval.num_examples=1", "secure_eval.methods=[none,topk_quarter]")
    run_pipeline(cfg)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["cipherprune"])
    search = runs[runs["tags.stage"] == "search"].iloc[0]
    assert search["metrics.dev/topk_quarter/entering/layer_1"] == 8.0
    assert search["metrics.dev/topk_quarter/metric"] > 40.0
    by_method = runs[runs["tags.kind"] == "method"].set_index("tags.method")
    row = by_method.loc["topk_quarter"]
    assert row["status"] == "FINISHED" and row["metrics.agree/secure"] == 100.0
    assert [row[f"metrics.tokens_entering/layer_{i}"] for i in range(2)] == [32.0, 8.0]
    assert row["metrics.tokens_entering/secure_vs_emulated_max_abs_diff"] == 0
    assert row["metrics.comm_mb/total"] < by_method.loc["none", "metrics.comm_mb/total"]
    assert row["tags.checkpoint_run"] == by_method.loc["none", "tags.checkpoint_run"]    # the baseline's
    table = (tmp_path / "reports" / "default" / "table1.md").read_text()
    assert "Top quarter" in table and "BOLT w/o WE" in table
