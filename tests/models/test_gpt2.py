"""GPT-2 against transformers' GPT2LMHeadModel (tiny random config)."""
from __future__ import annotations

import torch
import transformers

from models.config import GPT2Config, OpsConfig
from models.gpt2 import GPT2LM
from models.weights import load_hf_gpt2, to_numpy_weights


def _pair() -> tuple[transformers.GPT2LMHeadModel, GPT2LM]:
    torch.manual_seed(0)
    c = GPT2Config(vocab_size=50, hidden=32, layers=2, heads=4, intermediate=128, max_positions=16)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**c.to_hf())).eval()
    m = GPT2LM(c).eval()
    m.load_state_dict(hf.state_dict())
    return hf, m


def test_gpt2_matches_hf() -> None:
    hf, m = _pair()
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        ref = hf(ids).logits
        assert (m(ids) - ref).abs().max() < 1e-4
        m.ops_cfg = OpsConfig("emulated")
        assert (m(ids) - ref).abs().max() < 0.1
    w = to_numpy_weights(m)
    assert w["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)  # Conv1D [in, out]
    assert "lm_head.weight" in w


def test_gpt2_load_from_dir(tmp_path) -> None:
    hf, _ = _pair()
    hf.save_pretrained(tmp_path)
    m, rep = load_hf_gpt2(tmp_path)
    ids = torch.randint(0, 50, (1, 7))
    with torch.no_grad():
        assert (m.eval()(ids) - hf(ids).logits).abs().max() < 1e-4
