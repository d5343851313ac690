"""Typed configuration schemas (Hydra structured configs).

Every YAML file under ``conf/`` extends one of these dataclasses through the defaults
list, so a typo in a key or a wrong type fails at composition with the key named, and
enum-typed fields reject unknown names with the allowed values listed. ``__main__``
converts the composed config once with ``OmegaConf.to_object``; below that, stages only
see these dataclasses.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Stage(str, Enum):
    all = "all"
    prepare = "prepare"
    finetune = "finetune"
    search = "search"
    secure_eval = "secure_eval"
    report = "report"
    benchmark = "benchmark"  # one of benchmarks/ (``benchmark=<name>``), outside the chain


CHAIN: tuple[Stage, ...] = (Stage.prepare, Stage.finetune, Stage.search, Stage.secure_eval, Stage.report)


@dataclass(frozen=True)
class StageInputs:
    """What a stage's result depends on: the stages whose runs it reads (``upstream``, wired by the
    runner) and the config sections whose values decide it (its identity, ``pipeline.identity``)."""

    upstream: tuple[Stage, ...]
    sections: tuple[str, ...]


STAGE_INPUTS: dict[Stage, StageInputs] = {
    Stage.prepare: StageInputs((), ("model", "data")),
    Stage.finetune: StageInputs((Stage.prepare,), ("model", "data", "nonlinear", "finetune")),
    Stage.search: StageInputs((Stage.finetune,), ("model", "data", "nonlinear", "finetune", "search")),
    Stage.secure_eval: StageInputs((Stage.prepare, Stage.search),
                                   ("model", "data", "nonlinear", "finetune", "search", "protocol", "secure_eval")),
    Stage.report: StageInputs((), ("report",)),
    Stage.benchmark: StageInputs((), ("benchmark",)),
}
"""Every stage but ``all``: a new stage is its module in ``pipeline/stages/``, its ``Stage`` member
and its entry here (and in ``CHAIN`` when the chain runs it)."""
LATE_SECTIONS: tuple[str, ...] = ("nonlinear",)
"""Sections added after runs existed: a stage's identity leaves one out while it holds its defaults,
so the runs from before it keep their identity (``pipeline.identity``)."""


class Family(str, Enum):
    bert = "bert"
    gpt2 = "gpt2"


class Truncation(str, Enum):
    truncate = "truncate"
    reject = "reject"


class Ops(str, Enum):
    exact = "exact"        # ablation: exact GELU/softmax/LayerNorm in training
    emulated = "emulated"  # crypto-aware: the secure run's approximations (models/approx.py)


class Criterion(str, Enum):
    absolute = "absolute"  # the paper's: S_i > θ_l
    relative = "relative"  # length-aware: c_l·S_i > θ_l, c_l the real tokens entering layer l


class NonlinearName(str, Enum):
    """The family of every token's GELU and softmax exp (``models.approx.FAMILIES``)."""

    bolt = "bolt"              # BOLT's (the paper's): range-reduced exp, degree-4 GELU
    bumblebee = "bumblebee"    # BumbleBee's (SPU's Cheetah engine): exp by 5 squarings, 3-segment GELU


class ReduceFormsName(str, Enum):
    """Π_reduce's low-group non-linearities (``models.approx.REDUCE_FORMS``)."""

    fast = "fast"              # ReLU and exp by repeated squaring: cheap in SPU
    polynomial = "polynomial"  # lower-degree polynomials behind BOLT's range reduction


class Protocol(str, Enum):
    REF2K = "REF2K"
    SEMI2K = "SEMI2K"
    CHEETAH = "CHEETAH"
    ABY3 = "ABY3"


class Transport(str, Enum):
    threads = "threads"        # both parties in this process; it loads both parties' data
    processes = "processes"    # one local process per party; each loads its own data
    remote = "remote"          # party daemons at protocol.parties (python -m protocols.party)


@dataclass
class ModelConfig:
    """Which transformer. ``checkpoint`` (a local Hugging Face directory) or ``package``
    (a Python package exposing ``get_model_path()``) gives pretrained weights; with
    neither, a random model of the shape below is built (timing, tests)."""

    name: str = MISSING
    family: Family = Family.bert
    checkpoint: Optional[str] = None
    package: Optional[str] = None
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    intermediate: int = 256
    max_positions: int = 64
    vocab_size: int = 0  # 0: taken from the tokenizer / checkpoint


@dataclass
class SyntheticConfig:
    """The embedded offline task: the label depends on a few signal tokens among fillers."""

    n_train: int = 2000
    n_dev: int = 400
    seq_len: int = 30
    n_signal: int = 3
    seed: int = 0


