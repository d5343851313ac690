"""The issue's bar: BERT and GPT-2 through CHEETAH with the parties as two OS processes, logits
equal to the plaintext reference, and the meter's per-op bytes adding up to SPU's totals."""
from __future__ import annotations

import numpy as np
import pytest

from protocols.meter import OP_CLASSES
from protocols.model_spec import PruningSpec, TransformerSpec
from protocols.plaintext import random_weights
from protocols.secure_model import plaintext_forward, run_batch
from protocols.session import SessionSpec, TwoPartySession

TINY = dict(vocab_size=50, hidden=32, layers=2, heads=2, intermediate=64, max_positions=16)
IDS = np.array([1, 5, 9, 3, 7, 2, 8, 4])


@pytest.mark.slow
@pytest.mark.parametrize("causal", [False, True], ids=["bert", "gpt2"])
def test_cheetah_two_processes_match_plaintext(causal):
    spec = TransformerSpec(**TINY, causal=causal)
    weights = random_weights(spec, seed=3, scale=1.0)
    pruning = PruningSpec("bolt_we") if not causal else PruningSpec()
    plain = plaintext_forward(spec, weights, IDS, np.ones(8), None, pruning, last_only=causal)
    with TwoPartySession(SessionSpec("CHEETAH", transport="processes")) as session:
        secure = run_batch(session, spec, weights, [(IDS, np.ones(8), None)], pruning, last_only=causal)[0]
        report = session.meter.report()
    assert np.max(np.abs(secure.logits - plain.logits)) < 1e-2
    assert np.argmax(secure.logits) == np.argmax(plain.logits)
    assert secure.kept_per_layer == plain.kept_per_layer
    assert sum(part.bytes_total for part in report.by_op().values()) == report.bytes_total > 0
    assert set(report.by_op()) == set(OP_CLASSES)
