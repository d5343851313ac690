"""BERT / GPT-2 as program-sized JAX functions over secret-shared weights.

Threat model (as BOLT): the client holds the token ids, the attention mask and the
embedding tables (word, position, token type), so it computes the embedded sequence
``x = E_word[ids] + E_pos + E_type[tt]`` ``[n, d]`` in the clear (``client_embed``) and
secret-shares ``x`` and its mask. Everything after that — embedding LayerNorm, every
encoder layer, pooler and classifier — runs on secret shares; the server's weights are
secret-shared by the server. Only token counts (pruning) and the final logits (to the
client) are opened, by the runner.

Each function below is one SPU program (the runner meters it under one op class:
Linear, Softmax, GELU, LayerNorm or Other). Weights come in the canonical names of
``server_weights`` in ``x @ W`` layout ``[in, out]`` (BERT's torch ``[out, in]`` Linear
weights are transposed locally by the server). Shapes: ``n`` tokens, ``d`` hidden,
``H`` heads, ``f`` intermediate, ``V`` vocabulary / labels.

The very same functions run in plain JAX: that is the "JAX plaintext" reference.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from models.approx import ATTENTION_MASK_BIAS
from protocols import nonlinear
from protocols.model_spec import TransformerSpec


# ----------------------------------------------------------------------------- client / server side (plaintext)
def client_embed(spec: TransformerSpec, weights: dict[str, np.ndarray], input_ids: np.ndarray,
                 token_type_ids: np.ndarray | None = None) -> np.ndarray:
    """The client's embedded sequence ``[n, d]`` float32 from ``input_ids`` ``[n]`` (no LayerNorm).

    Reveals: nothing (computed by the client on its own data and the embedding tables).
    """
    ids = np.asarray(input_ids, dtype=np.int64).reshape(-1)
    n = ids.shape[0]
    if n > spec.max_positions:
        raise ValueError(f"sequence length {n} > max_positions={spec.max_positions}")
    if spec.causal:
        x = weights["transformer.wte.weight"][ids] + weights["transformer.wpe.weight"][:n]
    else:
        tt = np.zeros(n, np.int64) if token_type_ids is None else np.asarray(token_type_ids, np.int64).reshape(-1)
        e = "bert.embeddings."
        x = (weights[e + "word_embeddings.weight"][ids] + weights[e + "position_embeddings.weight"][:n]
             + weights[e + "token_type_embeddings.weight"][tt])
    return np.asarray(x, np.float32)


def server_weights(spec: TransformerSpec, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The server's weights in canonical names and ``[in, out]`` layout (local, plaintext).

    BERT: ``emb_ln.{g,b}``, per layer ``l{l}.{wq,bq,wk,bk,wv,bv,wo,bo,ln1.g,ln1.b,w1,b1,w2,b2,
    ln2.g,ln2.b}`` (ln1 after attention, ln2 after FFN), ``pool.{w,b}``, ``cls.{w,b}``.
    GPT-2: the same per-layer names with ln1/ln2 *before* attention/FFN, ``lnf.{g,b}``, ``lm.w``.
    """
    f32 = lambda a: np.ascontiguousarray(np.asarray(a, np.float32))  # noqa: E731
    out: dict[str, np.ndarray] = {}
    d = spec.hidden
    if spec.causal:
        for l in range(spec.layers):
            p = f"transformer.h.{l}."
            w, b = weights[p + "attn.c_attn.weight"], weights[p + "attn.c_attn.bias"]
            for i, nm in enumerate("qkv"):
                out[f"l{l}.w{nm}"], out[f"l{l}.b{nm}"] = f32(w[:, i * d:(i + 1) * d]), f32(b[i * d:(i + 1) * d])
            out[f"l{l}.wo"], out[f"l{l}.bo"] = f32(weights[p + "attn.c_proj.weight"]), f32(weights[p + "attn.c_proj.bias"])
            out[f"l{l}.w1"], out[f"l{l}.b1"] = f32(weights[p + "mlp.c_fc.weight"]), f32(weights[p + "mlp.c_fc.bias"])
            out[f"l{l}.w2"], out[f"l{l}.b2"] = f32(weights[p + "mlp.c_proj.weight"]), f32(weights[p + "mlp.c_proj.bias"])
            for i in (1, 2):
                out[f"l{l}.ln{i}.g"], out[f"l{l}.ln{i}.b"] = f32(weights[p + f"ln_{i}.weight"]), f32(weights[p + f"ln_{i}.bias"])
        out["lnf.g"], out["lnf.b"] = f32(weights["transformer.ln_f.weight"]), f32(weights["transformer.ln_f.bias"])
        out["lm.w"] = f32(weights.get("lm_head.weight", weights["transformer.wte.weight"]).T)
        return out
    out["emb_ln.g"] = f32(weights["bert.embeddings.LayerNorm.weight"])
    out["emb_ln.b"] = f32(weights["bert.embeddings.LayerNorm.bias"])
    for l in range(spec.layers):
        p = f"bert.encoder.layer.{l}."
        lin = {"wq": "attention.self.query", "wk": "attention.self.key", "wv": "attention.self.value",
               "wo": "attention.output.dense", "w1": "intermediate.dense", "w2": "output.dense"}
        for nm, key in lin.items():
            out[f"l{l}.{nm}"] = f32(weights[p + key + ".weight"].T)
            out[f"l{l}.b{nm[1]}"] = f32(weights[p + key + ".bias"])
        for i, key in ((1, "attention.output.LayerNorm"), (2, "output.LayerNorm")):
            out[f"l{l}.ln{i}.g"], out[f"l{l}.ln{i}.b"] = f32(weights[p + key + ".weight"]), f32(weights[p + key + ".bias"])
    out["pool.w"], out["pool.b"] = f32(weights["bert.pooler.dense.weight"].T), f32(weights["bert.pooler.dense.bias"])
    out["cls.w"], out["cls.b"] = f32(weights["classifier.weight"].T), f32(weights["classifier.bias"])
    return out


