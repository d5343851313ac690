"""The secure per-layer steps of the built-in pruning methods (``models.methods.MethodSpec.secure_step``).

``secure_model.forward`` calls the method's step after each layer's attention block with a
``PruneStep``: the session holds the layer's flat attention probabilities ``A``, the hidden rows
``h`` ``[Σ n_b, d]`` and the padding mask ``valid`` ``[Σ n_b]``, and the server's ``theta{l}`` /
``beta{l}``. A step runs its programs on them (compaction moves the kept rows of ``h``/``valid``
to the front of each input's block) and returns the ``Layout`` after it. What a step reveals is
what its ``MethodSpec.reveals`` declares: ``prune`` opens the kept count per input (``[B]``),
``prune_reduce`` also the high-group count; ``none`` and ``bolt_we`` open nothing (⌈n/2⌉ is public).
Plain JAX (``PlainSession``) and SPU run the very same steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from protocols import batch as bt
from protocols.batch import Layout
from protocols.session import Session


@dataclass(frozen=True)
class PruneStep:
    """Layer ``layer``'s pruning context: the session ``s``; ``layout``, the rows the attention ran
    with (its groups order the flat ``A``); ``heads``; ``causal`` (GPT-2: scores average over the
    rows that see each token, the last position is forced); ``criterion`` (what θ/β compare with,
    ``PruningSpec``); ``record`` (plaintext reference only: open each input's scores into
    ``scores_out[b]``); ``trace`` (tests only: carry the original positions ``pos`` through every
    compaction)."""

    s: Session
    layer: int
    layout: Layout
    heads: int
    causal: bool
    criterion: str
    record: bool
    scores_out: list[list[np.ndarray]]
    trace: bool = False

    @property
    def static(self) -> dict[str, Any]:
        """The static arguments of the score programs."""
        return {"layout": self.layout, "heads": self.heads, "causal": self.causal}

    def scores(self, op: str = "Other") -> None:
        """Compute the importance scores ``S`` (flat) with ``op``'s cost class, and open them when
        recording: over each input's real query rows (``batch.padded_score_step``; padding rows stay
        until a Π_prune drops them), or, causal (no padding), over the rows that see each token."""
        if not self.causal:
            self.s.run(bt.padded_score_step, ["A", "valid"], ["S"], op=op, layer=self.layer,
                       static={"layout": self.layout, "heads": self.heads})
        else:
            vis = ["vis"] if self.layout.shuffled else []
            self.s.run(bt.score_step, ["A", *vis], ["S"], op=op, layer=self.layer, static=self.static)
        if self.record:
            record_scores(self, "S")


def keep_all(step: PruneStep) -> Layout:
    """``none`` (and every layer a method leaves alone): no program, no reveal (scores only when recording)."""
    if step.record:
        step.scores()
        step.s.delete("S")
    return Layout(step.layout.sizes)


def bolt_we(step: PruneStep) -> Layout:
    """BOLT's word elimination after layer 0: the top ⌈n/2⌉ of each input by ``S``, obliviously
    (``protocols.topk``), kept in their original order; later layers are left alone."""
    if step.layer:
        return keep_all(step)
    step.scores(op="Prune")
    keep = tuple(math.ceil(n / 2) for n in step.layout.sizes)
    select(step, bt.bolt_we_select, ["h", "S", "valid"], op="Prune",
           static={"layout": step.layout, "keep": keep, "causal": step.causal})
    step.s.delete("S")
    return Layout(keep)


def prune(step: PruneStep) -> Layout:
    """Π_prune: ``M = [D > θ_l] ∧ valid`` (forced token kept), reveal ``k`` per input, compact."""
    k = _threshold(step)
    if k != step.layout.sizes:
        select(step, bt.prune_select, ["h", "M", "valid"], op="Prune", static={"layout": step.layout, "k": k})
    step.s.delete("R", "M", "k", "S")
    return Layout(k)


def prune_reduce(step: PruneStep) -> Layout:
    """Π_prune, then Π_reduce: the high group ``[D > β_l]`` among the kept, reveal ``k_high`` per input,
    order high group first. Causal models carry the secret visibility ``vis``
    (``batch.causal_reduce_select``) that replaces the public mask from the next layer on."""
    s, l = step.s, step.layer
    k = _threshold(step)
    vis = ["vis"] if step.layout.shuffled else []
    s.run(bt.reduce_step, ["R", f"beta{l}", "M", *vis], ["high", "kh"], op="Reduce", layer=l,
          static={"layout": step.layout, "heads": step.heads, "causal": step.causal})
    k_high = tuple(counts(s, "kh", "high-group count", l))
    static = {"layout": step.layout, "k": k, "k_high": k_high}
    if step.causal:
        select(step, bt.causal_reduce_select, ["h", "M", "high", "valid", *vis], op="Reduce", static=static,
               outputs=("h", "valid", "vis"))
    else:
        select(step, bt.reduce_select, ["h", "M", "high", "valid"], op="Reduce", static=static)
    s.delete("R", "M", "k", "high", "kh", "S")
    return Layout(k, k_high, shuffled=step.causal)


def _threshold(step: PruneStep) -> tuple[int, ...]:
    """Π_prune's comparison: ``R`` (the scores' raw sums), ``M`` and the opened kept counts ``k``
    ``[B]``; after layer 0 every row is a real token (padding dropped)."""
    s, l, layout = step.s, step.layer, step.layout
    vis = ["vis"] if layout.shuffled else []
    s.run(bt.prune_step, ["A", f"theta{l}", "valid", *vis], ["R", "M", "k"], op="Prune", layer=l,
          static={**step.static, "relative": step.criterion == "relative", "all_valid": l > 0 or step.causal})
    if step.record and layout.shuffled:                 # the scale is secret: S from the visibility
        step.scores()
    elif step.record:
        record_scores(step, "R", scale=layout.row_scale(step.heads, step.causal))
    return tuple(counts(s, "k", "kept count", l))


def counts(session: Session, name: str, purpose: str, layer: int) -> list[int]:
    """Reveal a per-input count vector ``[B]`` to both parties."""
    value = np.asarray(session.reveal(name, to="both", purpose=purpose, layer=layer)).reshape(-1)
    return [int(round(float(v))) for v in value]


def select(step: PruneStep, fn: Any, inputs: list[str], *, op: str, static: dict[str, Any],
           outputs: tuple[str, ...] = ("h", "valid")) -> None:
    """Run a compaction program on ``h`` (and, when tracing, first on the original positions ``pos``)."""
    s, l = step.s, step.layer
    if step.trace:
        extra = [f"_pos_{o}" for o in outputs[1:]]
        s.run(fn, ["pos", *inputs[1:]], ["pos", *extra], op="Other", layer=l, static=static)
        s.delete(*extra)
    s.run(fn, inputs, list(outputs), op=op, layer=l, static=static)


def record_scores(step: PruneStep, name: str, scale: Optional[np.ndarray] = None) -> None:
    """Plaintext reference only: open per-token scores and split them per input."""
    value = np.asarray(step.s.reveal(name, to="both", purpose="plaintext reference scores", layer=step.layer))
    value = value / scale if scale is not None else value
    for b, part in enumerate(step.layout.split(value)):
        step.scores_out[b].append(np.asarray(part))
