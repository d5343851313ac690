"""The one registry of token-pruning methods: what each one is, reveals and runs (stdlib only).

Every layer reads a method from here by name: the torch emulation calls its ``torch_decide``, the
secure engine (plain JAX and SPU alike) its ``secure_step``, the provisioning loads the server's
thresholds when ``thresholds`` says so, the pipeline runs the checkpoint ``checkpoint`` names
and logs ``reveals`` in the leakage record, the reports label it ``label`` and compose its cost
from ``sizes`` and ``programs``. No module outside this one branches on a method's name.

The two implementations are named as ``"module:function"`` and imported when first used, so
this module imports neither torch nor jax (the parties of a secure run never import torch):

* ``torch_decide(layer, scores, present, attention_mask, thresholds, settings) ->
  models.token_pruning.LayerDecision``: the per-layer decision on ``[B, n]`` tensors;
* ``secure_step(step: protocols.method_steps.PruneStep) -> protocols.batch.Layout``: the
  programs run after layer ``step.layer``'s attention block, returning the rows kept.

A new method is one module holding those two functions plus one ``MethodSpec`` passed to
``register`` (docs/ARCHITECTURE.md, "How to add a method").
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Literal

Checkpoint = Literal["baseline", "selected"]
UNPRUNED = "none"          # the unpruned method: the baseline every report compares with
Sizes = Literal["unpruned", "halved_once", "schedule"]
Padding = Literal["kept", "pruned", "counted"]


@dataclass(frozen=True)
class MethodSpec:
    """A token-pruning method.

    ``name``: the config and metric key; ``label``: the report's row label; ``color``: its colour in
    figures. ``reveals``: what a secure run opens beyond the final logits (the leakage record).
    ``checkpoint``: ``baseline`` (runs the unpruned fine-tuned model) or ``selected`` (the search's
    pick, thresholds learned). ``thresholds``: the server provides ``θ_l`` (and ``β_l``) per layer,
    learned by crypto-aware fine-tuning; ``reduce``: Π_reduce's high/low groups (β learned with
    θ). ``reference``: reports give every method's speed-up over this one. ``sizes``: how its
    tokens per layer are composed for the modelled tables (``unpruned``: n0 throughout;
    ``halved_once``: ⌈n0/2⌉ after layer 0; ``schedule``: a measured schedule); ``programs``: the
    pruning programs it runs per pruned layer, named as ``benchmark=prune`` measures them, and
    ``program_layers`` which layers run them (``first`` or ``every``). ``padding``: what its
    decisions make of padding positions, which tells whether an evaluation may cut a batch to its
    longest input: ``kept`` (present in every layer, moving no decision: cut, and the counts add
    the padding back), ``pruned`` (removed by layer 0's prune, moving no decision: cut as is) or
    ``counted`` (a decision depends on the padded length, e.g. ⌈n/2⌉: never cut; the default).
    """

    name: str
    label: str
    color: str
    reveals: str
    torch_decide: str
    secure_step: str
    checkpoint: Checkpoint = "baseline"
    thresholds: bool = False
    reduce: bool = False
    reference: bool = False
    sizes: Sizes = "schedule"
    programs: tuple[str, ...] = ()
    program_layers: Literal["first", "every"] = "every"
    padding: Padding = "counted"

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"MethodSpec.name={self.name!r}: expected an identifier (it names configs and metrics)")
        if self.padding not in ("kept", "pruned", "counted"):
            raise ValueError(f"MethodSpec {self.name}: padding={self.padding!r}, expected 'kept', 'pruned' or 'counted'")
        if self.checkpoint not in ("baseline", "selected"):
            raise ValueError(f"MethodSpec {self.name}: checkpoint={self.checkpoint!r}, expected 'baseline' or 'selected'")
        if self.reduce and not self.thresholds:
            raise ValueError(f"MethodSpec {self.name}: reduce=True needs thresholds=True (β is learned with θ)")
        if self.thresholds and self.checkpoint != "selected":
            raise ValueError(f"MethodSpec {self.name}: learned thresholds come from the selected checkpoint")
        for target in (self.torch_decide, self.secure_step):
            if target.count(":") != 1:
                raise ValueError(f"MethodSpec {self.name}: {target!r} is not 'module:function'")

    def torch_decision(self) -> Callable[..., Any]:
        """The torch per-layer decision function (imported on first use)."""
        return resolve(self.torch_decide)

    def secure_program(self) -> Callable[..., Any]:
        """The secure per-layer step (imported on first use)."""
        return resolve(self.secure_step)

    def prunes_at(self, layer: int) -> bool:
        """Whether layer ``layer`` runs this method's pruning programs (for cost composition)."""
        return bool(self.programs) and (self.program_layers == "every" or layer == 0)


@functools.cache
def resolve(target: str) -> Callable[..., Any]:
    """The function named ``"module:function"`` (looked up once: every layer of every forward pass asks);
    ``ValueError`` naming it when it does not exist."""
    module, _, name = target.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"pruning method function {target!r} cannot be imported: {e}") from e