# ----------------------------------------------------------------------------- secure programs
def layernorm(x: jnp.ndarray, g: jnp.ndarray, b: jnp.ndarray, *, eps: float) -> jnp.ndarray:
    """LayerNorm ``[n, d]`` → ``[n, d]``. Cost: n rsqrt + 2nd products (see nonlinear)."""
    return nonlinear.layernorm(x, g, b, eps)


def add_layernorm(x: jnp.ndarray, res: jnp.ndarray, g: jnp.ndarray, b: jnp.ndarray, *, eps: float) -> jnp.ndarray:
    """BERT's post-LN ``LN(x + res)`` ``[n, d]``."""
    return nonlinear.layernorm(x + res, g, b, eps)


def qkv(h: jnp.ndarray, wq: jnp.ndarray, bq: jnp.ndarray, wk: jnp.ndarray, bk: jnp.ndarray,
        wv: jnp.ndarray, bv: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Q, K, V ``[n, d]`` each. Cost: three n×d×d secret matmuls."""
    return h @ wq + bq, h @ wk + bk, h @ wv + bv


def attention_scores(q: jnp.ndarray, k: jnp.ndarray, *, heads: int) -> jnp.ndarray:
    """Scaled scores ``[H, n, n]``. Cost: H secret×secret n×(d/H)×n matmuls."""
    n, d = q.shape
    dh = d // heads
    qh = q.reshape(n, heads, dh).transpose(1, 0, 2)
    kh = k.reshape(n, heads, dh).transpose(1, 0, 2)
    return jnp.einsum("hid,hjd->hij", qh, kh) * (1.0 / math.sqrt(dh))


def attention_probs(scores: jnp.ndarray, valid: jnp.ndarray, *, k_high: int | None, causal: bool) -> jnp.ndarray:
    """Softmax ``[H, n, n]`` with padding keys biased by ``ATTENTION_MASK_BIAS`` (from the
    client's secret ``valid`` ``[n]``: bias is linear in it, local) and, if ``causal``, a
    public causal mask. Query rows ``[0:k_high]`` use EXP_HIGH, the rest EXP_LOW
    (``None``: all high). Cost: H·n rows of n (see ``nonlinear.softmax``).
    """
    n = scores.shape[-1]
    bias = ((1.0 - valid) * ATTENTION_MASK_BIAS)[None, None, :]
    if causal:
        bias = bias + jnp.asarray((1.0 - np.tril(np.ones((n, n), np.float32))) * ATTENTION_MASK_BIAS)[None]
    return nonlinear.softmax_split(scores, bias, k_high)


def attention_output(probs: jnp.ndarray, v: jnp.ndarray, wo: jnp.ndarray, bo: jnp.ndarray, *,
                     heads: int) -> jnp.ndarray:
    """``concat_h(A_h V_h) Wo + bo`` ``[n, d]``. Cost: H n×n×(d/H) + one n×d×d matmul."""
    n, d = v.shape
    vh = v.reshape(n, heads, d // heads).transpose(1, 0, 2)
    ctx = jnp.einsum("hij,hjd->hid", probs, vh).transpose(1, 0, 2).reshape(n, d)
    return ctx @ wo + bo


def linear(x: jnp.ndarray, w: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """``x W + b`` ``[n, out]``. Cost: one n×in×out secret matmul."""
    return x @ w + b


def linear_residual(x: jnp.ndarray, w: jnp.ndarray, b: jnp.ndarray, res: jnp.ndarray) -> jnp.ndarray:
    """``res + x W + b`` ``[n, out]`` (GPT-2's residual branches)."""
    return res + x @ w + b


def gelu(x: jnp.ndarray, *, k_high: int | None) -> jnp.ndarray:
    """BOLT GELU ``[n, f]``; rows ``[0:k_high]`` GELU_HIGH, the rest GELU_LOW (Π_reduce)."""
    return nonlinear.gelu_split(x, k_high)


def tanh(x: jnp.ndarray) -> jnp.ndarray:
    """Secure-friendly tanh: ``2·σ(2x) − 1`` with ``σ(y) = 1/(1 + exp(−|y|))`` mirrored by sign.

    Uses the BOLT exp on non-positive inputs (1 comparison, 1 exp, 1 reciprocal per element),
    instead of SPU's generic tanh; the plaintext reference evaluates the same formula.
    """
    y = 2.0 * x
    e = nonlinear.exp_nonpositive(-jnp.abs(y))
    sig_abs = 1.0 / (1.0 + e)
    sig = jnp.where(y >= 0, sig_abs, 1.0 - sig_abs)
    return 2.0 * sig - 1.0


def pool_classify(h: jnp.ndarray, wp: jnp.ndarray, bp: jnp.ndarray, wc: jnp.ndarray, bc: jnp.ndarray) -> jnp.ndarray:
    """BERT pooler (row 0 = [CLS], dense, tanh) and classifier → logits ``[num_labels]``."""
    return tanh(h[0] @ wp + bp) @ wc + bc


def lm_logits(h: jnp.ndarray, g: jnp.ndarray, b: jnp.ndarray, w: jnp.ndarray, *, eps: float,
              last_only: bool) -> jnp.ndarray:
    """GPT-2 final LN and LM head: ``[n, V]`` (or ``[V]`` for the last position)."""
    x = h[-1:] if last_only else h
    out = nonlinear.layernorm(x, g, b, eps) @ w
    return out[0] if last_only else out
