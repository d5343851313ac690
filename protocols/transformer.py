"""BERT / GPT-2 as program-sized JAX functions over secret-shared weights.

Threat model (as BOLT): the client holds the token ids, the attention mask and the
embedding tables (word, position, token type), so it computes the embedded sequence
``x = E_word[ids] + E_pos + E_type[tt]`` ``[n, d]`` in the clear (``client_embed``) and
brings ``x`` and its mask into the session. Everything after that — embedding LayerNorm,
every encoder layer, pooler and classifier — runs under MPC; the server's weights stay
private to the server where the protocol allows it (``SessionSpec.private_owners``), so a
weight matmul is secret × server-private. Only token counts (pruning) and the final
logits (to the client) are opened, by the runner.

Several inputs may run in one program: their rows are stacked (``protocols.batch.Layout``);
row-wise programs (Linear, LayerNorm, GELU) see one ``[total, d]`` operand, attention runs
per input.

Each function below is one SPU program (the runner meters it under one op class:
Linear, Softmax, GELU, LayerNorm or Other). Weights come in the canonical names of
``server_weights`` in ``x @ W`` layout ``[in, out]`` (BERT's torch ``[out, in]`` Linear
weights are transposed locally by the server). Shapes: ``n`` tokens (``total`` stacked rows
of a batch), ``d`` hidden,
``H`` heads, ``f`` intermediate, ``V`` vocabulary / labels.

The very same functions run in plain JAX: that is the "JAX plaintext" reference.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from models.approx import ATTENTION_MASK_BIAS, REDUCE_FORMS, family_of
from protocols import nonlinear
from protocols.batch import Layout, iter_groups, stack_group, unstack_groups, visibility_blocks
from protocols.model_spec import TransformerSpec

if ATTENTION_MASK_BIAS != int(ATTENTION_MASK_BIAS):      # attention_probs builds the secret causal bias in integers
    raise ValueError(f"models.approx.ATTENTION_MASK_BIAS={ATTENTION_MASK_BIAS}: expected an integer value")


# ----------------------------------------------------------------------------- client / server side (plaintext)
def check_token_ids(ids: np.ndarray, bound: int, name: str) -> None:
    """``ValueError`` naming the first position and value of ``ids`` that is not an integer in
    ``[0, bound)`` (numpy would wrap a negative id to the table's end and fail only past it)."""
    ids = np.asarray(ids).reshape(-1)
    if not np.issubdtype(ids.dtype, np.integer):
        fractional = ~np.isfinite(ids) | (ids != np.round(ids))
        if np.any(fractional):
            bad = int(np.argmax(fractional))
            raise ValueError(f"{name}[{bad}]={ids[bad]!r}: token ids must be integers")
    outside = (ids < 0) | (ids >= bound)
    if np.any(outside):
        bad = int(np.argmax(outside))
        raise ValueError(f"{name}[{bad}]={ids[bad]}: outside the model's vocabulary [0, {bound})")


def client_embed(spec: TransformerSpec, weights: dict[str, np.ndarray], input_ids: np.ndarray,
                 token_type_ids: np.ndarray | None = None) -> np.ndarray:
    """The client's embedded sequence ``[n, d]`` float32 from ``input_ids`` ``[n]`` (no LayerNorm).

    Reveals: nothing (computed by the client on its own data and the embedding tables).
    """
    ids = np.asarray(input_ids).reshape(-1)
    n = ids.shape[0]
    if n > spec.max_positions:
        raise ValueError(f"sequence length {n} > max_positions={spec.max_positions}")
    check_token_ids(ids, spec.vocab_size, "input_ids")
    ids = ids.astype(np.int64)
    if spec.causal:
        x = weights["transformer.wte.weight"][ids] + weights["transformer.wpe.weight"][:n]
    else:
        tt = np.zeros(n, np.int64) if token_type_ids is None else np.asarray(token_type_ids).reshape(-1)
        if tt.shape != ids.shape:
            raise ValueError(f"token_type_ids has shape {tt.shape}, input_ids {ids.shape}")
        check_token_ids(tt, spec.type_vocab, "token_type_ids")
        tt = tt.astype(np.int64)
        e = "bert.embeddings."
        x = (weights[e + "word_embeddings.weight"][ids] + weights[e + "position_embeddings.weight"][:n]
             + weights[e + "token_type_embeddings.weight"][tt])
    return np.asarray(x, np.float32)


def server_weights(spec: TransformerSpec, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The server's weights in canonical names and ``[in, out]`` layout (local, plaintext), each
    checked against ``spec``'s shape: ``ValueError`` naming a missing Hugging Face key or a tensor of
    the wrong shape (a file that does not belong to ``config.json``)."""
    try:
        out = _canonical_weights(spec, weights)
    except KeyError as e:
        raise ValueError(f"the weights lack {e.args[0]!r} (a {'GPT-2' if spec.causal else 'BERT'} checkpoint of "
                         f"{spec.layers} layers needs it)") from None
    d, inner = spec.hidden, spec.intermediate
    special = {"w1": (d, inner), "b1": (inner,), "w2": (inner, d), "pool.w": (d, d), "cls.w": (d, spec.num_labels),
               "cls.b": (spec.num_labels,), "lm.w": (d, spec.vocab_size)}
    for name, value in out.items():
        key = name.split(".", 1)[1] if name[1].isdigit() else name
        expected = special.get(key, (d, d) if key in ("wq", "wk", "wv", "wo") else (d,))
        if value.shape != expected:
            raise ValueError(f"weight {name} has shape {value.shape}, but config.json's model needs {expected}")
    return out


def _canonical_weights(spec: TransformerSpec, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``server_weights``'s renaming and transposition, unchecked.

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


def head_slices(heads: int, per_program: int | None) -> list[tuple[int, int]]:
    """Head ranges ``[h0, h1)`` of at most ``per_program`` heads each (None: all ``heads`` in one):
    attention then runs one program per range, so a program's memory grows with its own heads·n²,
    not the layer's (the same values and matmul bytes; each range pays the programs' rounds again
    and each extra softmax program the protocol's fixed per-call bytes, ≈ 1.1 MB under CHEETAH)."""
    if per_program is not None and per_program < 1:
        raise ValueError(f"heads_per_program={per_program}: must be >= 1 or None")
    step = heads if per_program is None else min(per_program, heads)
    return [(h0, min(h0 + step, heads)) for h0 in range(0, heads, step)]


def _heads_of(x: jnp.ndarray, layout: Layout, members: tuple[int, ...], heads: int,
              head_range: tuple[int, int] | None) -> jnp.ndarray:
    """Rows of ``members`` split into heads, ``[g, h1−h0, n, d/H]`` for the heads of ``head_range``
    (None: all ``heads``)."""
    h0, h1 = head_range or (0, heads)
    g = stack_group(x, layout, members)
    return g.reshape(g.shape[0], g.shape[1], heads, -1)[:, :, h0:h1].transpose(0, 2, 1, 3)


def attention_scores(q: jnp.ndarray, k: jnp.ndarray, *, heads: int, layout: Layout,
                     head_range: tuple[int, int] | None = None) -> jnp.ndarray:
    """Scaled scores of each input's own tokens, flat ``[Σ_groups g·H'·n·n]`` (``Layout.groups``
    order; one input: ``[H', n, n]`` raveled) for the ``H'`` heads of ``head_range`` (None: all
    ``H``). Cost: per group one batched secret×secret ``[g·H'] × n×(d/H)×n`` matmul."""
    dh = q.shape[1] // heads
    parts = []
    for _, _, members in layout.groups():
        qg, kg = (_heads_of(x, layout, members, heads, head_range) for x in (q, k))
        parts.append((jnp.einsum("ghid,ghjd->ghij", qg, kg) * (1.0 / math.sqrt(dh))).reshape(-1))
    return jnp.concatenate(parts)


def attention_probs(scores: jnp.ndarray, valid: jnp.ndarray, vis: jnp.ndarray | None = None, *, heads: int,
                    layout: Layout, causal: bool, forms: str, family: str) -> jnp.ndarray:
    """Softmax of each input's scores (flat, as ``attention_scores``), padding keys biased by
    ``ATTENTION_MASK_BIAS`` (from the client's secret ``valid`` ``[total]``: bias is linear in
    it, local) and, if ``causal``, a causal mask: public while the rows are in their original
    order, the secret visibility ``vis`` once Π_reduce has reordered them (``Layout.shuffled``;
    its bias is an exact integer product, local). Query rows ``[0:high_b]`` use the exp of
    ``FAMILIES[family]``, the rest the low exp of ``REDUCE_FORMS[forms]`` (``layout.high`` None: all high).
    Cost: Σ_b H·n_b rows of n_b (see ``nonlinear.softmax``), one softmax per group.
    """
    seen = None if vis is None else visibility_blocks(vis, layout)
    parts = []
    for (n, high, members), (_, _, x) in zip(layout.groups(), iter_groups(scores, layout, heads)):
        bias = ((1.0 - stack_group(valid, layout, members)) * ATTENTION_MASK_BIAS)[:, None, None, :]
        if causal and seen is None:
            bias = bias + jnp.asarray((1.0 - np.tril(np.ones((n, n), np.float32))) * ATTENTION_MASK_BIAS)[None, None]
        elif causal:
            hidden = jnp.stack([(1 - seen[b]) * int(ATTENTION_MASK_BIAS) for b in members])  # type: ignore[index]
            bias = bias + hidden.astype(scores.dtype)[:, None]
        parts.append(nonlinear.softmax_split(x, bias, high, forms, family).reshape(-1))
    return jnp.concatenate(parts)


def attention_context(probs: jnp.ndarray, v: jnp.ndarray, *, heads: int, layout: Layout,
                      head_range: tuple[int, int] | None = None) -> jnp.ndarray:
    """``concat_h(A_h V_h)`` over the ``H'`` heads of ``head_range`` (None: all ``H``), ``[total,
    H'·d/H]``; ``probs`` flat for those heads. Cost: per group a batched ``[g·H'] × n×n×(d/H)``
    secret×secret matmul."""
    h0, h1 = head_range or (0, heads)
    ctx: dict[int, jnp.ndarray] = {}
    for n, members, a in iter_groups(probs, layout, h1 - h0):
        out = jnp.einsum("ghij,ghjd->ghid", a, _heads_of(v, layout, members, heads, head_range))
        ctx.update({b: out[i].transpose(1, 0, 2).reshape(n, -1) for i, b in enumerate(members)})
    return unstack_groups(ctx, layout)


def attention_project(wo: jnp.ndarray, bo: jnp.ndarray, *contexts: jnp.ndarray) -> jnp.ndarray:
    """``concat(contexts) Wo + bo`` ``[total, d]`` (the head ranges' contexts in head order).
    Cost: one ``total×d×d`` matmul with the server's ``Wo``."""
    return jnp.concatenate(contexts, axis=1) @ wo + bo


def attention_output(probs: jnp.ndarray, v: jnp.ndarray, wo: jnp.ndarray, bo: jnp.ndarray, *,
                     heads: int, layout: Layout) -> jnp.ndarray:
    """``concat_h(A_h V_h) Wo + bo`` ``[total, d]``, all heads in one program
    (``attention_context`` then ``attention_project``)."""
    return attention_project(wo, bo, attention_context(probs, v, heads=heads, layout=layout))


def merge_heads(*chunks: jnp.ndarray, widths: tuple[int, ...], layout: Layout) -> jnp.ndarray:
    """The flat probs of head ranges of ``widths`` heads each (in head order) as one flat
    ``[Σ_groups g·H·n·n]`` tensor, ``H = Σ widths`` (what Π_prune's score reads). Cost: local."""
    parts = []
    for groups in zip(*(iter_groups(c, layout, w) for c, w in zip(chunks, widths))):
        parts.append(jnp.concatenate([a for _, _, a in groups], axis=1).reshape(-1))
    return jnp.concatenate(parts)


def linear(x: jnp.ndarray, w: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """``x W + b`` ``[n, out]``. Cost: one n×in×out secret matmul."""
    return x @ w + b


def linear_residual(x: jnp.ndarray, w: jnp.ndarray, b: jnp.ndarray, res: jnp.ndarray) -> jnp.ndarray:
    """``res + x W + b`` ``[n, out]`` (GPT-2's residual branches)."""
    return res + x @ w + b


def gelu(x: jnp.ndarray, *, layout: Layout, forms: str, family: str) -> jnp.ndarray:
    """GELU ``[total, f]``; each input's first ``layout.high[b]`` rows use the GELU of
    ``FAMILIES[family]``, the rest the low form of ``REDUCE_FORMS[forms]`` (Π_reduce; ``layout.high``
    None: all high). The high rows of all inputs are evaluated as one array and the low rows as
    another (static row moves: local)."""
    high = family_of(family).gelu
    if layout.high is None:
        return nonlinear.gelu(x, high)
    highs = [r[:k] for r, k in zip(layout.split(x), layout.high)]
    lows = [r[k:] for r, k in zip(layout.split(x), layout.high)]
    y_high = nonlinear.gelu(jnp.concatenate(highs, axis=0), high)
    y_low = nonlinear.gelu_form(jnp.concatenate(lows, axis=0), REDUCE_FORMS[forms].gelu)
    out, hi, lo = [], 0, 0
    for n, k in zip(layout.sizes, layout.high):
        out += [y_high[hi:hi + k], y_low[lo:lo + n - k]]
        hi, lo = hi + k, lo + n - k
    return jnp.concatenate(out, axis=0)


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


def pool_classify(h: jnp.ndarray, wp: jnp.ndarray, bp: jnp.ndarray, wc: jnp.ndarray, bc: jnp.ndarray, *,
                  layout: Layout) -> jnp.ndarray:
    """BERT pooler (each input's first row = [CLS], dense, tanh) and classifier → logits
    ``[B, num_labels]``."""
    cls = jnp.concatenate([h[o:o + 1] for o in layout.offsets], axis=0)
    return tanh(cls @ wp + bp) @ wc + bc


def lm_logits(h: jnp.ndarray, g: jnp.ndarray, b: jnp.ndarray, w: jnp.ndarray, *, eps: float,
              last_only: bool, layout: Layout) -> jnp.ndarray:
    """GPT-2 final LN and LM head: ``[total, V]`` (rows in the layout's order), or ``[B, V]`` for
    each input's last position (``Layout.forced_offsets``: its last row, or its first once Π_reduce
    has reordered the rows)."""
    x = jnp.concatenate([h[o:o + 1] for o in layout.forced_offsets(causal=True)], axis=0) if last_only else h
    return nonlinear.layernorm(x, g, b, eps) @ w
