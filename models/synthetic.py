"""Embedded offline task: binary classification where the label is the majority polarity of
a few "signal" words hidden among many filler words (most tokens are prunable).

``write_synthetic_task(dir)`` writes, deterministically by seed, a tiny WordPiece vocabulary
(``vocab.txt`` + ``tokenizer_config.json``: ``BertTokenizerFast`` / ``AutoTokenizer`` load it)
and ``dir/SYNTHETIC/{train,dev}.tsv`` in SST-2's layout (``sentence\\tlabel``), so
``models.data.load_glue("synthetic", dir, dir)`` reads it. ``write_tiny_checkpoint`` adds a
random tiny BERT (config.json + model.safetensors) so ``dir`` is a full checkpoint.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.config import BertConfig

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
POSITIVE = tuple(f"good{i}" for i in range(4))
NEGATIVE = tuple(f"bad{i}" for i in range(4))
N_FILLER = 100


def vocab() -> list[str]:
    """The vocabulary, ids in list order (``[PAD]`` = 0)."""
    return [*SPECIALS, *POSITIVE, *NEGATIVE, *(f"w{i}" for i in range(N_FILLER))]


def tiny_bert_config(seq_len: int = 32, num_labels: int = 2) -> BertConfig:
    """Tiny random-BERT shape for offline runs and tests: 2 layers, hidden 64, 4 heads."""
    return BertConfig(vocab_size=len(vocab()), hidden=64, layers=2, heads=4, intermediate=128,
                      max_positions=max(seq_len, 32), num_labels=num_labels,
                      hidden_dropout=0.0, attention_dropout=0.0)


def make_examples(n: int, seed: int, seq_len: int = 27, n_signal: int = 3) -> list[tuple[str, int]]:
    """``n`` (sentence, label) pairs of at most ``seq_len`` words: fillers plus k signal words,
    k odd in ``1..n_signal``; label 1 iff most signal words are positive. Deterministic in
    ``seed``."""
    if n_signal < 1 or seq_len <= n_signal:
        raise ValueError(f"synthetic: need 1 <= n_signal < seq_len, got n_signal={n_signal}, seq_len={seq_len}")
    rng = random.Random(seed)
    ks = tuple(range(1, n_signal + 1, 2))
    hi = seq_len - n_signal
    out = []
    for _ in range(n):
        words = [f"w{rng.randrange(N_FILLER)}" for _ in range(rng.randint(min(8, hi), hi))]
        k = rng.choice(ks)
        pol = [rng.random() < 0.5 for _ in range(k)]
        for p in pol:
            words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if p else NEGATIVE))
        out.append((" ".join(words), int(sum(pol) * 2 > k)))
    return out


@dataclass(frozen=True)
class SyntheticSpec:
    """Size and shape of the synthetic task (``seq_len`` words at most, ≤ ``n_signal`` signals)."""

    n_train: int = 2000
    n_dev: int = 400
    seq_len: int = 27
    n_signal: int = 3
    seed: int = 0


def make_synthetic(spec: SyntheticSpec, out_dir: str | Path) -> tuple[dict[str, Any], Path]:
    """Raw ``{"train", "dev"}`` datasets (``text_a``, ``label``) and the tokenizer dir
    (``out_dir``, with the vocabulary and the tsv files written by :func:`write_synthetic_task`)."""
    import datasets

    d = write_synthetic_task(out_dir, spec.seed, spec.n_train, spec.n_dev, spec.seq_len, spec.n_signal)
    raw = {}
    for split, n, s in (("train", spec.n_train, spec.seed), ("dev", spec.n_dev, spec.seed + 10_007)):
        ex = make_examples(n, s, spec.seq_len, spec.n_signal)
        raw[split] = datasets.Dataset.from_dict({"text_a": [t for t, _ in ex], "label": [y for _, y in ex]})
    return raw, d


def write_synthetic_task(
    out_dir: str | Path, seed: int = 0, n_train: int = 2000, n_dev: int = 400, seq_len: int = 27, n_signal: int = 3
) -> Path:
    """Write vocab, tokenizer config and ``SYNTHETIC/{train,dev}.tsv`` under ``out_dir``."""
    d = Path(out_dir)
    (d / "SYNTHETIC").mkdir(parents=True, exist_ok=True)
    (d / "vocab.txt").write_text("\n".join(vocab()) + "\n")
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}))
    for split, n, s in (("train", n_train, seed), ("dev", n_dev, seed + 10_007)):
        rows = ["sentence\tlabel"] + [f"{t}\t{y}" for t, y in make_examples(n, s, seq_len, n_signal)]
        (d / "SYNTHETIC" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return d


def write_tiny_checkpoint(out_dir: str | Path, seed: int = 0, seq_len: int = 32) -> Path:
    """Synthetic task files plus a random tiny BERT checkpoint (HF names) in ``out_dir``."""
    from models.bert import BertClassifier
    from models.weights import save_checkpoint

    d = write_synthetic_task(out_dir, seed)
    torch.manual_seed(seed)
    save_checkpoint(BertClassifier(tiny_bert_config(seq_len)), d)
    return d
