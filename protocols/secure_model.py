"""Layer-by-layer runner: the secure forward pass with token pruning, and its plaintext twin.

``secure_forward`` drives a ``protocols.session`` session: it shares the client's embedded
sequence and mask and the server's weights and thresholds, runs each program of
``protocols.transformer`` / ``protocols.pruning`` (compiled for the current token count;
the session caches programs by shape), and opens only

* ``k_l`` (kept count, layer l; to both) for ``prune`` / ``prune_reduce``,
* ``k_high_l`` (high-group size; to both) for ``prune_reduce``,
* the final logits (to the client).

``run_batch`` runs several inputs in one pass (tokens stacked, ``protocols.batch``); the
counts are then ``[B]`` vectors, one entry per input.
``bolt_we`` opens nothing extra (⌈n/2⌉ is public). ``plaintext_forward`` runs the very
same functions and decision logic on a ``PlainSession`` (plain JAX): the emulation the
tests compare to. Padding tokens are removed at the first pruning step (their ``valid``
is 0 so ``M = 0``); only the count is revealed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from models.approx import DEFAULT_REDUCE_FORMS
from protocols import batch as bt
from protocols import transformer as tf
from protocols.batch import Layout
from protocols.meter import CostReport
from protocols.model_spec import PruningSpec, TransformerSpec
from protocols.provision import Example, client_inputs, server_inputs
from protocols.session import PlainSession, RevealRecord, Session


@dataclass
class SecureResult:
    """Outcome of one forward pass.

    ``logits``: ``[num_labels]`` (BERT) or ``[n, V]`` / ``[V]`` (GPT-2).
    ``kept_per_layer[l]``: tokens after layer l's pruning (= tokens of layer l's FFN).
    ``entering_per_layer[l]``: tokens entering layer l (layer 0 = padded length).
    ``high_per_layer[l]``: Π_reduce's k_high at layer l, else None.
    ``scores``: per layer the scores the thresholds compare with, S (absolute criterion) or c·S
    (relative; BOLT WE and unpruned layers: S) (plaintext runs only; empty for secure runs).
    ``kept_positions[l]``: original indices of the tokens after layer l, in their new order
    (plaintext runs, and secure runs with ``trace_positions``; else empty).
    ``cost``: the meter's report of the session so far (for a batch: the whole batch's,
    shared by its ``batch_size`` results).
    """

    logits: np.ndarray
    kept_per_layer: list[int]
    high_per_layer: list[Optional[int]]
    reveals: list[RevealRecord]
    cost: Any
    entering_per_layer: list[int] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)
    batch_size: int = 1
    kept_positions: list[list[int]] = field(default_factory=list)


def _counts(session: Session, name: str, purpose: str, layer: int) -> list[int]:
    """Reveal a per-input count vector ``[B]`` to both parties."""
    value = np.asarray(session.reveal(name, to="both", purpose=purpose, layer=layer)).reshape(-1)
    return [int(round(float(v))) for v in value]


def _select(s: Session, fn: Any, inputs: list[str], *, op: str, layer: int, static: dict[str, Any],
            trace: bool, outputs: tuple[str, ...] = ("h", "valid")) -> None:
    """Run a compaction program on ``h`` (and, when tracing, first on the original positions ``pos``)."""
    if trace:
        extra = [f"_pos_{o}" for o in outputs[1:]]
        s.run(fn, ["pos", *inputs[1:]], ["pos", *extra], op="Other", layer=layer, static=static)
        s.delete(*extra)
    s.run(fn, inputs, list(outputs), op=op, layer=layer, static=static)


def _prune_layer(s: Session, l: int, method: str, layout: Layout, heads: int, record: bool,
                 scores_out: list[list[np.ndarray]], trace: bool = False, criterion: str = "absolute",
                 causal: bool = False) -> Layout:
    """Prune ``h``/``valid`` after layer l's attention block; returns the layout after it
    (kept rows per input and, for ``prune_reduce``, the high-group sizes). ``layout`` is the
    one the attention ran with (its groups order the flat ``A``). ``criterion``: what θ/β compare
    with (``PruningSpec``); after layer 0's Π_prune every row is a real token (padding dropped).
    ``causal`` (GPT-2): scores average over the rows that see each token and the last position is
    forced; ``prune`` and ``bolt_we`` keep the rows' order, so the public causal mask still applies;
    ``prune_reduce`` reorders them (high group first) and carries the secret visibility ``vis``
    (``batch.causal_reduce_select``) that replaces the mask from the next layer on."""
    st = {"layout": layout, "heads": heads}
    vis = ["vis"] if layout.shuffled else []
    if method == "bolt_we":
        s.run(bt.score_step, ["A"], ["S"], op="Prune", layer=l, static={**st, "causal": causal})
        if record:
            _record_scores(s, "S", layout, scores_out, l)
        keep = tuple(math.ceil(n / 2) for n in layout.sizes)
        _select(s, bt.bolt_we_select, ["h", "S", "valid"], op="Prune", layer=l,
                static={"layout": layout, "keep": keep, "causal": causal}, trace=trace)
        s.delete("S")
        return Layout(keep)
    s.run(bt.prune_step, ["A", f"theta{l}", "valid", *vis], ["R", "M", "k"], op="Prune", layer=l,
          static={**st, "relative": criterion == "relative", "all_valid": l > 0, "causal": causal})
    if record and layout.shuffled:                         # the scale is secret: S from the visibility
        s.run(bt.score_step, ["A", *vis], ["S"], op="Other", layer=l, static={**st, "causal": causal})
        _record_scores(s, "S", layout, scores_out, l)
    elif record:
        _record_scores(s, "R", layout, scores_out, l, scale=layout.row_scale(heads, causal))
    k = tuple(_counts(s, "k", "kept count", l))
    if method == "prune":
        if k != layout.sizes:
            _select(s, bt.prune_select, ["h", "M", "valid"], op="Prune", layer=l,
                    static={"layout": layout, "k": k}, trace=trace)
        s.delete("R", "M", "k", "S")
        return Layout(k)
    s.run(bt.reduce_step, ["R", f"beta{l}", "M", *vis], ["high", "kh"], op="Reduce", layer=l,
          static={**st, "causal": causal})
    k_high = tuple(_counts(s, "kh", "high-group count", l))
    static = {"layout": layout, "k": k, "k_high": k_high}
    if causal:
        _select(s, bt.causal_reduce_select, ["h", "M", "high", "valid", *vis], op="Reduce", layer=l, static=static,
                trace=trace, outputs=("h", "valid", "vis"))
    else:
        _select(s, bt.reduce_select, ["h", "M", "high", "valid"], op="Reduce", layer=l, static=static, trace=trace)
    s.delete("R", "M", "k", "high", "kh", "S")
    return Layout(k, k_high, shuffled=causal)


def _record_scores(s: Session, name: str, layout: Layout, out: list[list[np.ndarray]], layer: int,
                   scale: Optional[np.ndarray] = None) -> None:
    """Plaintext reference only: open per-token scores and split them per input."""
    value = np.asarray(s.reveal(name, to="both", purpose="plaintext reference scores", layer=layer))
    value = value / scale if scale is not None else value
    for b, part in enumerate(layout.split(value)):
        out[b].append(np.asarray(part))


# ----------------------------------------------------------------------------- runner
def run_batch(session: Session, spec: TransformerSpec, weights: dict[str, np.ndarray], examples: Sequence[Example],
              pruning: PruningSpec = PruningSpec(), *, last_only: bool = False,
              record_scores: bool = False, trace_positions: bool = False,
              layers: Optional[int] = None, heads_per_program: Optional[int] = None) -> list[SecureResult]:
    """Run the model on ``session`` (secure or plain) for every example in one pass: their
    tokens stacked per layer (``protocols.batch``), one program per step for the whole batch.

    Each example is ``(input_ids [n], attention_mask [n] or None, token_type_ids [n] or None)``.
    The caller holds both parties' plaintext and shares it (``protocols.provision``); a
    coordinator that must not hold it has each party share its own and calls ``forward``.
    Decisions and logits are those of running the examples one at a time; each example's
    kept counts are revealed as its entry of a ``[B]`` vector. Every result carries the
    *batch's* cost report (``batch_size`` inputs): divide by it for the cost per input.
    ``trace_positions`` (tests and the plaintext reference only: it reveals which tokens were
    kept, beyond the declared leakage) carries each token's original index through every
    compaction and opens it after each layer (``SecureResult.kept_positions``). ``layers``: run
    only the first ``layers``; ``heads_per_program``: attention's head ranges (``forward``).
    """
    check_method(spec, pruning.method, pruning.criterion)
    client, sizes = client_inputs(spec, weights, examples, trace_positions)
    server = server_inputs(spec, weights, pruning)          # checks the thresholds per layer
    for owner, values in (("client", client), ("server", server)):
        for name, value in values.items():
            session.share(name, value, owner=owner)
    return forward(session, spec, sizes, pruning.method, last_only=last_only, record_scores=record_scores,
                   trace_positions=trace_positions, criterion=pruning.criterion, reduce_forms=pruning.reduce_forms,
                   layers=layers, heads_per_program=heads_per_program)


@dataclass(frozen=True)
class LayerDone:
    """Progress of a forward pass, reported after each layer (``forward(on_layer=...)``).

    ``layer`` of ``layers``; ``entering`` / ``kept``: tokens entering the layer and left after its
    pruning, per input ``[B]``; ``cost``: the meter's report of this layer's programs alone
    (attention, pruning, FFN). Nothing here is revealed beyond the counts ``forward`` opens anyway.
    """

    layer: int
    layers: int
    entering: tuple[int, ...]
    kept: tuple[int, ...]
    cost: CostReport


def check_method(spec: TransformerSpec, method: str, criterion: str = "absolute") -> None:
    """Raise ValueError for a criterion the model family does not define (every method is defined
    for both families; a causal model's ``prune_reduce`` carries a secret visibility, ``_prune_layer``)."""
    if spec.causal and method in ("prune", "prune_reduce") and criterion != "absolute":
        raise ValueError(f"criterion={criterion!r} is not defined for causal (GPT-2) models; expected 'absolute'")


def _attention(s: Session, l: int, layout: Layout, heads: int, causal: bool, reduce_forms: str,
               heads_per_program: Optional[int]) -> None:
    """Layer ``l``'s attention from ``q``, ``k``, ``v``: ``A`` (the probs Π_prune reads, flat) and
    the projected output ``a``. With ``heads_per_program`` below ``heads``, scores, softmax and
    context run one program per head range (``tf.head_slices``), so a program's memory grows with
    its own heads·n²; the same values and matmul bytes, more rounds, and each extra softmax program
    pays the protocol's fixed per-call bytes again (≈ 1.1 MB under CHEETAH)."""
    st = {"heads": heads, "layout": layout}
    vis = ["vis"] if layout.shuffled else []
    soft = {"layout": layout, "causal": causal, "forms": reduce_forms}
    p = f"l{l}."
    slices = tf.head_slices(heads, heads_per_program)
    if len(slices) == 1:
        s.run(tf.attention_scores, ["q", "k"], ["sc"], op="Linear", layer=l, static=st)
        s.run(tf.attention_probs, ["sc", "valid", *vis], ["A"], op="Softmax", layer=l, static={**soft, "heads": heads})
        s.run(tf.attention_output, ["A", "v", p + "wo", p + "bo"], ["a"], op="Linear", layer=l, static=st)
        return
    for i, head_range in enumerate(slices):
        part = {**st, "head_range": head_range}
        s.run(tf.attention_scores, ["q", "k"], [f"sc{i}"], op="Linear", layer=l, static=part)
        s.run(tf.attention_probs, [f"sc{i}", "valid", *vis], [f"A{i}"], op="Softmax", layer=l,
              static={**soft, "heads": head_range[1] - head_range[0]})
        s.run(tf.attention_context, [f"A{i}", "v"], [f"c{i}"], op="Linear", layer=l, static=part)
        s.delete(f"sc{i}")
    chunks, contexts = [f"A{i}" for i in range(len(slices))], [f"c{i}" for i in range(len(slices))]
    s.run(tf.merge_heads, chunks, ["A"], op="Other", layer=l,
          static={"layout": layout, "widths": tuple(h1 - h0 for h0, h1 in slices)})
    s.run(tf.attention_project, [p + "wo", p + "bo", *contexts], ["a"], op="Linear", layer=l)
    s.delete(*chunks, *contexts)


def forward(session: Session, spec: TransformerSpec, sizes: tuple[int, ...], method: str, *, last_only: bool = False,
            record_scores: bool = False, trace_positions: bool = False, criterion: str = "absolute",
            reduce_forms: str = DEFAULT_REDUCE_FORMS,
            on_layer: Optional[Callable[[LayerDone], None]] = None,
            layers: Optional[int] = None, heads_per_program: Optional[int] = None) -> list[SecureResult]:
    """The forward pass on inputs already in ``session``: the client's ``h``/``valid`` (and ``pos``
    when tracing) for inputs of ``sizes`` tokens, the server's weights and thresholds
    (``protocols.provision``), compared by ``criterion``, Π_reduce's low group with the forms
    ``reduce_forms`` (both public: they fix the programs, not a value). Reveals only the declared
    counts and the logits (to the client). ``on_layer`` is called after each layer (``LayerDone``:
    progress, the layer's cost). ``layers``: run only the first ``layers`` layers, then the head
    (``method="none"`` only, for cost: its layers are identical programs on identical shapes, so
    ``CostReport.with_layers_repeated`` composes the whole pass; the logits are the truncated
    model's); None runs them all. ``heads_per_program``: attention's programs take at most that many
    heads each (``_attention``; None: all), to bound a program's memory at long inputs."""
    check_method(spec, method, criterion)
    run_layers = spec.layers if layers is None else layers
    if not 1 <= run_layers <= spec.layers or (run_layers < spec.layers and method != "none"):
        raise ValueError(f"layers={layers}: must be in [1, {spec.layers}], and below {spec.layers} only for "
                         f"method 'none' (pruned layers differ), got method {method!r}")
    s = session
    layout = Layout(sizes)
    batch = layout.batch
    eps, heads = spec.layer_norm_eps, spec.heads
    if not spec.causal:
        s.run(tf.layernorm, ["h", "emb_ln.g", "emb_ln.b"], ["h"], op="LayerNorm", static={"eps": eps})
    kept: list[list[int]] = [[] for _ in range(batch)]
    entering: list[list[int]] = [[] for _ in range(batch)]
    highs: list[list[Optional[int]]] = [[] for _ in range(batch)]
    scores: list[list[np.ndarray]] = [[] for _ in range(batch)]
    positions: list[list[list[int]]] = [[] for _ in range(batch)]
    for l in range(run_layers):
        p = f"l{l}."
        layer_start, layer_entering = s.meter.mark(), tuple(layout.sizes)
        for b in range(batch):
            entering[b].append(layout.sizes[b])
        x = "h"
        if spec.causal:
            s.run(tf.layernorm, ["h", p + "ln1.g", p + "ln1.b"], ["x"], op="LayerNorm", layer=l, static={"eps": eps})
            x = "x"
        st = {"heads": heads, "layout": layout}
        s.run(tf.qkv, [x] + [p + w for w in ("wq", "bq", "wk", "bk", "wv", "bv")], ["q", "k", "v"], op="Linear", layer=l)
        _attention(s, l, layout, heads, spec.causal, reduce_forms, heads_per_program)
        if spec.causal:
            s.run(_add, ["a", "h"], ["h"], op="Other", layer=l)
        else:
            s.run(tf.add_layernorm, ["a", "h", p + "ln1.g", p + "ln1.b"], ["h"], op="LayerNorm", layer=l,
                  static={"eps": eps})
        s.delete("q", "k", "v", "sc", "a")
        if method in ("prune", "prune_reduce") or (method == "bolt_we" and l == 0):
            layout = _prune_layer(s, l, method, layout, heads, record_scores, scores, trace_positions, criterion,
                                  spec.causal)
        else:
            if record_scores:
                s.run(bt.score_step, ["A"], ["S"], op="Other", layer=l, static={**st, "causal": spec.causal})
                _record_scores(s, "S", layout, scores, l)
            layout = Layout(layout.sizes)
        s.delete("A")
        for b in range(batch):
            kept[b].append(layout.sizes[b])
            highs[b].append(layout.high_of(b))
        if trace_positions:
            opened = np.asarray(s.reveal("pos", to="both", purpose="test only: kept positions", layer=l)).reshape(-1)
            for b, part in enumerate(layout.split(opened)):
                positions[b].append([int(round(float(v))) for v in part])
        x = "h"
        if spec.causal:
            s.run(tf.layernorm, ["h", p + "ln2.g", p + "ln2.b"], ["x"], op="LayerNorm", layer=l, static={"eps": eps})
            x = "x"
        s.run(tf.linear, [x, p + "w1", p + "b1"], ["f"], op="Linear", layer=l)
        s.run(tf.gelu, ["f"], ["f"], op="GELU", layer=l, static={"layout": layout, "forms": reduce_forms})
        if spec.causal:
            s.run(tf.linear_residual, ["f", p + "w2", p + "b2", "h"], ["h"], op="Linear", layer=l)
        else:
            s.run(tf.linear, ["f", p + "w2", p + "b2"], ["f"], op="Linear", layer=l)
            s.run(tf.add_layernorm, ["f", "h", p + "ln2.g", p + "ln2.b"], ["h"], op="LayerNorm", layer=l,
                  static={"eps": eps})
        s.delete("f", "x")
        if on_layer is not None:
            on_layer(LayerDone(l, run_layers, layer_entering, tuple(layout.sizes), s.meter.since(layer_start)))
    if spec.causal:
        s.run(tf.lm_logits, ["h", "lnf.g", "lnf.b", "lm.w"], ["logits"], op="Other",
              static={"eps": eps, "last_only": last_only, "layout": layout})
    else:
        s.run(tf.pool_classify, ["h", "pool.w", "pool.b", "cls.w", "cls.b"], ["logits"], op="Other",
              static={"layout": layout})
    s.delete("vis")
    logits = np.asarray(s.reveal("logits", to="client", purpose="final logits"))
    per_input = logits if (last_only or not spec.causal) else layout.split(logits)
    cost = s.meter.report()
    return [SecureResult(logits=np.asarray(per_input[b]), kept_per_layer=kept[b], high_per_layer=highs[b],
                         reveals=list(s.reveals), cost=cost, entering_per_layer=entering[b], scores=scores[b],
                         batch_size=batch, kept_positions=positions[b]) for b in range(batch)]


def batch_ranges(count: int, batch_size: int) -> list[range]:
    """Indices ``0..count-1`` in consecutive batches of ``batch_size`` (the last may be shorter)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    return [range(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


def evaluate_batches(session: Session, spec: TransformerSpec, weights: dict[str, np.ndarray],
                     examples: Sequence[Example], pruning: PruningSpec = PruningSpec(), *, batch_size: int = 1,
                     last_only: bool = False) -> Iterator[tuple[range, list[SecureResult], CostReport]]:
    """``run_batch`` over ``examples`` in batches of ``batch_size``: yields each batch's example
    indices, per-example results and the batch's own cost (``CostMeter.measure``)."""
    for chunk in batch_ranges(len(examples), batch_size):
        with session.meter.measure() as m:
            results = run_batch(session, spec, weights, [examples[i] for i in chunk], pruning, last_only=last_only)
        yield chunk, results, m.report


def evaluate_request(session: Session, spec: TransformerSpec, request: Any, method: str, *,
                     criterion: str = "absolute", reduce_forms: str = DEFAULT_REDUCE_FORMS, last_only: bool = False,
                     on_layer: Optional[Callable[[LayerDone], None]] = None, layers: Optional[int] = None,
                     heads_per_program: Optional[int] = None) -> tuple[list[SecureResult], CostReport, dict[str, Any]]:
    """The owner-held counterpart of ``run_batch`` for one batch of the client's inputs: the client's
    party loads and shares them itself (``request``: a ``protocols.provision.ClientRequest`` or
    ``ContextRequest``; the
    server's party provided its own inputs before, ``session.provide("server", ServerRequest(...))``),
    then ``forward``. Returns the per-example results, the batch's cost and the request's public part
    (token counts, the client's labels). ``criterion``, ``reduce_forms``: the thresholds'
    (``PruningSpec``), public; ``last_only``: GPT-2's last-position logits only; ``on_layer``,
    ``layers``, ``heads_per_program``: ``forward``'s progress callback, layers run and head ranges."""
    public = session.provide("client", request)
    with session.meter.measure() as m:
        results = forward(session, spec, tuple(public["sizes"]), method, criterion=criterion,
                          reduce_forms=reduce_forms, last_only=last_only, on_layer=on_layer, layers=layers,
                          heads_per_program=heads_per_program)
    return results, m.report, public


def run_forward(session: Session, spec: TransformerSpec, weights: dict[str, np.ndarray], input_ids: np.ndarray,
                attention_mask: Optional[np.ndarray] = None, token_type_ids: Optional[np.ndarray] = None,
                pruning: PruningSpec = PruningSpec(), *, last_only: bool = False,
                record_scores: bool = False, trace_positions: bool = False, layers: Optional[int] = None) -> SecureResult:
    """Run the model on ``session`` (secure or plain). Single example: ``input_ids`` ``[n]``."""
    return run_batch(session, spec, weights, [(input_ids, attention_mask, token_type_ids)], pruning,
                     last_only=last_only, record_scores=record_scores, trace_positions=trace_positions,
                     layers=layers)[0]


def _add(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Residual addition (local on shares)."""
    return a + b


def secure_forward(session: Session, spec: TransformerSpec, weights: dict[str, np.ndarray], input_ids: np.ndarray,
                   attention_mask: Optional[np.ndarray] = None, token_type_ids: Optional[np.ndarray] = None,
                   pruning: PruningSpec = PruningSpec(), *, last_only: bool = False,
                   layers: Optional[int] = None) -> SecureResult:
    """Private inference on an open ``TwoPartySession``; reveals only counts and the logits.

    Cost: see ``protocols.transformer`` / ``protocols.pruning``; measured in ``result.cost``
    (the session meter's report, per op class and layer). ``layers``: see ``forward``.
    """
    return run_forward(session, spec, weights, input_ids, attention_mask, token_type_ids, pruning,
                       last_only=last_only, layers=layers)


def plaintext_forward(spec: TransformerSpec, weights: dict[str, np.ndarray], input_ids: np.ndarray,
                      attention_mask: Optional[np.ndarray] = None, token_type_ids: Optional[np.ndarray] = None,
                      pruning: PruningSpec = PruningSpec(), *, last_only: bool = False) -> SecureResult:
    """The same forward pass in plain JAX (``PlainSession``), with importance scores recorded."""
    with PlainSession() as s:
        return run_forward(s, spec, weights, input_ids, attention_mask, token_type_ids, pruning,
                           last_only=last_only, record_scores=True, trace_positions=True)


def plaintext_batch(spec: TransformerSpec, weights: dict[str, np.ndarray], examples: Sequence[Example],
                    pruning: PruningSpec = PruningSpec(), *, last_only: bool = False) -> list[SecureResult]:
    """``run_batch`` in plain JAX (``PlainSession``), importance scores recorded."""
    with PlainSession() as s:
        return run_batch(s, spec, weights, examples, pruning, last_only=last_only, record_scores=True,
                         trace_positions=True)