_BUILTIN = (
    MethodSpec(UNPRUNED, "BOLT w/o WE", "#4c72b0", "nothing beyond the final logits (to the client)",
               "models.token_pruning:keep_all", "protocols.method_steps:keep_all", reference=True, sizes="unpruned",
               padding="kept"),
    MethodSpec("bolt_we", "BOLT", "#dd8452",
               "the kept count after layer 0 (⌈n/2⌉ of the padded length, public) and the final logits",
               "models.token_pruning:bolt_we_decide", "protocols.method_steps:bolt_we", reference=True,
               sizes="halved_once", programs=("bolt_we",), program_layers="first"),
    MethodSpec("prune", "CipherPrune†", "#55a868", "per layer: the kept token count; the final logits",
               "models.token_pruning:threshold_decide", "protocols.method_steps:prune", checkpoint="selected",
               thresholds=True, programs=("prune",), padding="pruned"),
    MethodSpec("prune_reduce", "CipherPrune", "#c44e52",
               "per layer: the kept token count and the high-group count; the final logits",
               "models.token_pruning:threshold_reduce_decide", "protocols.method_steps:prune_reduce",
               checkpoint="selected", thresholds=True, reduce=True, programs=("prune", "reduce"),
               padding="pruned"),
)
_REGISTRY: dict[str, MethodSpec] = {m.name: m for m in _BUILTIN}


def register(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to the registry (after the built-in methods, in report order); ``ValueError``
    when its name is taken. Returns it."""
    if spec.name in _REGISTRY:
        raise ValueError(f"pruning method {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a method added by ``register`` (built-in methods stay)."""
    if any(m.name == name for m in _BUILTIN):
        raise ValueError(f"pruning method {name!r} is built in")
    _REGISTRY.pop(name, None)


def get(name: str) -> MethodSpec:
    """The method registered as ``name``; ``ValueError`` listing the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown pruning method {name!r}; expected one of {list(_REGISTRY)}") from None


def trainable(name: str) -> MethodSpec:
    """The method fine-tuning runs as ``name``: the unpruned baseline or one with learned
    thresholds; ``ValueError`` naming it otherwise (e.g. ``bolt_we`` learns nothing)."""
    spec = get(name)
    if name != UNPRUNED and not spec.thresholds:
        learned = [m.name for m in _REGISTRY.values() if m.thresholds]
        raise ValueError(f"method {name!r} has nothing to learn: fine-tune {UNPRUNED!r} or one of {learned}")
    return spec


def served_by(trained: str) -> tuple[MethodSpec, ...]:
    """The selected-checkpoint methods a candidate trained as ``trained`` runs, in report order:
    every one with learned thresholds, those with Π_reduce only when ``trained`` learned β too."""
    learned_beta = get(trained).reduce
    return tuple(m for m in _REGISTRY.values() if m.checkpoint == "selected" and (learned_beta or not m.reduce))


def builtin_names() -> tuple[str, ...]:
    """The built-in methods' names (the paper's four), in report order."""
    return tuple(m.name for m in _BUILTIN)


def names() -> tuple[str, ...]:
    """Every registered method's name, in report order."""
    return tuple(_REGISTRY)


def registered() -> tuple[MethodSpec, ...]:
    """Every registered method, in report order."""
    return tuple(_REGISTRY.values())
