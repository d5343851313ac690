"""Layer-by-layer runner: the secure forward pass with token pruning, and its plaintext twin.

``forward`` is the one secure forward pass: on inputs already in a ``protocols.session`` session
(the client's embedded sequences and masks, the server's weights and thresholds) it runs each
program of ``protocols.transformer`` and, after each attention block, the pruning method's step
(``models.methods``, ``protocols.method_steps``), compiled for the current token counts (the
session caches programs by shape), and opens only

* what the method's ``MethodSpec.reveals`` declares (``prune``: the kept count ``k_l`` per layer,
  to both; ``prune_reduce``: also the high-group size ``k_high_l``; ``bolt_we``: nothing, ⌈n/2⌉ is
  public),
* the final logits (to the client).

Its two provisioning front ends: ``run_batch`` (a caller holding both parties' plaintext shares
it) and ``evaluate_request`` (each party loads and shares its own). Several inputs run in one
pass (tokens stacked, ``protocols.batch``); the counts are then ``[B]`` vectors, one per input.
``plaintext_batch`` / ``plaintext_forward`` run the very same functions and decision logic on a ``PlainSession`` (plain JAX): the emulation the
tests compare to. Padding tokens are removed at the first pruning step (their ``valid``
is 0 so ``M = 0``); only the count is revealed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from models import methods
from models.approx import DEFAULT_FAMILY, DEFAULT_REDUCE_FORMS, family_of
from protocols import transformer as tf
from protocols.batch import Layout
from protocols.meter import CostReport
from protocols.method_steps import PruneStep
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
    pruning.check_layers(spec.layers)
    learned = methods.get(pruning.method).thresholds          # the server provides θ/β only when they are used
    server = server_inputs(spec, weights, *((pruning.theta, pruning.beta) if learned else ()))
    for owner, values in (("client", client), ("server", server)):
        for name, value in values.items():
            session.share(name, value, owner=owner)
    return forward(session, spec, sizes, pruning.method, last_only=last_only, record_scores=record_scores,
                   trace_positions=trace_positions, criterion=pruning.criterion, reduce_forms=pruning.reduce_forms,
                   nonlinear=pruning.nonlinear,
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
    for both families; a causal model's ``prune_reduce`` carries a secret visibility,
    ``protocols.method_steps.prune_reduce``)."""
    if spec.causal and methods.get(method).thresholds and criterion != "absolute":
        raise ValueError(f"criterion={criterion!r} is not defined for causal (GPT-2) models; expected 'absolute'")


