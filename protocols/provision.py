"""What each party brings to a secure forward pass, computed from its own data only.

The server's inputs are its weights (canonical names, ``[in, out]`` layout) and its per-layer
thresholds ``theta{l}``/``beta{l}``; the client's are its embedded token sequences ``h``
``[Σ n_b, d]``, the padding mask ``valid`` ``[Σ n_b]`` and, for tests, the original positions
``pos``. The client embeds with the model's embedding tables, which the server releases to it
(as in BOLT and BumbleBee, whose client computes its own input embedding): ``EMBEDDING_TABLES``.

``ServerRequest`` / ``ClientRequest`` name the data by file paths on the owner's host, so a
coordinator can have a party load and share its own inputs without ever holding them
(``protocols.remote``); ``server_inputs`` / ``client_inputs`` are the same computation for a
caller that holds the plaintext (tests, the plaintext reference, the local transports).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from protocols import transformer as tf
from protocols.model_spec import TransformerSpec, checked_thresholds

Example = tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]   # (input_ids, attention_mask, token_type_ids)
# The tables the client embeds with (HF names), released to it by the server.
EMBEDDING_TABLES = ("bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
                    "bert.embeddings.token_type_embeddings.weight", "transformer.wte.weight", "transformer.wpe.weight")


def server_inputs(spec: TransformerSpec, weights: dict[str, np.ndarray], theta: Sequence[float] = (),
                  beta: Sequence[float] = ()) -> dict[str, np.ndarray]:
    """The server's values: weights in canonical names, and ``theta{l}``/``beta{l}`` ``[1]`` per layer
    (one per layer, or none for a method without learned thresholds; validated by ``PruningSpec``)."""
    if theta and len(theta) != spec.layers:
        raise ValueError(f"PruningSpec: len(theta)={len(theta)} but the model has {spec.layers} layers")
    values = dict(tf.server_weights(spec, weights))
    for l, (t, b) in enumerate(zip(theta, beta)):
        values[f"theta{l}"] = np.array([t], np.float32)
        values[f"beta{l}"] = np.array([b], np.float32)
    return values


def client_inputs(spec: TransformerSpec, tables: dict[str, np.ndarray], examples: Sequence[Example],
                  trace_positions: bool = False) -> tuple[dict[str, np.ndarray], tuple[int, ...]]:
    """The client's values for a batch: ``h`` (embedded, rows stacked), ``valid``, and ``pos``
    when tracing; with the token count of each input (public: the padded lengths)."""
    if not examples:
        raise ValueError("no examples given")
    ids = [np.asarray(ex[0]).reshape(-1) for ex in examples]
    masks = [np.ones(len(i), np.float32) if ex[1] is None else np.asarray(ex[1], np.float32).reshape(-1)
             for i, ex in zip(ids, examples)]
    for b, (i, m) in enumerate(zip(ids, masks)):
        if m.shape != i.shape:
            raise ValueError(f"example {b}: attention_mask has shape {m.shape}, input_ids {i.shape}")
    values = {"h": np.concatenate([tf.client_embed(spec, tables, i, ex[2]) for i, ex in zip(ids, examples)]),
              "valid": np.concatenate(masks)}
    if trace_positions:
        values["pos"] = np.concatenate([np.arange(len(i), dtype=np.float32) for i in ids])[:, None]
    return values, tuple(len(i) for i in ids)


@dataclass(frozen=True)
class Provided:
    """A party's loaded inputs: ``values`` (shared, never sent to the coordinator) and ``public``
    (what the owner declares: the client's per-input token counts and its own labels)."""

    values: dict[str, np.ndarray]
    public: dict[str, Any]


def model_spec_of(checkpoint: str | Path) -> TransformerSpec:
    """The transformer shape of a Hugging Face checkpoint directory (its ``config.json``)."""
    path = Path(checkpoint) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(checkpoint)!r} has no config.json")
    return TransformerSpec.from_hf_config(json.loads(path.read_text()))


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of the safetensors file ``path``; ``FileNotFoundError`` / ``ValueError`` naming the
    file when it is missing or not a safetensors file (truncated, corrupt)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not path.is_file():
        raise FileNotFoundError(f"missing weights file {path}")
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


@dataclass(frozen=True)
class ServerRequest:
    """The server's inputs from its checkpoint directory on its own host (``model.safetensors``,
    ``config.json`` and, when ``thresholds`` (a method with learned thresholds,
    ``models.methods.MethodSpec.thresholds``), ``thresholds.json``)."""

    checkpoint: str
    thresholds: bool

    def load(self) -> Provided:
        from models.thresholds import read_thresholds

        spec = model_spec_of(self.checkpoint)
        weights = {k: np.asarray(v, np.float32) for k, v in read_safetensors(Path(self.checkpoint) / "model.safetensors").items()}
        if not self.thresholds:
            return Provided(server_inputs(spec, weights), {})
        th = read_thresholds(Path(self.checkpoint) / "thresholds.json", spec.layers)
        theta = tuple(float(t) for t in th.theta)
        beta = checked_thresholds(theta, tuple(float(b) for b in th.beta), th.criterion)
        return Provided(server_inputs(spec, weights, theta, beta), {})


