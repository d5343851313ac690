"""Synthetic task determinism; a tiny training run learns it and prunes tokens."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertTokenizerFast

from models.data import load_glue
from models.synthetic import make_examples, tiny_bert_config, write_synthetic_task, write_tiny_checkpoint
from models.training import FinetuneConfig, evaluate, finetune
from models.weights import load_checkpoint, load_hf_bert


def test_deterministic_and_tokenizer(tmp_path: Path) -> None:
    assert make_examples(50, seed=3) == make_examples(50, seed=3) != make_examples(50, seed=4)
    a, b = write_synthetic_task(tmp_path / "a", seed=1), write_synthetic_task(tmp_path / "b", seed=1)
    assert (a / "SYNTHETIC/train.tsv").read_bytes() == (b / "SYNTHETIC/train.tsv").read_bytes()
    tok = BertTokenizerFast.from_pretrained(str(a))
    assert isinstance(AutoTokenizer.from_pretrained(str(a)), BertTokenizerFast)
    ids = tok("w3 good1 bad2")["input_ids"]
    assert tok.unk_token_id not in ids and len(ids) == 5
    assert tiny_bert_config().vocab_size == tok.vocab_size


def test_tiny_training_learns_and_prunes(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    d = write_tiny_checkpoint(tmp_path / "ck", seed=0)
    data = load_glue("synthetic", d, d, max_length=32, cache_dir=str(tmp_path / "cache"))
    m, _ = load_hf_bert(d)
    base = finetune(m, data["train"], data["dev"], "synthetic",
                    FinetuneConfig(method="none", epochs=5, lr=1e-3, batch_size=32, progress=False))
    assert base.eval.metrics["accuracy"] > 90
    logs: list[tuple[dict[str, float], int]] = []
    r = finetune(m, data["train"], data["dev"], "synthetic",
                 FinetuneConfig(method="prune", epochs=1, hard_epochs=0.5, lr=2e-4, threshold_lr=2e-3,
                                lambda_=0.2, batch_size=32, progress=False),
                 log_metrics=lambda d_, s: logs.append((d_, s)))
    assert r.eval.metrics["accuracy"] > 90
    n = r.eval.n0
    assert n == 32 and max(r.eval.kept_tokens) < n and r.eval.kept_tokens[-1] < 8  # signals + CLS
    assert any("tokens_kept/layer_1" in d_ for d_, _ in logs)
    assert all(b >= t for t, b in zip(r.thresholds.theta, r.thresholds.beta))
    # the artifact reproduces the evaluation after a save/load round trip
    from models.weights import save_checkpoint
    save_checkpoint(m, tmp_path / "out", r.thresholds, tokenizer_dir=d)
    m2, th = load_checkpoint(tmp_path / "out")
    ev = evaluate(m2, data["dev"], "synthetic", "prune")
    assert th == r.thresholds and ev.kept_tokens == r.eval.kept_tokens


def test_make_synthetic_spec(tmp_path: Path) -> None:
    from models.synthetic import SyntheticSpec, make_synthetic

    raw, tok_dir = make_synthetic(SyntheticSpec(n_train=20, n_dev=10, seq_len=12, n_signal=3, seed=5), tmp_path)
    assert len(raw["train"]) == 20 and len(raw["dev"]) == 10
    assert all(len(t.split()) <= 12 for t in raw["train"]["text_a"])
    assert BertTokenizerFast.from_pretrained(str(tok_dir)).vocab_size == tiny_bert_config().vocab_size


def test_baseline_continues_for_the_candidates_budget(tmp_path: Path) -> None:
    """``continue_unpruned`` trains exactly a candidate's soft + hard steps; a prune_reduce
    candidate learns β (it moves off its start β = beta_factor·θ, and stays ≥ θ)."""
    from models.training import continue_unpruned, phase_steps

    torch.set_num_threads(1)
    cand = FinetuneConfig(method="prune_reduce", epochs=0.5, hard_epochs=0.25, max_steps=4, hard_max_steps=2,
                          batch_size=32, lr=2e-4, threshold_lr=5e-2, beta_lambda=0.5, temperature=0.05,
                          ops="emulated", eval_every=1, progress=False)
    assert [phase_steps(cand, 10, p) for p in ("soft", "hard", "continue")] == [4, 2, 6]
    assert phase_steps(FinetuneConfig(epochs=0.5, hard_epochs=0.25), 10, "continue") == 5 + 3
    d = write_tiny_checkpoint(tmp_path / "ck", seed=0)
    data = load_glue("synthetic", d, d, max_length=32, cache_dir=str(tmp_path / "cache"), max_train=400)
    base, _ = load_hf_bert(d)
    finetune(base, data["train"], data["dev"], "synthetic", FinetuneConfig(method="none", max_steps=8, progress=False))
    cont = continue_unpruned(base, data["train"], data["dev"], "synthetic", cand)
    assert [int(h["step"]) for h in cont.history] == [1, 2, 3, 4, 5, 6]
    start = FinetuneConfig(**{**cand.__dict__, "max_steps": 0})
    r0 = finetune(load_hf_bert(d)[0], data["train"], data["dev"], "synthetic", start)   # no soft step: β = 2θ
    r = finetune(load_hf_bert(d)[0], data["train"], data["dev"], "synthetic", cand)
    assert r0.thresholds.beta == pytest.approx([2 * t for t in r0.thresholds.theta])
    assert r.thresholds.criterion == "relative"
    assert all(b >= t for t, b in zip(r.thresholds.theta, r.thresholds.beta))
    # β moved by its own gradient: off its start 2·θ_init on a layer where the β ≥ θ clamp is not active
    moved = [abs(b - 2 * t0) for t0, t, b in zip(r0.thresholds.theta, r.thresholds.theta, r.thresholds.beta) if b > t]
    assert moved and max(moved) > 1e-3


@pytest.mark.parametrize("phase, expect_eval", [("base", 1), ("continue", 2)])
def test_only_the_base_phase_restores_its_best_validation_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                phase: str, expect_eval: int) -> None:
    """Validation metrics 50, 70, 60 at three evaluations: the base phase (epochs chosen on val)
    ends with the weights and evaluation of the second, ``continue`` with its last, like a candidate."""
    from models import training
    from models.training import EvalResult, _run_phase

    torch.set_num_threads(1)
    d = write_tiny_checkpoint(tmp_path / "ck", seed=0)
    data = load_glue("synthetic", d, d, max_length=32, cache_dir=str(tmp_path / "cache"), max_train=96)
    model, _ = load_hf_bert(d)
    states: list[dict[str, torch.Tensor]] = []

    def scripted(m: Any, *args: Any, **kwargs: Any) -> EvalResult:
        states.append({k: v.clone() for k, v in m.state_dict().items()})
        return EvalResult({"metric": [50.0, 70.0, 60.0][len(states) - 1]}, [1.0], [1.0], 32)

    monkeypatch.setattr(training, "evaluate", scripted)
    cfg = FinetuneConfig(method="none", epochs=1.0, hard_epochs=0.0, batch_size=32, lr=1e-3, eval_every=1, progress=False)
    _, ev = _run_phase(model, data["train"], data["dev"], "synthetic", cfg, phase, None, 0, [])
    assert len(states) == 3 and ev is not None and ev.metrics["metric"] == [50.0, 70.0, 60.0][expect_eval]
    final = model.state_dict()
    assert all(torch.equal(final[k], states[expect_eval][k]) for k in final)
    assert not all(torch.equal(states[1][k], states[2][k]) for k in final)     # the weights did move after it


def test_length_batches_group_similar_lengths() -> None:
    """``LengthBatches``: every example at most once per epoch, full batches only, a new order each
    epoch, the same orders for the same seed, and batches far tighter in length than random ones."""
    from models.training import LengthBatches

    lengths = [int(x) for x in np.random.default_rng(0).integers(3, 120, size=1003)]
    sampler = LengthBatches(lengths, 16, torch.Generator().manual_seed(1), pool=10)
    first, second = list(sampler), list(sampler)
    assert len(first) == len(sampler) == 62 and all(len(b) == 16 for b in first)
    assert len({i for b in first for i in b}) == 62 * 16 and first != second
    assert list(LengthBatches(lengths, 16, torch.Generator().manual_seed(1), pool=10)) == first

    def spread(batches: list[list[int]]) -> float:
        return float(np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]))

    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(2)).tolist()
    assert spread(first) < 0.2 * spread([shuffled[j:j + 16] for j in range(0, 62 * 16, 16)])