def _attention(s: Session, l: int, layout: Layout, heads: int, causal: bool, forms: dict[str, str],
               heads_per_program: Optional[int]) -> None:
    """Layer ``l``'s attention from ``q``, ``k``, ``v``: ``A`` (the probs Π_prune reads, flat) and
    the projected output ``a``. With ``heads_per_program`` below ``heads``, scores, softmax and
    context run one program per head range (``tf.head_slices``), so a program's memory grows with
    its own heads·n²; the same values and matmul bytes, more rounds, and each extra softmax program
    pays the protocol's fixed per-call bytes again (≈ 1.1 MB under CHEETAH). ``forms``: the
    softmax's ``forms`` (Π_reduce's low forms) and ``family`` (the high forms'), public."""
    st = {"heads": heads, "layout": layout}
    vis = ["vis"] if layout.shuffled else []
    soft = {"layout": layout, "causal": causal, **forms}
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
            reduce_forms: str = DEFAULT_REDUCE_FORMS, nonlinear: str = DEFAULT_FAMILY,
            on_layer: Optional[Callable[[LayerDone], None]] = None,
            layers: Optional[int] = None, heads_per_program: Optional[int] = None) -> list[SecureResult]:
    """The forward pass on inputs already in ``session``: the client's ``h``/``valid`` (and ``pos``
    when tracing) for inputs of ``sizes`` tokens, the server's weights and thresholds
    (``protocols.provision``), compared by ``criterion``, every token's GELU and exp those of the
    family ``nonlinear`` (``models.approx.FAMILIES``) and Π_reduce's low group's the forms
    ``reduce_forms`` (all public: they fix the programs, not a value). Reveals only the declared
    counts and the logits (to the client). ``on_layer`` is called after each layer (``LayerDone``:
    progress, the layer's cost). ``layers``: run only the first ``layers`` layers, then the head
    (``method="none"`` only, for cost: its layers are identical programs on identical shapes, so
    ``CostReport.with_layers_repeated`` composes the whole pass; the logits are the truncated
    model's); None runs them all. ``heads_per_program``: attention's programs take at most that many
    heads each (``_attention``; None: all), to bound a program's memory at long inputs."""
    check_method(spec, method, criterion)
    family_of(nonlinear, reduce_forms)
    forms = {"forms": reduce_forms, "family": nonlinear}
    step = methods.get(method).secure_program()
    run_layers = spec.layers if layers is None else layers
    repeats = methods.get(method).sizes == "unpruned"
    if not 1 <= run_layers <= spec.layers or (run_layers < spec.layers and not repeats):
        raise ValueError(f"layers={layers}: must be in [1, {spec.layers}], and below {spec.layers} only for an "
                         f"unpruned method (pruned layers differ), got method {method!r}")
    s = session
    layout = Layout(sizes)
    batch = layout.batch
    if not spec.causal:
        s.run(tf.layernorm, ["h", "emb_ln.g", "emb_ln.b"], ["h"], op="LayerNorm", static={"eps": spec.layer_norm_eps})
    kept: list[list[int]] = [[] for _ in range(batch)]
    entering: list[list[int]] = [[] for _ in range(batch)]
    highs: list[list[Optional[int]]] = [[] for _ in range(batch)]
    scores: list[list[np.ndarray]] = [[] for _ in range(batch)]
    positions: list[list[list[int]]] = [[] for _ in range(batch)]
    for l in range(run_layers):
        layer_start, layer_entering = s.meter.mark(), tuple(layout.sizes)
        for b in range(batch):
            entering[b].append(layout.sizes[b])
        _attention_block(s, spec, l, layout, forms, heads_per_program)
        layout = step(PruneStep(s, l, layout, spec.heads, spec.causal, criterion, record_scores, scores, trace_positions))
        s.delete("A")
        for b in range(batch):
            kept[b].append(layout.sizes[b])
            highs[b].append(layout.high_of(b))
        if trace_positions:
            opened = np.asarray(s.reveal("pos", to="both", purpose="test only: kept positions", layer=l)).reshape(-1)
            for b, part in enumerate(layout.split(opened)):
                positions[b].append([int(round(float(v))) for v in part])
        _ffn_block(s, spec, l, layout, forms)
        if on_layer is not None:
            on_layer(LayerDone(l, run_layers, layer_entering, tuple(layout.sizes), s.meter.since(layer_start)))
    per_input = _head(s, spec, layout, last_only)
    cost = s.meter.report()
    return [SecureResult(logits=np.asarray(per_input[b]), kept_per_layer=kept[b], high_per_layer=highs[b],
                         reveals=list(s.reveals), cost=cost, entering_per_layer=entering[b], scores=scores[b],
                         batch_size=batch, kept_positions=positions[b]) for b in range(batch)]


def _attention_block(s: Session, spec: TransformerSpec, l: int, layout: Layout, forms: dict[str, str],
                     heads_per_program: Optional[int]) -> None:
    """Layer ``l``'s attention block on ``h`` ``[Σ n_b, d]``: BERT ``h = LN(h + Attn(h))``, GPT-2
    ``h = h + Attn(LN(h))``; leaves the probabilities ``A`` for the pruning step."""
    p, eps, x = f"l{l}.", spec.layer_norm_eps, "h"
    if spec.causal:
        s.run(tf.layernorm, ["h", p + "ln1.g", p + "ln1.b"], ["x"], op="LayerNorm", layer=l, static={"eps": eps})
        x = "x"
    s.run(tf.qkv, [x] + [p + w for w in ("wq", "bq", "wk", "bk", "wv", "bv")], ["q", "k", "v"], op="Linear", layer=l)
    _attention(s, l, layout, spec.heads, spec.causal, forms, heads_per_program)
    if spec.causal:
        s.run(_add, ["a", "h"], ["h"], op="Other", layer=l)
    else:
        s.run(tf.add_layernorm, ["a", "h", p + "ln1.g", p + "ln1.b"], ["h"], op="LayerNorm", layer=l, static={"eps": eps})
    s.delete("q", "k", "v", "sc", "a")