@dataclass
class DataConfig:
    # a built-in task (models.data.TASKS: synthetic, sst2, mrpc, rte, qnli, stsb, mnli, cola, imdb),
    # wikitext2 (causal LM), or a new one whose ``spec`` (models.data.TaskSpec fields) this config declares
    task: str = "synthetic"
    spec: Optional[dict[str, Any]] = None
    glue_dir: Optional[str] = None  # local GLUE tsv tree; None: Hugging Face hub
    max_length: int = 32
    truncation: Truncation = Truncation.truncate
    train_limit: Optional[int] = None
    dev_limit: Optional[int] = None  # a fixed subset (shuffled with seed 0), e.g. of IMDB test
    # validation split carved from train (before train_limit) for model selection: a
    # ``val_fraction`` of it, at most ``val_limit`` rows, shuffled with ``split_seed``
    val_fraction: float = 0.1
    val_limit: Optional[int] = 1000
    split_seed: int = 0
    # wikitext2 (causal LM): max_length is the block size; the limits count blocks
    test_limit: Optional[int] = None
    wikitext_dir: Optional[str] = None  # local WikiText-2 raw files; None: Hugging Face hub
    tokenizer_dir: Optional[str] = None  # GPT-2 tokenizer when model.checkpoint has none
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class FinetuneConfig:
    """Crypto-aware fine-tuning: unpruned baseline, then one pruned candidate per (λ, T, θ-init).

    Builds ``models.training.FinetuneConfig`` (GLUE) or ``models.lm.LMTrainConfig`` (LM) by field
    name (``pipeline.tasks.common.training_config``). ``epochs``/``lr`` train the baseline;
    each candidate starts from it and trains ``prune_epochs`` soft-mask epochs at
    ``prune_lr`` (thresholds at ``threshold_lr``), then ``hard_epochs`` with hard masks; the
    baseline trains on unpruned for as many steps (same budget), once per (model, data, seed,
    training settings) and reused by every candidate and sweep job. Model selection uses the
    validation split (``data.val_fraction``). Epochs may be fractional. Defaults suit the
    embedded tiny model.
    """

    epochs: float = 5.0
    batch_size: int = 32
    lr: float = 1e-3
    prune_epochs: float = 1.0
    prune_lr: float = 2e-4
    threshold_lr: float = 2e-3
    lambdas: list[float] = field(default_factory=lambda: [0.05, 0.2])
    temperatures: list[float] = field(default_factory=lambda: [0.05])
    theta_quantiles: list[float] = field(default_factory=lambda: [0.3])
    # a method with learned thresholds (models.methods); prune_reduce learns β too, its model serves `prune` as well
    candidate_method: str = "prune_reduce"
    criterion: Criterion = Criterion.relative
    reduce_forms: ReduceFormsName = ReduceFormsName.fast  # Π_reduce's low forms, trained with and run securely
    beta_lambda: float = 0.05  # penalty on the high group's share (Π_reduce), beside λ on the kept share
    hard_epochs: float = 0.5
    ops: Ops = Ops.emulated
    fixed_point: bool = False
    patience: Optional[int] = 2
    max_steps: Optional[int] = None
    beta_factor: float = 2.0  # β starts at beta_factor·θ
    seed: int = 0
    torch_threads: int = 1  # intra-op threads; >1 pays off only for large models on an idle machine
    length_buckets: bool = False  # GLUE: batches of similar lengths, each cut to its longest (less padding)
    # wikitext2 (causal LM): steps = max_steps or epochs · train blocks / batch_size
    max_minutes: Optional[float] = None  # stop LM training early on wall time
    warmup_ratio: float = 0.05
    eval_blocks: Optional[int] = None  # LM: final dev/test perplexity over at most this many blocks


@dataclass
class SearchConfig:
    """Pick the most aggressive candidate within ``max_drop`` points of the baseline; then scale
    the pick's β toward θ (largest of ``beta_scales`` first) until Π_reduce costs at most
    ``reduce_max_drop`` validation points against Π_prune of the same model (classification
    tasks; ``models.thresholds.calibrate_beta_scale``)."""

    max_drop: float = 0.5
    reduce_max_drop: float = 0.3
    beta_scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.25])


@dataclass
class NonlinearConfig:
    """``nonlinear=bolt|bumblebee``: the family of GELU and softmax forms that fine-tuning emulates,
    the search scores and the secure run computes, with its SPU runtime options (all in
    ``models.approx.FAMILIES``)."""

    family: NonlinearName = NonlinearName.bolt


@dataclass
class ProtocolConfig:
    protocol: Protocol = Protocol.CHEETAH
    field: str = "FM64"
    fraction_bits: int = 18
    transport: Transport = Transport.threads
    connect_timeout_s: float = 30.0
    recv_timeout_s: float = 60.0
    # a party that sends nothing (no reply, no heartbeat) this long fails the run; None: recv_timeout_s + 30
    silence_timeout_s: Optional[float] = None
    # owners whose values stay private to them (CHEETAH; secret-shared elsewhere, recorded)
    private_owners: list[str] = dataclasses.field(default_factory=lambda: ["server", "client"])
    # transport=remote: control addresses host:port of the party daemons (client first) and the
    # file with their shared key (else $CIPHERPRUNE_AUTHKEY); no default key
    parties: list[str] = dataclasses.field(default_factory=list)
    authkey_file: Optional[str] = None


