"""GPT-2 against transformers' GPT2LMHeadModel (tiny random config)."""
from __future__ import annotations

import pytest
import torch
import transformers

from models.config import GPT2Config, OpsConfig
from models.gpt2 import GPT2LM
from models.token_pruning import PruneSettings
from models.weights import load_hf_gpt2, to_numpy_weights


def _pair() -> tuple[transformers.GPT2LMHeadModel, GPT2LM]:
    torch.manual_seed(0)
    c = GPT2Config(vocab_size=50, hidden=32, layers=2, heads=4, intermediate=128, max_positions=16)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**c.to_hf())).eval()
    m = GPT2LM(c).eval()
    m.load_state_dict({**hf.state_dict(), "pruning.theta": torch.zeros(c.layers),
                       "pruning.beta": torch.zeros(c.layers)})
    return hf, m


def test_gpt2_matches_hf() -> None:
    """Exact ops equal transformers to float precision; emulated ops stay within 0.1 % of the logits'
    spread (measured 0.017 %). The tied embedding is scaled so the logits spread over several units
    (a random tiny GPT-2's lie within ±0.1, where any tolerance passes a model returning zeros)."""
    hf, m = _pair()
    with torch.no_grad():
        for model in (hf, m):
            model.transformer.wte.weight.mul_(25.0)
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
        spread = float(ref.max() - ref.min())
        assert spread > 4.0
        assert (m(ids) - ref).abs().max() < 1e-5 * spread
        m.ops_cfg = OpsConfig("emulated")
        assert (m(ids) - ref).abs().max() < 0.001 * spread
        assert (torch.zeros_like(ref) - ref).abs().max() > 0.001 * spread     # a zero model would fail
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


def test_pruned_none_is_the_last_position_of_forward() -> None:
    _, m = _pair()
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = m.pruned(ids, PruneSettings("none"))
        assert torch.allclose(out.logits, m(ids)[:, -1], atol=1e-5)
    assert out.kept_tokens.tolist() == [[12.0, 12.0]] * 2


def test_pruned_hard_and_soft_masks() -> None:
    """θ = 1 keeps only the last position; the soft mask trains θ (a gradient reaches it) and its kept
    count lies between the hard extremes; the relative criterion is refused for a causal model."""
    _, m = _pair()
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(4))
    m.pruning.theta.data[:] = 1.0
    assert m.pruned(ids, PruneSettings("prune")).kept_tokens.tolist() == [[1.0, 1.0]] * 2
    m.pruning.theta.data[:] = 0.05
    out = m.pruned(ids, PruneSettings("prune", mask_mode="soft", temperature=0.05))
    (out.keep_ratio.mean() + out.logits.square().mean()).backward()
    assert m.pruning.theta.grad is not None and bool(torch.all(m.pruning.theta.grad != 0))
    assert bool(torch.all((out.kept_tokens > 1) & (out.kept_tokens < 12)))
    m.pruning.criterion = "relative"
    with pytest.raises(ValueError, match="relative.*causal"):
        m.pruned(ids, PruneSettings("prune"))


def test_bolt_we_keeps_half_after_layer_0() -> None:
    _, m = _pair()
    ids = torch.randint(0, 50, (3, 11), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = m.pruned(ids, PruneSettings("bolt_we"))
    assert out.kept_tokens.tolist() == [[6.0, 6.0]] * 3