def _ffn_block(s: Session, spec: TransformerSpec, l: int, layout: Layout, forms: dict[str, str]) -> None:
    """Layer ``l``'s FFN on the rows kept (``layout``; the GELU of ``forms``, as ``_attention``'s):
    BERT ``h = LN(h + FFN(h))``, GPT-2 ``h = h + FFN(LN(h))``."""
    p, eps, x = f"l{l}.", spec.layer_norm_eps, "h"
    if spec.causal:
        s.run(tf.layernorm, ["h", p + "ln2.g", p + "ln2.b"], ["x"], op="LayerNorm", layer=l, static={"eps": eps})
        x = "x"
    s.run(tf.linear, [x, p + "w1", p + "b1"], ["f"], op="Linear", layer=l)
    s.run(tf.gelu, ["f"], ["f"], op="GELU", layer=l, static={"layout": layout, **forms})
    if spec.causal:
        s.run(tf.linear_residual, ["f", p + "w2", p + "b2", "h"], ["h"], op="Linear", layer=l)
    else:
        s.run(tf.linear, ["f", p + "w2", p + "b2"], ["f"], op="Linear", layer=l)
        s.run(tf.add_layernorm, ["f", "h", p + "ln2.g", p + "ln2.b"], ["h"], op="LayerNorm", layer=l, static={"eps": eps})
    s.delete("f", "x")


def _head(s: Session, spec: TransformerSpec, layout: Layout, last_only: bool) -> Any:
    """The head (BERT: pooler and classifier on [CLS]; GPT-2: final LN and LM head), its logits
    revealed to the client: per input ``[num_labels]``, ``[V]`` (last position) or ``[n_b, V]``."""
    if spec.causal:
        s.run(tf.lm_logits, ["h", "lnf.g", "lnf.b", "lm.w"], ["logits"], op="Other",
              static={"eps": spec.layer_norm_eps, "last_only": last_only, "layout": layout})
    else:
        s.run(tf.pool_classify, ["h", "pool.w", "pool.b", "cls.w", "cls.b"], ["logits"], op="Other",
              static={"layout": layout})
    s.delete("vis")
    logits = np.asarray(s.reveal("logits", to="client", purpose="final logits"))
    return logits if (last_only or not spec.causal) else layout.split(logits)


def batch_ranges(count: int, batch_size: int) -> list[range]:
    """Indices ``0..count-1`` in consecutive batches of ``batch_size`` (the last may be shorter)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    return [range(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


def evaluate_request(session: Session, spec: TransformerSpec, request: Any, method: str, *,
                     criterion: str = "absolute", reduce_forms: str = DEFAULT_REDUCE_FORMS,
                     nonlinear: str = DEFAULT_FAMILY, last_only: bool = False,
                     on_layer: Optional[Callable[[LayerDone], None]] = None, layers: Optional[int] = None,
                     heads_per_program: Optional[int] = None) -> tuple[list[SecureResult], CostReport, dict[str, Any]]:
    """The owner-held counterpart of ``run_batch`` for one batch of the client's inputs: the client's
    party loads and shares them itself (``request``: a ``protocols.provision.ClientRequest`` or
    ``ContextRequest``; the
    server's party provided its own inputs before, ``session.provide("server", ServerRequest(...))``),
    then ``forward``. Returns the per-example results, the batch's cost and the request's public part
    (token counts, the client's labels). ``criterion``, ``reduce_forms``, ``nonlinear``: the
    thresholds' (``PruningSpec``), public; ``last_only``: GPT-2's last-position logits only; ``on_layer``,
    ``layers``, ``heads_per_program``: ``forward``'s progress callback, layers run and head ranges."""
    public = session.provide("client", request)
    with session.meter.measure() as m:
        results = forward(session, spec, tuple(public["sizes"]), method, criterion=criterion,
                          reduce_forms=reduce_forms, nonlinear=nonlinear, last_only=last_only, on_layer=on_layer, layers=layers,
                          heads_per_program=heads_per_program)
    return results, m.report, public


def _add(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Residual addition (local on shares)."""
    return a + b


def plaintext_forward(spec: TransformerSpec, weights: dict[str, np.ndarray], input_ids: np.ndarray,
                      attention_mask: Optional[np.ndarray] = None, token_type_ids: Optional[np.ndarray] = None,
                      pruning: PruningSpec = PruningSpec(), *, last_only: bool = False) -> SecureResult:
    """The same forward pass in plain JAX (``PlainSession``), with importance scores recorded."""
    return plaintext_batch(spec, weights, [(input_ids, attention_mask, token_type_ids)], pruning, last_only=last_only)[0]


def plaintext_batch(spec: TransformerSpec, weights: dict[str, np.ndarray], examples: Sequence[Example],
                    pruning: PruningSpec = PruningSpec(), *, last_only: bool = False) -> list[SecureResult]:
    """``run_batch`` in plain JAX (``PlainSession``), importance scores recorded."""
    with PlainSession() as s:
        return run_batch(s, spec, weights, examples, pruning, last_only=last_only, record_scores=True,
                         trace_positions=True)
