"""Emulated ops vs exact within the approximations' error; fixed point; gradients."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from models.approx import ATTENTION_MASK_BIAS, EXP_BOLT, EXP_LOW, EXP_SQUARING, FIXED_POINT, REDUCE_FORMS
from models.config import OpsConfig
from models.ops import exp_approx, exp_squaring, fixed_point, gelu, layernorm, mask_bias, softmax

EXACT, EMU, EMU_FXP = OpsConfig("exact"), OpsConfig("emulated"), OpsConfig("emulated", True)


def test_gelu_within_error() -> None:
    x = torch.linspace(-10, 10, 4001)
    ref = F.gelu(x)
    assert (gelu(x, EMU) - ref).abs().max() < 0.0095  # the bound stated in models/approx.py: 0.0094
    low = torch.ones(1, dtype=torch.bool)                                   # x[None]: one row of 4001
    polynomial = gelu(x[None], EMU, low, forms=REDUCE_FORMS["polynomial"])
    assert polynomial.shape == (1, 4001) and (polynomial - ref).abs().max() < 0.09  # GELU_LOW max error 0.084
    assert torch.equal(gelu(x[None], EMU, low), F.relu(x)[None])            # the default ``fast`` low form
    assert torch.equal(gelu(x, EXACT), ref)


def test_exp_range_reduction_and_zero_below_xmin() -> None:
    x = torch.linspace(EXP_BOLT.x_min + 1e-3, 0, 2001)
    assert ((exp_approx(x, EXP_BOLT) - torch.exp(x)).abs() / torch.exp(x)).max() < 0.0032  # stated: 0.0031
    assert ((exp_approx(x, EXP_LOW) - torch.exp(x)).abs() / torch.exp(x)).max() < 0.07  # 0.031 abs on (-ln2, 0]
    sq = exp_squaring(torch.linspace(-12, 0, 12001, dtype=torch.float64), EXP_SQUARING)
    assert 0.03 < (sq - torch.exp(torch.linspace(-12, 0, 12001, dtype=torch.float64))).abs().max() < 0.0354  # stated 0.0353
    assert torch.all(sq[:4001] == 0)                                        # x <= -8 = EXP_SQUARING.x_min
    assert torch.all(exp_approx(torch.tensor([EXP_BOLT.x_min - 0.01, -30.0, ATTENTION_MASK_BIAS]), EXP_BOLT) == 0)


def test_softmax_and_mask_bias() -> None:
    torch.manual_seed(0)
    s = torch.randn(2, 3, 5, 5) * 3
    keep = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    b = mask_bias(keep)
    assert b.shape == (2, 1, 1, 5) and b[0, 0, 0, 3] == ATTENTION_MASK_BIAS and b[1].abs().max() == 0
    pe, px = softmax(s, EMU, b), softmax(s, EXACT, b)
    assert (pe - px).abs().max() < 5e-3
    assert torch.all(pe[0, :, :, 3:] == 0)  # masked keys vanish exactly
    assert torch.allclose(pe.sum(-1), torch.ones(2, 3, 5), atol=1e-5)
    low = torch.zeros(2, 5, dtype=torch.bool)
    low[:, 2] = True
    pl = softmax(s, EMU, b, low)
    assert torch.equal(pl[:, :, :2], pe[:, :, :2]) and not torch.equal(pl[:, :, 2], pe[:, :, 2])


def test_layernorm_and_fixed_point() -> None:
    torch.manual_seed(0)
    x, w, bb = torch.randn(4, 16), torch.rand(16) + 0.5, torch.randn(16)
    ref = layernorm(x, w, bb, 1e-12, EXACT)
    assert (layernorm(x, w, bb, 1e-12, EMU) - ref).abs().max() < 1e-5
    y = layernorm(x, w, bb, 1e-12, EMU_FXP)
    assert (y - ref).abs().max() < 1e-4
    scale = 2.0 ** FIXED_POINT.fraction_bits
    assert torch.equal(y * scale, torch.round(y * scale))


def test_straight_through_gradients() -> None:
    x = torch.linspace(-3, 3, 50, requires_grad=True)
    fixed_point(x).sum().backward()
    assert torch.equal(x.grad, torch.ones(50))
    z = torch.linspace(-5, 0, 50, requires_grad=True)
    exp_approx(z, EXP_BOLT).sum().backward()
    assert torch.all(z.grad > 0) and (z.grad - torch.exp(z)).abs().max() < 0.05
    s = torch.randn(1, 1, 4, 4, requires_grad=True)
    softmax(s, EMU_FXP).pow(2).sum().backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert math.isclose(float(mask_bias(torch.tensor([[0.5]]))), math.log(0.5), rel_tol=1e-6)
