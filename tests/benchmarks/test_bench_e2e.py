"""benchmarks.e2e: the per-layer measurement splits one secure layer into attention and FFN parts;
the end-to-end check compares every quantity with the composition."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from benchmarks.composition import LAYER_PARTS, fit_measurements
from benchmarks.configs import E2EBench
from benchmarks.e2e import measure, measure_layer, run, validate, validation_markdown
from models.synthetic import vocab, write_tiny_checkpoint
from models.thresholds import ThresholdsArtifact
from models.weights import load_checkpoint, save_checkpoint, set_thresholds
from protocols.meter import WAN
from protocols.model_spec import PruningSpec, TransformerSpec
from protocols.plaintext import random_weights
from protocols.secure_model import run_batch
from protocols.session import SessionSpec, TwoPartySession


def _beaver_matmul_bytes(rows: int, inner: int, cols: int) -> int:
    """SEMI2K bytes of a fixed-point product of secret ``[rows, inner]`` and ``[inner, cols]``: each
    party opens its 8-byte shares of both masked operands (both directions counted), then the
    product's truncation costs 8 bytes per output element (``test_meter``'s Beaver check)."""
    return 16 * (rows * inner + inner * cols) + 8 * rows * cols


def test_measure_layer_attributes_every_program_of_the_layer() -> None:
    """Each part holds exactly its programs' bytes: under SEMI2K (weights secret-shared) the linear
    parts equal the Beaver formula: attention's Q, K, V and output projections, per head the scores
    q·kᵀ, their 1/√d_h scaling (a truncation per score) and the context A·v; the FFN's two products."""
    n, d, heads, f = 8, 16, 2, 32
    shape = TransformerSpec(vocab_size=64, hidden=d, layers=2, heads=heads, intermediate=f, max_positions=16)
    parts = measure_layer(SessionSpec(protocol="SEMI2K"), shape, n)
    assert set(parts) == set(LAYER_PARTS)
    dh = d // heads
    per_head = _beaver_matmul_bytes(n, dh, n) + 8 * n * n + _beaver_matmul_bytes(n, n, dh)
    assert parts["attn/Linear"][1] == 4 * _beaver_matmul_bytes(n, d, d) + heads * per_head
    assert parts["ffn/Linear"][1] == _beaver_matmul_bytes(n, d, f) + _beaver_matmul_bytes(n, f, d)
    for part, (seconds, nbytes, rounds) in parts.items():
        assert seconds > 0 and nbytes > 0 and rounds > 0, part
    # one add_layernorm on [8, 16] each side of the split: the same program, the same bytes
    assert parts["attn/LayerNorm"][1] == parts["ffn/LayerNorm"][1]


def test_measure_layer_parts_add_up_to_the_layer() -> None:
    shape = TransformerSpec(vocab_size=64, hidden=16, layers=1, heads=2, intermediate=32, max_positions=16)
    parts = measure_layer(SessionSpec(protocol="SEMI2K"), shape, 8)
    weights = random_weights(shape, scale=0.02)
    with TwoPartySession(SessionSpec(protocol="SEMI2K")) as s:
        run_batch(s, shape, weights, [(np.arange(1, 9), np.ones(8, np.float32), np.zeros(8, np.int64))],
                  PruningSpec("none", (0.0,), (0.0,)))
        layer = [p for p in s.meter.report().programs if p.layer == 0]
    assert sum(b for _, b, _ in parts.values()) == sum(p.bytes_total for p in layer)
    assert sum(r for _, _, r in parts.values()) == sum(p.rounds for p in layer)
    assert [p.program for p in layer][-4:] == ["linear", "gelu", "linear", "add_layernorm"]


def test_validate_compares_every_quantity_and_composes_unpruned_from_two_layers(tmp_path: Path) -> None:
    """The end-to-end check on a 3-layer model (SEMI2K): ``none`` run in full and from its first 2
    layers cost the same bytes; every row's WAN is its own seconds, bytes and rounds on the WAN
    link; the pruned run's schedule is the one it ran; bad settings are named."""
    d = write_tiny_checkpoint(tmp_path / "ck", seed=0)
    model, _ = load_checkpoint(d)
    thresholds = ThresholdsArtifact([1.0, 1.0], [1.2, 1.2], criterion="relative")
    set_thresholds(model, thresholds)
    save_checkpoint(model, tmp_path / "pruned", thresholds, tokenizer_dir=d)
    shape = TransformerSpec(vocab_size=len(vocab()), hidden=16, layers=3, heads=2, intermediate=32, max_positions=32)
    spec = SessionSpec(protocol="SEMI2K")
    layer_fit, prune_fit = fit_measurements(measure(spec, shape, [8, 16], None, False, lambda m: None))
    check = functools.partial(validate, spec, shape, tmp_path / "pruned", "synthetic", d, 16, layer_fit, prune_fit)
    full, = check(("none",))
    two, pruned = check(("none", "prune"), unpruned_layers=2)
    assert (full["layers_run"], two["layers_run"]) == ("3 of 3", "2 of 3, the rest repeated")
    assert full["schedule"] == two["schedule"] == "16-16-16"
    assert abs(float(two["measured_mb"]) / float(full["measured_mb"]) - 1) < 1e-3
    assert abs(float(two["measured_rounds"]) / float(full["measured_rounds"]) - 1) < 0.02
    # at a measured size the composition is the measured layer three times: bytes agree closely
    assert abs(float(full["composed_mb"]) / float(full["measured_mb"]) - 1) < 0.01
    entering = [int(n) for n in str(pruned["schedule"]).split("-")]
    assert entering[0] == 16 and entering[-1] < 16
    for row in (full, two, pruned):
        wan = (float(row["measured_s"]) + 8 * float(row["measured_mb"]) * 2**20 / WAN.bandwidth_bps
               + float(row["measured_rounds"]) * WAN.rtt_s)
        assert float(row["measured_wan_s"]) == pytest.approx(wan, rel=1e-9)
        assert float(row["composed_rounds"]) > 0
    assert "| none " in validation_markdown([full, two]) and "2 of 3, the rest repeated" in validation_markdown([two])


@pytest.mark.parametrize("override, message", [
    ({"validate_methods": ["nonee"]}, "unknown \\['nonee'\\]"),
    ({"validate_unpruned_layers": 1}, "validate_unpruned_layers=1: must be in \\[2, benchmark.layers=12\\]"),
    ({"validate_unpruned_layers": 13}, "validate_unpruned_layers=13"),
])
def test_bad_validation_settings_are_named(tmp_path: Path, override: dict, message: str) -> None:
    d = write_tiny_checkpoint(tmp_path / "ck", seed=0)
    save_checkpoint(load_checkpoint(d)[0], tmp_path / "pruned", ThresholdsArtifact([0.9, 0.9], [1.2, 1.2]), tokenizer_dir=d)
    cfg = E2EBench(checkpoint=str(tmp_path / "pruned"), glue_dir=str(d), validate=True, **override)
    with pytest.raises(ValueError, match=message):
        run(cfg, lambda m: None)
