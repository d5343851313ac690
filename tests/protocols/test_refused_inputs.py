"""Bad input to the library refused with an error that names the value, the key or the file:
token ids and lengths the model cannot embed, non-finite thresholds, and a server checkpoint
that is missing, corrupt, of the wrong shape or without its thresholds."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from models import methods
from models.bert import BertClassifier
from models.config import BertConfig, GPT2Config
from models.gpt2 import GPT2LM
from models.synthetic import write_tiny_checkpoint
from protocols.model_spec import PruningSpec, TransformerSpec
from protocols.plaintext import random_weights
from protocols.provision import ServerRequest
from protocols.transformer import client_embed

TINY = dict(vocab_size=50, hidden=16, layers=2, heads=2, intermediate=32, max_positions=12)


@pytest.mark.parametrize(("ids", "types", "message"), [
    (np.array([1, 5, -3, 2]), None, r"input_ids\[2\]=-3: outside the model's vocabulary \[0, 50\)"),
    (np.array([1, 50, 2]), None, r"input_ids\[1\]=50: outside the model's vocabulary \[0, 50\)"),
    (np.array([1.0, 2.5]), None, r"input_ids\[1\]=2\.5: token ids must be integers"),
    (np.array([1.0, np.nan]), None, r"input_ids\[1\]=nan: token ids must be integers"),
    (np.arange(13), None, r"sequence length 13 > max_positions=12"),
    (np.array([1, 2, 3]), np.array([0, 2, 0]), r"token_type_ids\[1\]=2: outside the model's vocabulary \[0, 2\)"),
    (np.array([1, 2, 3]), np.array([0, 1]), r"token_type_ids has shape \(2,\), input_ids \(3,\)"),
])
def test_client_embed_refuses_ids_it_cannot_embed(ids: np.ndarray, types: np.ndarray | None, message: str) -> None:
    spec = TransformerSpec(**TINY)
    with pytest.raises(ValueError, match=message):
        client_embed(spec, random_weights(spec), ids, types)


@pytest.mark.parametrize("model", ["bert", "gpt2"])
@pytest.mark.parametrize(("ids", "message"), [
    (torch.tensor([[1, 2, -1]]), r"input_ids contains -1: outside the model's vocabulary \[0, 50\)"),
    (torch.tensor([[1, 2, 77]]), r"input_ids contains 77: outside the model's vocabulary \[0, 50\)"),
    (torch.ones(1, 13, dtype=torch.long), r"input of 13 tokens > the model's max_positions=12"),
])
def test_torch_models_refuse_ids_they_cannot_embed(model: str, ids: torch.Tensor, message: str) -> None:
    net = BertClassifier(BertConfig(**TINY)) if model == "bert" else GPT2LM(GPT2Config(**TINY))
    with pytest.raises(ValueError, match=message):
        net(ids)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(method="prune_reduce", theta=(0.1, 0.1), beta=(0.2, math.nan)), r"beta\[1\]=nan: expected a finite beta"),
    (dict(method="prune", theta=(math.nan, 0.1)), r"theta\[0\]=nan: expected a finite 0 <= theta <= 1"),
    (dict(method="prune", theta=(1.0, math.inf), criterion="relative"), r"theta\[1\]=inf: expected a finite 0 <= theta <= inf"),
    (dict(method="prune_reduce", theta=(0.1, 0.1), beta=(0.2, math.inf)), r"beta\[1\]=inf: expected a finite beta"),
])
def test_non_finite_thresholds_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PruningSpec(**kwargs)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "ck", seed=0)


def _broken_copy(checkpoint: Path, tmp_path: Path, breakage: str) -> Path:
    d = Path(shutil.copytree(checkpoint, tmp_path / "broken"))
    weights = d / "model.safetensors"
    if breakage == "missing":
        weights.unlink()
    elif breakage == "corrupt":
        weights.write_bytes(weights.read_bytes()[:100])
    elif breakage == "shape":
        tensors = load_file(str(weights))
        tensors["bert.encoder.layer.1.intermediate.dense.weight"] = np.zeros((7, 64), np.float32)
        save_file(tensors, str(weights))
    elif breakage == "key":
        save_file({k: v for k, v in load_file(str(weights)).items() if "layer.1.output.dense.bias" not in k}, str(weights))
    elif breakage == "thresholds":
        (d / "thresholds.json").unlink(missing_ok=True)
    elif breakage == "config":
        (d / "config.json").unlink()
    return d


@pytest.mark.parametrize(("breakage", "method", "error", "message"), [
    ("missing", "none", FileNotFoundError, r"missing weights file .*broken/model\.safetensors"),
    ("corrupt", "none", ValueError, r"broken/model\.safetensors: not a readable safetensors file"),
    ("shape", "none", ValueError, r"weight l1\.w1 has shape \(64, 7\), but config\.json's model needs \(64, 128\)"),
    ("key", "none", ValueError, r"the weights lack 'bert\.encoder\.layer\.1\.output\.dense\.bias'"),
    ("thresholds", "prune", FileNotFoundError, r"thresholds file not found: .*broken/thresholds\.json"),
    ("config", "none", FileNotFoundError, r"checkpoint '.*broken' has no config\.json"),
])
def test_server_refuses_a_broken_checkpoint(checkpoint: Path, tmp_path: Path, breakage: str, method: str,
                                            error: type, message: str) -> None:
    assert ServerRequest(str(checkpoint), thresholds=False).load().values["l1.w1"].shape == (64, 128)   # the intact one loads
    with pytest.raises(error, match=message):
        ServerRequest(str(_broken_copy(checkpoint, tmp_path, breakage)), methods.get(method).thresholds).load()
