"""Layer-by-layer runner: the secure forward pass with token pruning, and its plaintext twin.

``secure_forward`` drives a ``protocols.session`` session: it shares the client's embedded
sequence and mask and the server's weights and thresholds, runs each program of
``protocols.transformer`` / ``protocols.pruning`` (compiled for the current token count;
the session caches programs by shape), and opens only

* ``k_l`` (kept count, layer l; to both) for ``prune`` / ``prune_reduce``,
* ``k_high_l`` (high-group size; to both) for ``prune_reduce``,
* the final logits (to the client).

``bolt_we`` opens nothing extra (⌈n/2⌉ is public). ``plaintext_forward`` runs the very
same functions and decision logic on a ``PlainSession`` (plain JAX): the emulation the
tests compare to. Padding tokens are removed at the first pruning step (their ``valid``
is 0 so ``M = 0``); only the count is revealed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import jax.numpy as jnp
import numpy as np

from protocols import pruning as pr
from protocols import transformer as tf
from protocols.model_spec import PruningSpec, TransformerSpec
from protocols.session import PlainSession, RevealRecord, Session


@dataclass
class SecureResult:
    """Outcome of one forward pass.

    ``logits``: ``[num_labels]`` (BERT) or ``[n, V]`` / ``[V]`` (GPT-2).
    ``kept_per_layer[l]``: tokens after layer l's pruning (= tokens of layer l's FFN).
    ``entering_per_layer[l]``: tokens entering layer l (layer 0 = padded length).
    ``high_per_layer[l]``: Π_reduce's k_high at layer l, else None.
    ``scores``: importance scores per layer (plaintext runs only; empty for secure runs).
    """

    logits: np.ndarray
    kept_per_layer: list[int]
    high_per_layer: list[Optional[int]]
    reveals: list[RevealRecord]
    cost: Any
    entering_per_layer: list[int] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)


# ----------------------------------------------------------------------------- pruning programs
def prune_step(probs: jnp.ndarray, theta: jnp.ndarray, valid: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Attention received, Π_prune mask and count: ``R`` ``[n]`` (``S·H·n``), ``M`` ``[n]``, ``k`` ``[]``."""
    heads, n, _ = probs.shape
    r = pr.attention_received(probs)
    m, k = pr.prune_mask(r, theta[0], valid, scale=heads * n)
    return r, m, k