def release_embeddings(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the checkpoint's embedding tables and ``config.json`` to ``out`` (a directory the
    client can read): the server's declared release to the client."""
    from safetensors.numpy import save_file

    tables = {k: v for k, v in read_safetensors(Path(checkpoint) / "model.safetensors").items() if k in EMBEDDING_TABLES}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tables, str(out / "embeddings.safetensors"))
    (out / "config.json").write_text((Path(checkpoint) / "config.json").read_text())
    return out


def _column(row: dict[str, Any], name: str) -> Optional[np.ndarray]:
    return np.asarray(row[name]) if row.get(name) is not None else None


@dataclass(frozen=True)
class ReleaseEmbeddings:
    """A job for the server's party: write the release of ``checkpoint`` to ``out`` (see
    ``release_embeddings``); in a two-host deployment ``out`` is copied to the client's host."""

    checkpoint: str
    out: str

    def run(self) -> None:
        release_embeddings(self.checkpoint, self.out)


@dataclass(frozen=True)
class ClientRequest:
    """The client's inputs for the rows ``indices`` of its tokenised dataset (a ``datasets``
    directory with ``input_ids``, ``attention_mask``, ``token_type_ids``, ``label``) on its own
    host, embedded with the released tables in ``embeddings`` (``release_embeddings``)."""

    dataset: str
    indices: tuple[int, ...]
    embeddings: str
    trace_positions: bool = False

    def load(self) -> Provided:
        """The values; public: each input's token count (``sizes``) and the rows' ``labels`` (the client's own)."""
        from datasets import load_from_disk

        spec = model_spec_of(self.embeddings)
        tables = {k: np.asarray(v, np.float32) for k, v in read_safetensors(Path(self.embeddings) / "embeddings.safetensors").items()}
        rows = load_from_disk(self.dataset).with_format(None).select(list(self.indices))   # plain Python rows
        examples: list[Example] = [(np.asarray(r["input_ids"]), _column(r, "attention_mask"), _column(r, "token_type_ids"))
                                   for r in rows]
        values, sizes = client_inputs(spec, tables, examples, self.trace_positions)
        labels = [None if r.get("label") is None else float(r["label"]) for r in rows]
        return Provided(values, {"sizes": sizes, "labels": labels})


@dataclass(frozen=True)
class ContextRequest:
    """The client's inputs for causal next-token prediction: of its token blocks (``blocks``: a
    ``.npy`` file ``[N, L]`` of token ids on its own host), the rows ``indices``, each cut to its
    first ``seq_len`` tokens (the context), embedded with the released tables in ``embeddings``.
    ``appended``: tokens the client generated after that context (argmaxes of its own revealed
    logits); the context is then the last ``seq_len`` tokens of the first ``seq_len`` and
    ``appended`` (a sliding window: every step the same shapes and positions 0..seq_len−1)."""

    blocks: str
    indices: tuple[int, ...]
    seq_len: int
    embeddings: str
    appended: tuple[int, ...] = ()

    def load(self) -> Provided:
        """The values; public: each context's token count (``sizes``) and, as the client's own
        labels, the token that follows each context in its text (``labels``; the client scores its
        predictions; ``None`` after generated tokens, which have no such token)."""
        spec = model_spec_of(self.embeddings)
        tables = {k: np.asarray(v, np.float32) for k, v in read_safetensors(Path(self.embeddings) / "embeddings.safetensors").items()}
        rows = np.load(self.blocks, mmap_mode="r")[list(self.indices)]
        if not 1 <= self.seq_len < rows.shape[1]:
            raise ValueError(f"seq_len={self.seq_len}: expected 1 <= seq_len < {rows.shape[1]} (the block length)")
        examples: list[Example] = [(self.context(r), None, None) for r in rows]
        values, sizes = client_inputs(spec, tables, examples)
        labels = [None if self.appended else int(r[self.seq_len]) for r in rows]
        return Provided(values, {"sizes": sizes, "labels": labels})

    def context(self, block: np.ndarray) -> np.ndarray:
        """The context ``[seq_len]`` this request makes of one ``block`` (class docstring)."""
        head = np.asarray(block[: self.seq_len])
        return np.concatenate([head, np.asarray(self.appended, head.dtype)])[-self.seq_len:]
