"""Synthetic task determinism; a tiny training run learns it and prunes tokens."""
from __future__ import annotations

from pathlib import Path

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
    assert any("kept_tokens/layer_1" in d_ for d_, _ in logs)
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


def test_run_glue_experiment_smoke(tmp_path: Path) -> None:
    import json

    from models.training import run_glue_experiment

    d = write_tiny_checkpoint(tmp_path / "ck", seed=0)
    quick = dict(batch_size=32, max_steps=3, hard_max_steps=2, progress=False)
    r = run_glue_experiment("synthetic", d, tmp_path / "out", glue_dir=d, max_length=32, max_train=200,
                            base_cfg=FinetuneConfig(method="none", **quick),
                            prune_cfg=FinetuneConfig(method="prune", **quick), lambdas=(0.1,),
                            cache_dir=str(tmp_path / "cache"))
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    for key in ("baseline", "bolt_we", "baseline/emulated", "prune_lambda0.1", "prune_lambda0.1/emulated"):
        assert key in r and key in saved
    assert (tmp_path / "out" / "prune_lambda0.1" / "thresholds.json").is_file()
