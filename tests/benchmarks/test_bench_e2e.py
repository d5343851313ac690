"""benchmarks.e2e's per-layer measurement splits one secure layer into attention and FFN parts."""
from __future__ import annotations

import numpy as np

from benchmarks.composition import LAYER_PARTS
from benchmarks.e2e import measure_layer
from protocols.model_spec import PruningSpec, TransformerSpec
from protocols.plaintext import random_weights
from protocols.secure_model import secure_forward
from protocols.session import SessionSpec, TwoPartySession


def test_measure_layer_attributes_every_program_of_the_layer() -> None:
    shape = TransformerSpec(vocab_size=64, hidden=16, layers=2, heads=2, intermediate=32, max_positions=16)
    parts = measure_layer(SessionSpec(protocol="SEMI2K"), shape, 8)
    assert set(parts) == set(LAYER_PARTS)
    for part, (seconds, nbytes, rounds) in parts.items():
        assert seconds > 0 and nbytes > 0 and rounds > 0, part
    # one add_layernorm on [8, 16] each side of the split: the same program, the same bytes
    assert parts["attn/LayerNorm"][1] == parts["ffn/LayerNorm"][1]


def test_measure_layer_parts_add_up_to_the_layer() -> None:
    shape = TransformerSpec(vocab_size=64, hidden=16, layers=1, heads=2, intermediate=32, max_positions=16)
    parts = measure_layer(SessionSpec(protocol="SEMI2K"), shape, 8)
    weights = random_weights(shape, scale=0.02)
    with TwoPartySession(SessionSpec(protocol="SEMI2K")) as s:
        secure_forward(s, shape, weights, np.arange(1, 9), np.ones(8, np.float32), np.zeros(8, np.int64),
                       PruningSpec("none", (0.0,), (0.0,)))
        layer = [p for p in s.meter.report().programs if p.layer == 0]
    assert sum(b for _, b, _ in parts.values()) == sum(p.bytes_total for p in layer)
    assert sum(r for _, _, r in parts.values()) == sum(p.rounds for p in layer)
    assert [p.program for p in layer][-4:] == ["linear", "gelu", "linear", "add_layernorm"]
