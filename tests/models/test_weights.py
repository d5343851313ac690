"""Weight port errors, BertModel-only checkpoints, numpy export, checkpoint round trip."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from models.bert import BertClassifier
from models.config import BertConfig
from models.thresholds import ThresholdsArtifact
from models.weights import load_checkpoint, load_hf_bert, port_state_dict, save_checkpoint, to_numpy_weights

CFG = BertConfig(vocab_size=50, hidden=16, layers=2, heads=2, intermediate=32, max_positions=16)


def test_wrong_shape_names_key_and_shapes() -> None:
    m = BertClassifier(CFG)
    sd = m.hf_state_dict()
    sd["bert.encoder.layer.1.attention.self.query.weight"] = torch.zeros(16, 8)
    with pytest.raises(ValueError, match=r"'bert\.encoder\.layer\.1\.attention\.self\.query\.weight'.*"
                                         r"\(16, 8\).*\(16, 16\)"):
        port_state_dict(BertClassifier(CFG), sd)


def test_missing_key_named() -> None:
    sd = BertClassifier(CFG).hf_state_dict()
    del sd["bert.pooler.dense.bias"]
    with pytest.raises(KeyError, match="bert.pooler.dense.bias"):
        port_state_dict(BertClassifier(CFG), sd)


def test_bertmodel_only_checkpoint_gets_prefix_and_fresh_classifier(tmp_path) -> None:
    src = BertClassifier(CFG)
    sd = {k[len("bert."):]: v.clone() for k, v in src.hf_state_dict().items() if k.startswith("bert.")}
    save_file(sd, str(tmp_path / "model.safetensors"))
    hf = CFG.to_hf()
    hf["architectures"] = ["BertModel"]
    (tmp_path / "config.json").write_text(json.dumps(hf))
    m, rep = load_hf_bert(tmp_path, num_labels=3)
    assert rep.added_prefix == "bert." and rep.initialised == ["classifier.weight", "classifier.bias"]
    assert m.classifier.weight.shape == (3, 16)
    assert torch.equal(m.bert.embeddings.word_embeddings.weight, src.bert.embeddings.word_embeddings.weight)


def test_numpy_export_and_checkpoint_roundtrip(tmp_path) -> None:
    m = BertClassifier(CFG)
    w = to_numpy_weights(m)
    assert set(w) == set(m.hf_state_dict())
    assert all(v.dtype == np.float32 for v in w.values())
    assert w["bert.encoder.layer.0.intermediate.dense.weight"].shape == (32, 16)  # [out, in]
    th = ThresholdsArtifact([0.01, 0.02], [0.02, 0.04], 1e-3, 0.1)
    save_checkpoint(m, tmp_path / "ck", th)
    m2, th2 = load_checkpoint(tmp_path / "ck")
    assert th2 == th and torch.allclose(m2.pruning.theta, torch.tensor([0.01, 0.02]))
    ids = torch.randint(1, 50, (2, 8))
    with torch.no_grad():
        assert torch.equal(m.eval()(ids).logits, m2.eval()(ids).logits)


def test_checkpoint_dir_without_config_names_the_dir(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"'.*empty' has no config.json"):
        load_checkpoint(tmp_path / "empty")
