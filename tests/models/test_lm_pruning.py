"""GPT-2 threshold learning on next-token prediction over a pruned context (tiny model, random blocks)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.config import GPT2Config, OpsConfig
from models.gpt2 import GPT2LM
from models.lm_pruning import LMPruneConfig, init_lm_thresholds, next_token_metrics, train_lm_thresholds
from models.token_pruning import PruneSettings

CFG = GPT2Config(vocab_size=40, hidden=32, layers=2, heads=2, intermediate=64, max_positions=32)


def _blocks(n: int = 48, length: int = 17) -> torch.Tensor:
    return torch.randint(0, 40, (n, length), generator=torch.Generator().manual_seed(0))


def _model() -> GPT2LM:
    torch.manual_seed(0)
    return GPT2LM(CFG)


def test_init_thresholds_are_increasing_score_quantiles() -> None:
    """θ_l is the quantile·(l+1)/L quantile of layer l's context scores (levels 0.25 and 0.5 here:
    increasing with depth), β_l = beta_factor·θ_l capped at 1."""
    m = _model()
    init_lm_thresholds(m, _blocks(), quantile=0.5, beta_factor=1.5)
    theta = m.pruning.theta.tolist()
    with torch.no_grad():
        scores = m.pruned(_blocks()[:, :-1], PruneSettings()).scores
    for l, level in enumerate((0.25, 0.5)):
        context = scores[l][:, :-1].reshape(-1)
        assert theta[l] == pytest.approx(float(torch.quantile(context, level)), rel=1e-5), l
        assert float((context <= theta[l]).float().mean()) == pytest.approx(level, abs=0.01), l
    assert m.pruning.beta.tolist() == pytest.approx([min(1.5 * t, 1.0) for t in theta], rel=1e-6)


def test_penalty_lowers_the_kept_share() -> None:
    """Same steps, same data: λ = 2 ends with fewer kept tokens than λ = 0."""
    kept = {}
    for lam in (0.0, 2.0):
        m = _model()
        cfg = LMPruneConfig(lambda_=lam, soft_steps=15, hard_steps=2, batch_size=8, theta_quantile=0.2,
                            threshold_lr=5e-2)
        train_lm_thresholds(m, _blocks(), cfg)
        kept[lam] = sum(next_token_metrics(m, _blocks(), "prune").kept)
    assert kept[2.0] < kept[0.0]


def _high_share(m: GPT2LM) -> float:
    with torch.no_grad():
        return float(m.pruned(_blocks()[:, :-1], PruneSettings("prune_reduce")).high_ratio.mean())


def test_prune_reduce_learns_beta_and_its_penalty_shrinks_the_high_group() -> None:
    """β starts at beta_factor·θ, moves by gradient in the soft phase (staying in [θ, 1]) and a
    larger β penalty ends with a smaller high group than none, same steps and data (emulated ops,
    whose low forms differ from the high ones: with exact ops β gets no gradient from the loss)."""
    share, logged = {}, []
    for beta_lambda in (0.0, 2.0):
        m = _model()
        m.ops_cfg = OpsConfig("emulated")
        cfg = LMPruneConfig(method="prune_reduce", lambda_=0.0, soft_steps=15, hard_steps=2, batch_size=8,
                            theta_quantile=0.2, threshold_lr=5e-2, beta_factor=1.5, beta_lambda=beta_lambda)
        start = _model()
        init_lm_thresholds(start, _blocks()[:32], 0.2, beta_factor=1.5)
        train_lm_thresholds(m, _blocks(), cfg, log=lambda metrics, step: logged.append(metrics))
        theta, beta = m.pruning.theta.detach(), m.pruning.beta.detach()
        assert torch.all(beta >= theta) and torch.all(beta <= 1.0)
        assert not torch.allclose(beta, start.pruning.beta)
        assert not m.pruning.beta.requires_grad
        share[beta_lambda] = _high_share(m)
    assert share[2.0] < share[0.0]
    assert "train/soft_high_ratio" in logged[0]


def test_next_token_metrics_unpruned_and_fully_pruned() -> None:
    m = _model().eval()
    b = _blocks(20)
    none = next_token_metrics(m, b, "none", batch_size=7)
    with torch.no_grad():
        ref = math.exp(float(F.cross_entropy(m(b[:, :-1])[:, -1], b[:, -1])))
    assert none.perplexity == pytest.approx(ref, rel=1e-4) and none.kept == [16.0, 16.0] and none.blocks == 20
    m.pruning.theta.data[:] = 1.0
    assert next_token_metrics(m, b, "prune").kept == [1.0, 1.0]      # only the last position
    with pytest.raises(ValueError, match="method"):
        train_lm_thresholds(m, b, LMPruneConfig(method="bolt_we"))
