"""The secure engine against an independent reference: Hugging Face ``transformers``' own BERT
(exact GELU, softmax, LayerNorm), not the same JAX code run in plain mode.

The secure run uses the approximations of ``models/approx.py`` (GELU max error 0.0094, exp
relative error 0.0031) and FM64 fixed point with 18 fraction bits; on a tiny BERT whose
logits are O(1) (up to 2.36) that moves them by at most 0.0084 (SEMI2K) / 0.0086 (CHEETAH),
0.36 % of their range (measured), so a 2 % tolerance separates a working engine from a broken
one (zeroed logits miss by 100 %).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from protocols.model_spec import TransformerSpec
from protocols.secure_model import run_batch
from protocols.session import SessionSpec, TwoPartySession
from tests.models.test_bert import _inputs, scaled_hf_pair


@pytest.mark.parametrize("protocol", ["SEMI2K", "CHEETAH"])
def test_secure_logits_match_hugging_face(protocol: str) -> None:
    hf, _ = scaled_hf_pair()
    weights = {k: v.detach().numpy().astype(np.float32) for k, v in hf.state_dict().items()}
    spec = TransformerSpec.from_hf_config(hf.config.to_dict())
    ids, am, tt = _inputs()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=am, token_type_ids=tt).logits.numpy()
    examples = [(ids[i].numpy(), am[i].numpy(), tt[i].numpy()) for i in range(ids.shape[0])]
    with TwoPartySession(SessionSpec(protocol=protocol)) as s:
        got = np.stack([r.logits for r in run_batch(s, spec, weights, examples)])
    scale = np.abs(ref).max()
    assert scale > 1.0
    assert np.abs(got - ref).max() < 0.02 * scale, (got, ref)
    assert (got.argmax(axis=1) == ref.argmax(axis=1)).all()