@dataclass
class SecureEvalConfig:
    methods: list[str] = field(default_factory=lambda: ["none", "bolt_we", "prune", "prune_reduce"])  # models.methods names
    num_examples: int = 2
    batch_size: int = 1  # inputs per secure program (tokens stacked): the per-call cost paid once per batch
    random_weights: bool = False  # timing runs: cost does not depend on weight values
    seq_len: Optional[int] = None  # wikitext2: tokens per securely evaluated sequence (None: max_length)
    # BERT's unpruned method (none) runs only its first unpruned_layers layers securely and its cost is
    # composed with the last of them repeated (identical programs on identical shapes; layer 0 also
    # carries the protocol's one-time setup, so at least 2): for 512-token runs that would take hours.
    # None: every layer, end to end.
    unpruned_layers: Optional[int] = None
    # wikitext2: after scoring the test contexts, each method generates this many tokens greedily from
    # the first test context, every token a full secure forward over the last seq_len tokens (no KV
    # cache; the client appends its own argmax): the latency per generated token. 0: none.
    generate_tokens: int = 0
    # attention's programs (scores, softmax, context) take at most this many heads each: a program's
    # memory grows with its heads·n², which at 512 tokens can exceed the machine; the same values and
    # matmul bytes, more rounds, ≈ 1.1 MB more per extra softmax program (CHEETAH). None: all heads in one.
    heads_per_program: Optional[int] = None


@dataclass
class ReportConfig:
    name: str = "default"
    experiments: list[str] = field(default_factory=list)  # empty: this config's experiment
    tables: list[str] = field(default_factory=lambda: ["table1", "table2"])
    figures: list[str] = field(
        default_factory=lambda: ["kept_tokens", "breakdown", "pareto", "scaling"]
    )
    # publish: also write the tables, figures and a record of every FINISHED run read to results_dir/<name>/
    # (pipeline.record; commit it); source: read a committed record (a directory) instead of the store
    publish: bool = False
    source: Optional[str] = None
    results_dir: str = "${paths.root}/results"


@dataclass
class TrackingConfig:
    uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else sqlite under outputs/
    experiment: str = "cipherprune"
    resume: bool = True  # skip a stage whose identical run already FINISHED
    # committed results records (pipeline.record) brought into the store before the launch: their FINISHED
    # units (e.g. secure_eval batches) are reused when config and code match, so a campaign continues elsewhere
    records: list[str] = field(default_factory=list)


@dataclass
class UpstreamConfig:
    """Run ids of upstream stages; None picks the newest FINISHED matching run."""

    prepare: Optional[str] = None
    finetune: Optional[str] = None
    search: Optional[str] = None


@dataclass
class SweepConfig:
    """What one sweep trial returns to the sweeper (e.g. ``hydra/sweeper=pareto``, Optuna):
    the metrics ``objectives`` (names as logged) of the run of ``stage`` this job produced or
    reused, a float for one objective, a list for several (in the sweeper's ``direction`` order).
    Empty: the job returns nothing (grids with Hydra's basic sweeper)."""

    stage: Stage = Stage.finetune
    objectives: list[str] = field(default_factory=list)


@dataclass
class PathsConfig:
    root: str = str(PROJECT_ROOT)
    outputs: str = str(PROJECT_ROOT / "outputs")


@dataclass
class PipelineConfig:
    stage: Stage = Stage.all
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    nonlinear: NonlinearConfig = field(default_factory=NonlinearConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    secure_eval: SecureEvalConfig = field(default_factory=SecureEvalConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    benchmark: Any = None  # ``benchmark=<name>``: one of ``benchmarks.configs.BENCHMARKS``


DATA_ENV = "CIPHERPRUNE_DATA"
"""A local data root holding ``glue/`` (GLUE's tsv layout) and ``imdb/``; the ``data`` configs'
default ``glue_dir`` is under it (``${data_dir:glue}``), and null (the Hugging Face hub) without it."""


def data_dir(sub: str) -> Optional[str]:
    """``$CIPHERPRUNE_DATA/<sub>`` when the variable is set, else None (the hub)."""
    root = os.environ.get(DATA_ENV)
    return str(Path(root) / sub) if root else None


def register_configs() -> None:
    """Register the schemas so YAML files can extend them by name, and the ``data_dir`` resolver."""
    OmegaConf.register_new_resolver("data_dir", data_dir, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="pipeline_schema", node=PipelineConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="protocol", name="protocol_schema", node=ProtocolConfig)
    cs.store(group="nonlinear", name="nonlinear_schema", node=NonlinearConfig)
    cs.store(group="report", name="report_schema", node=ReportConfig)
    from benchmarks.configs import BENCHMARKS

    for name, schema in BENCHMARKS.items():
        cs.store(group="benchmark", name=f"{name}_schema", node=schema)