def reduce_step(received: jnp.ndarray, beta: jnp.ndarray, keep: jnp.ndarray, *,
                scale: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Π_reduce grouping from ``R`` (``scale = H·n``): ``high`` ``[n]``, ``k_high`` ``[]``."""
    return pr.reduce_mask(received, beta[0], keep, scale=scale)


def score_step(probs: jnp.ndarray) -> jnp.ndarray:
    """Importance scores only (BOLT WE): ``[n]``."""
    return pr.importance(probs)


def _count(session: Session, name: str, purpose: str, layer: int) -> int:
    return int(round(float(np.asarray(session.reveal(name, to="both", purpose=purpose, layer=layer)).reshape(-1)[0])))


def _prune_layer(s: Session, l: int, method: str, n: int, heads: int, record: bool,
                 scores_out: list[np.ndarray]) -> tuple[int, Optional[int]]:
    """Prune ``h``/``valid`` after layer l's attention block; returns (k, k_high)."""
    if method == "bolt_we":
        s.run(score_step, ["A"], ["S"], op="Prune", layer=l)
        if record:
            scores_out.append(np.asarray(s.reveal("S", to="both", purpose="plaintext reference scores", layer=l)))
        keep = math.ceil(n / 2)
        s.run(pr.bolt_we_select, ["h", "S", "valid"], ["h", "valid"], op="Prune", layer=l, static={"keep": keep})
        s.delete("S")
        return keep, None
    s.run(prune_step, ["A", f"theta{l}", "valid"], ["R", "M", "k"], op="Prune", layer=l)
    if record:
        received = np.asarray(s.reveal("R", to="both", purpose="plaintext reference scores", layer=l))
        scores_out.append(received / (heads * n))
    k = _count(s, "k", "kept count", l)
    if method == "prune":
        if k < n:
            s.run(pr.prune_select, ["h", "M", "valid"], ["h", "valid"], op="Prune", layer=l, static={"k": k})
        s.delete("R", "M", "k")
        return k, None
    s.run(reduce_step, ["R", f"beta{l}", "M"], ["high", "kh"], op="Reduce", layer=l, static={"scale": heads * n})
    k_high = _count(s, "kh", "high-group count", l)
    s.run(pr.reduce_select, ["h", "M", "high", "valid"], ["h", "valid"], op="Reduce", layer=l,
          static={"k": k, "k_high": k_high})
    s.delete("R", "M", "k", "high", "kh")
    return k, k_high


# ----------------------------------------------------------------------------- runner
def run_forward(session: Session, spec: TransformerSpec, weights: dict[str, np.ndarray], input_ids: np.ndarray,
                attention_mask: Optional[np.ndarray] = None, token_type_ids: Optional[np.ndarray] = None,
                pruning: PruningSpec = PruningSpec(), *, last_only: bool = False,
                record_scores: bool = False) -> SecureResult:
    """Run the model on ``session`` (secure or plain). Single example: ``input_ids`` ``[n]``."""
    pruning.check_layers(spec.layers)
    if spec.causal and pruning.method != "none":
        raise ValueError(f"pruning method {pruning.method!r} is not defined for causal (GPT-2) models")
    s = session
    ids = np.asarray(input_ids).reshape(-1)
    n = ids.shape[0]
    mask = np.ones(n, np.float32) if attention_mask is None else np.asarray(attention_mask, np.float32).reshape(-1)
    s.share("h", tf.client_embed(spec, weights, ids, token_type_ids), owner="client")
    s.share("valid", mask, owner="client")
    for name, value in tf.server_weights(spec, weights).items():
        s.share(name, value, owner="server")
    for l in range(len(pruning.theta)):
        s.share(f"theta{l}", np.array([pruning.theta[l]], np.float32), owner="server")
        s.share(f"beta{l}", np.array([pruning.beta[l]], np.float32), owner="server")
    eps, heads = spec.layer_norm_eps, spec.heads
    if not spec.causal:
        s.run(tf.layernorm, ["h", "emb_ln.g", "emb_ln.b"], ["h"], op="LayerNorm", static={"eps": eps})
    kept: list[int] = []
    entering: list[int] = []
    highs: list[Optional[int]] = []
    scores: list[np.ndarray] = []
    k_high_prev: Optional[int] = None
    for l in range(spec.layers):
        p = f"l{l}."
        entering.append(n)
        x = "h"
        if spec.causal:
            s.run(tf.layernorm, ["h", p + "ln1.g", p + "ln1.b"], ["x"], op="LayerNorm", layer=l, static={"eps": eps})
            x = "x"
        s.run(tf.qkv, [x] + [p + w for w in ("wq", "bq", "wk", "bk", "wv", "bv")], ["q", "k", "v"], op="Linear", layer=l)
        s.run(tf.attention_scores, ["q", "k"], ["sc"], op="Linear", layer=l, static={"heads": heads})
        s.run(tf.attention_probs, ["sc", "valid"], ["A"], op="Softmax", layer=l,
              static={"k_high": k_high_prev, "causal": spec.causal})
        s.run(tf.attention_output, ["A", "v", p + "wo", p + "bo"], ["a"], op="Linear", layer=l, static={"heads": heads})
        if spec.causal:
            s.run(_add, ["a", "h"], ["h"], op="Other", layer=l)
        else:
            s.run(tf.add_layernorm, ["a", "h", p + "ln1.g", p + "ln1.b"], ["h"], op="LayerNorm", layer=l,
                  static={"eps": eps})
        s.delete("q", "k", "v", "sc", "a")
        k_high: Optional[int] = None
        if pruning.method in ("prune", "prune_reduce") or (pruning.method == "bolt_we" and l == 0):
            n, k_high = _prune_layer(s, l, pruning.method, n, heads, record_scores, scores)
        elif record_scores:
            s.run(score_step, ["A"], ["S"], op="Other", layer=l)
            scores.append(np.asarray(s.reveal("S", to="both", purpose="plaintext reference scores", layer=l)))
        s.delete("A")
        kept.append(n)
        highs.append(k_high)
        x = "h"
        if spec.causal:
            s.run(tf.layernorm, ["h", p + "ln2.g", p + "ln2.b"], ["x"], op="LayerNorm", layer=l, static={"eps": eps})
            x = "x"
        s.run(tf.linear, [x, p + "w1", p + "b1"], ["f"], op="Linear", layer=l)
        s.run(tf.gelu, ["f"], ["f"], op="GELU", layer=l, static={"k_high": k_high})
        if spec.causal:
            s.run(tf.linear_residual, ["f", p + "w2", p + "b2", "h"], ["h"], op="Linear", layer=l)
        else:
            s.run(tf.linear, ["f", p + "w2", p + "b2"], ["f"], op="Linear", layer=l)
            s.run(tf.add_layernorm, ["f", "h", p + "ln2.g", p + "ln2.b"], ["h"], op="LayerNorm", layer=l,
                  static={"eps": eps})
        s.delete("f", "x")
        k_high_prev = k_high
    if spec.causal:
        s.run(tf.lm_logits, ["h", "lnf.g", "lnf.b", "lm.w"], ["logits"], op="Other",
              static={"eps": eps, "last_only": last_only})
    else:
        s.run(tf.pool_classify, ["h", "pool.w", "pool.b", "cls.w", "cls.b"], ["logits"], op="Other")
    logits = np.asarray(s.reveal("logits", to="client", purpose="final logits"))
    return SecureResult(logits=logits, kept_per_layer=kept, high_per_layer=highs, reveals=list(s.reveals),
                        cost=s.meter.report(), entering_per_layer=entering, scores=scores)


def _add(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Residual addition (local on shares)."""
    return a + b


def secure_forward(session: Session, spec: TransformerSpec, weights: dict[str, np.ndarray], input_ids: np.ndarray,
                   attention_mask: Optional[np.ndarray] = None, token_type_ids: Optional[np.ndarray] = None,
                   pruning: PruningSpec = PruningSpec(), *, last_only: bool = False) -> SecureResult:
    """Private inference on an open ``TwoPartySession``; reveals only counts and the logits.

    Cost: see ``protocols.transformer`` / ``protocols.pruning``; measured in ``result.cost``
    (the session meter's report, per op class and layer).
    """
    return run_forward(session, spec, weights, input_ids, attention_mask, token_type_ids, pruning,
                       last_only=last_only)


def plaintext_forward(spec: TransformerSpec, weights: dict[str, np.ndarray], input_ids: np.ndarray,
                      attention_mask: Optional[np.ndarray] = None, token_type_ids: Optional[np.ndarray] = None,
                      pruning: PruningSpec = PruningSpec(), *, last_only: bool = False) -> SecureResult:
    """The same forward pass in plain JAX (``PlainSession``), with importance scores recorded."""
    with PlainSession() as s:
        return run_forward(s, spec, weights, input_ids, attention_mask, token_type_ids, pruning,
                           last_only=last_only, record_scores=True)
