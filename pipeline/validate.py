"""Checks on a composed config that need more than types: run before any expensive work.

Each problem raises ``ConfigError`` naming the bad value and what is allowed.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from models import methods
from models.approx import DEFAULT_FAMILY, FAMILIES, RING_BITS
from pipeline.config import CHAIN, Family, PipelineConfig, Stage
from pipeline.tasks import LM_TASKS, declared_task, task_of


class ConfigError(ValueError):
    """A config value that cannot work; the message names it."""


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{name}={value}: must be > 0")


def _validate_benchmark(cfg: PipelineConfig) -> None:
    """``stage=benchmark`` and ``benchmark=<name>`` go together."""
    from benchmarks.configs import BENCHMARKS

    choices = "|".join(BENCHMARKS)
    if cfg.stage is Stage.benchmark and cfg.benchmark is None:
        raise ConfigError(f"stage=benchmark needs a benchmark: add benchmark=<{choices}> (conf/benchmark/)")
    if cfg.benchmark is not None and cfg.stage is not Stage.benchmark:
        raise ConfigError(f"benchmark={cfg.benchmark.name} is run by stage=benchmark, not stage={cfg.stage.value}; "
                          "add stage=benchmark")


def _validate_sweep(cfg: PipelineConfig) -> None:
    """``sweep.objectives`` are read from the run of ``sweep.stage``: a chain stage whose metrics
    describe the trial itself (not report, which summarises other runs), run by this job."""
    if not cfg.sweep.objectives:
        return
    stage, objectives = cfg.sweep.stage, list(cfg.sweep.objectives)
    trial_stages = [s for s in CHAIN if s is not Stage.report]
    if stage not in trial_stages:
        raise ConfigError(f"sweep.stage={stage.value}: sweep.objectives={objectives} must be metrics of a run of "
                          f"one of {'|'.join(s.value for s in trial_stages)} (report summarises other runs; "
                          "all and benchmark are not such a stage)")
    runs = CHAIN if cfg.stage is Stage.all else (cfg.stage,)
    if stage not in runs:
        others = [s.value for s in runs if s in trial_stages]
        raise ConfigError(f"sweep.stage={stage.value}: stage={cfg.stage.value} produces no {stage.value} run to read "
                          f"sweep.objectives={objectives} from; use stage={stage.value} or stage=all"
                          + (f", or sweep.stage={others[0]}" if others else ""))


def _validate_parties(cfg: PipelineConfig) -> None:
    """``protocol.transport=remote``: two party addresses and a key source, checked before any stage."""
    import os

    p = cfg.protocol
    if p.transport.value != "remote":
        return
    from protocols.spec import parse_address

    if len(p.parties) != 2:
        raise ConfigError(f"protocol.transport=remote needs protocol.parties=[client_host:port,server_host:port] "
                          f"(the `python -m protocols.party` daemons, client first), got {list(p.parties)}")
    for address in p.parties:
        try:
            parse_address(address)
        except ValueError as err:
            raise ConfigError(f"protocol.parties: {err}") from err
    if not p.authkey_file and not os.environ.get("CIPHERPRUNE_AUTHKEY"):
        raise ConfigError("protocol.transport=remote needs the control-channel key: protocol.authkey_file=<file> "
                          "or $CIPHERPRUNE_AUTHKEY (the same key the party daemons read)")
    if p.authkey_file and not Path(p.authkey_file).is_file():
        raise ConfigError(f"protocol.authkey_file={p.authkey_file!r} does not exist")


def _validate_records(cfg: PipelineConfig) -> None:
    """Records to bring in exist; a record to read exists."""
    for name, record in [*(("tracking.records entry", r) for r in cfg.tracking.records),
                         *((("report.source", cfg.report.source),) if cfg.report.source else ())]:
        if not (Path(record) / "runs").is_dir():
            raise ConfigError(f"{name}={record!r} is not a results record (no runs/ folder); write one with "
                              "`python -m pipeline stage=report report.publish=true`")


def _validate_outputs(cfg: PipelineConfig) -> None:
    """``paths.outputs`` is (or can be made) a directory this process can write into: probed by
    creating and removing a file, before any run opens."""
    import tempfile

    out = Path(cfg.paths.outputs)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-probe-"):
            pass
    except OSError as e:
        raise ConfigError(f"paths.outputs={str(out)!r} is not a writable directory ({e.strerror}: {e.filename}); "
                          "give paths.outputs=<a directory you can write>") from None


def validate(cfg: PipelineConfig) -> None:
    """Raise ``ConfigError`` for the first problem found."""
    _validate_outputs(cfg)
    _validate_records(cfg)
    _validate_benchmark(cfg)
    _validate_sweep(cfg)
    _validate_parties(cfg)
    _validate_methods(cfg)
    _validate_task(cfg)
    _validate_lm(cfg)
    _validate_model_and_data(cfg)
    _validate_training(cfg)
    _validate_secure_eval(cfg)
    _validate_protocol(cfg)


def _validate_model_and_data(cfg: PipelineConfig) -> None:
    """The model's shape, and inputs that fit it (length, the task's files)."""
    m, d = cfg.model, cfg.data
    for name in ("hidden", "layers", "heads", "intermediate", "max_positions"):
        _positive(f"model.{name}", getattr(m, name))
    if m.hidden % m.heads:
        raise ConfigError(f"model.hidden={m.hidden} is not divisible by model.heads={m.heads}")
    _positive("data.max_length", d.max_length)
    max_positions = m.max_positions
    if m.checkpoint:
        config = Path(m.checkpoint).expanduser() / "config.json"
        if not config.is_file():
            raise ConfigError(f"model.checkpoint={m.checkpoint!r}: {config} does not exist")
        from models.config import hf_shape

        max_positions = hf_shape(json.loads(config.read_text()))["max_positions"]
    if d.max_length > max_positions:
        raise ConfigError(
            f"data.max_length={d.max_length} exceeds the model's {max_positions} positions "
            f"(model={m.name}); use data.max_length<={max_positions}"
        )
    if d.task == "synthetic" and d.synthetic.seq_len + 2 > d.max_length:
        raise ConfigError(
            f"data.synthetic.seq_len={d.synthetic.seq_len} needs data.max_length>={d.synthetic.seq_len + 2} "
            f"([CLS]/[SEP] included), got {d.max_length}"
        )
    if d.glue_dir and d.task not in ("synthetic", *LM_TASKS) and cfg.stage in (Stage.all, Stage.prepare):
        from models.data import get_task

        folder = get_task(d.task).folder
        if not (Path(d.glue_dir) / folder).is_dir():
            raise ConfigError(f"data.glue_dir={d.glue_dir!r} has no {folder}/ folder for task {d.task}")


def _validate_training(cfg: PipelineConfig) -> None:
    """The candidate grid, the validation split and the selection's bounds."""
    d, f = cfg.data, cfg.finetune
    for lam in f.lambdas:
        if lam < 0:
            raise ConfigError(f"finetune.lambdas contains {lam}: λ must be >= 0")
    for t in f.temperatures:
        _positive("finetune.temperatures entry", t)
    _positive("finetune.epochs", f.epochs)
    _positive("finetune.lr", f.lr)
    for q in f.theta_quantiles:
        if not 0 <= q <= 1:
            raise ConfigError(f"finetune.theta_quantiles contains {q}: each must be in [0, 1]")
    if not 0 < d.val_fraction <= 0.5:
        raise ConfigError(f"data.val_fraction={d.val_fraction}: the validation split takes a fraction in (0, 0.5] of train")
    if d.val_limit is not None:
        _positive("data.val_limit", d.val_limit)
    if f.beta_factor < 1:
        raise ConfigError(f"finetune.beta_factor={f.beta_factor}: must be >= 1 so that β >= θ")
    allowed = FAMILIES[cfg.nonlinear.family.value].reduce_forms
    if f.reduce_forms.value not in allowed:
        raise ConfigError(f"finetune.reduce_forms={f.reduce_forms.value} with nonlinear={cfg.nonlinear.family.value}: "
                          f"expected one of {list(allowed)} (Π_reduce's low forms must cost less than the family's high forms)")
    if cfg.search.max_drop < 0:
        raise ConfigError(f"search.max_drop={cfg.search.max_drop}: must be >= 0 (accuracy points)")
    if cfg.search.reduce_max_drop < 0:
        raise ConfigError(f"search.reduce_max_drop={cfg.search.reduce_max_drop}: must be >= 0 (accuracy points)")
    bad = [s for s in cfg.search.beta_scales if not (math.isfinite(s) and s >= 0)]
    if bad:
        raise ConfigError(f"search.beta_scales={list(cfg.search.beta_scales)}: {bad[0]} is not a finite number >= 0")


def _validate_secure_eval(cfg: PipelineConfig) -> None:
    """What secure_eval runs: composed layers, head ranges, inputs and batches."""
    k = cfg.secure_eval.unpruned_layers
    if k is not None and not 2 <= k <= cfg.model.layers:
        raise ConfigError(f"secure_eval.unpruned_layers={k}: must be in [2, model.layers={cfg.model.layers}] (layer 0 "
                          "also carries the protocol's one-time setup, so the repeated layer is one after it), or null")
    if k is not None and cfg.model.family.value != "bert":
        raise ConfigError(f"secure_eval.unpruned_layers={k}: composing the unpruned pass is implemented for BERT "
                          f"(model.family=bert), not {cfg.model.family.value}; set it to null")
    hp = cfg.secure_eval.heads_per_program
    if hp is not None and not 1 <= hp <= cfg.model.heads:
        raise ConfigError(f"secure_eval.heads_per_program={hp}: must be in [1, model.heads={cfg.model.heads}] or null "
                          "(all heads in one program)")
    _positive("secure_eval.num_examples", cfg.secure_eval.num_examples)
    _positive("secure_eval.batch_size", cfg.secure_eval.batch_size)
    if not cfg.secure_eval.methods:
        raise ConfigError(f"secure_eval.methods is empty: give at least one of {list(methods.names())}")


def _validate_protocol(cfg: PipelineConfig) -> None:
    """The ring, the fixed point, the timeouts and who holds its inputs privately."""
    p = cfg.protocol
    if p.field not in RING_BITS:
        raise ConfigError(f"protocol.field={p.field!r}: expected one of {list(RING_BITS)}")
    ring = RING_BITS[p.field]
    if not 0 < p.fraction_bits < ring // 2:
        raise ConfigError(f"protocol.fraction_bits={p.fraction_bits}: must be in 1..{ring // 2 - 1} for {p.field}")
    _positive("protocol.connect_timeout_s", p.connect_timeout_s)
    _positive("protocol.recv_timeout_s", p.recv_timeout_s)
    if p.silence_timeout_s is not None:
        _positive("protocol.silence_timeout_s", p.silence_timeout_s)
    bad = [o for o in p.private_owners if o not in ("client", "server")]
    if bad:
        raise ConfigError(f"protocol.private_owners={list(p.private_owners)}: {bad} not in ['client', 'server']")


def _method(name: str, value: str) -> methods.MethodSpec:
    """The registered method ``value`` of the config key ``name``; ``ConfigError`` naming both otherwise."""
    try:
        return methods.get(value)
    except ValueError as e:
        raise ConfigError(f"{name}={value!r}: {e}") from None


def _validate_methods(cfg: PipelineConfig) -> None:
    """Every method named is registered (``models.methods``); candidates learn thresholds."""
    for m in cfg.secure_eval.methods:
        _method("secure_eval.methods entry", m)
    if len(set(cfg.secure_eval.methods)) != len(cfg.secure_eval.methods):
        raise ConfigError(f"secure_eval.methods={list(cfg.secure_eval.methods)} names a method twice")
    f = cfg.finetune
    if not _method("finetune.candidate_method", f.candidate_method).thresholds:
        raise ConfigError(f"finetune.candidate_method={f.candidate_method}: candidates are trained with a method that learns "
                          f"thresholds, one of {[m.name for m in methods.registered() if m.thresholds]}")


def _validate_task(cfg: PipelineConfig) -> None:
    """``data.task`` is a built-in task, an LM task or one ``data.spec`` declares (registered here)."""
    try:
        declared_task(cfg.data)
        task_of(cfg.data.task)
    except ValueError as e:
        raise ConfigError(f"data.task={cfg.data.task!r}: {e}") from None


def _validate_lm(cfg: PipelineConfig) -> None:
    """The causal-LM task (wikitext2) needs a GPT-2; its methods are the engine's causal ones."""
    m, d = cfg.model, cfg.data
    lm_task = d.task in LM_TASKS
    if lm_task and m.family is not Family.gpt2:
        raise ConfigError(f"data.task=wikitext2 is causal language modelling: it needs model.family=gpt2, "
                          f"got model.family={m.family.value} (model={m.name}); use e.g. model=gpt2_small_lm")
    if not lm_task and m.family is Family.gpt2:
        raise ConfigError(f"model.family=gpt2 (model={m.name}) is a causal LM and supports only data.task=wikitext2, "
                          f"got data.task={d.task}; GLUE classification uses a BERT model")
    if not lm_task and cfg.secure_eval.generate_tokens:
        raise ConfigError(f"secure_eval.generate_tokens={cfg.secure_eval.generate_tokens}: generation is defined for "
                          f"causal language modelling (data.task=wikitext2), not data.task={d.task}; set it to 0")
    if not lm_task:
        return
    if cfg.nonlinear.family.value != DEFAULT_FAMILY:
        raise ConfigError(f"nonlinear={cfg.nonlinear.family.value} with data.task={d.task}: the causal LM (GPT-2) runs "
                          f"BOLT's forms only; the other families are wired for the classification tasks. "
                          f"Use nonlinear={DEFAULT_FAMILY}")
    if cfg.secure_eval.generate_tokens < 0:
        raise ConfigError(f"secure_eval.generate_tokens={cfg.secure_eval.generate_tokens}: must be >= 0")
    if d.max_length < 2:
        raise ConfigError(f"data.max_length={d.max_length}: an LM block needs >= 2 tokens")
    for name in ("train_limit", "dev_limit", "test_limit"):
        value = getattr(d, name)
        if value is not None:
            _positive(f"data.{name}", value)
    if cfg.finetune.max_minutes is not None:
        _positive("finetune.max_minutes", cfg.finetune.max_minutes)
    if not m.checkpoint and not d.tokenizer_dir:
        raise ConfigError("data.task=wikitext2 needs a GPT-2 tokenizer: set data.tokenizer_dir=<dir with vocab.json "
                          "and merges.txt> (`make lm-data` writes outputs/assets/gpt2_tokenizer) or model.checkpoint")
    if cfg.stage in (Stage.all, Stage.prepare):
        for name in ("wikitext_dir", "tokenizer_dir"):
            value = getattr(d, name)
            if value and not Path(value).is_dir():
                raise ConfigError(f"data.{name}={value!r} is not a directory; run `make lm-data` "
                                  "(writes outputs/assets/wikitext-2 and outputs/assets/gpt2_tokenizer)"
                                  + (" or set data.wikitext_dir=null for the Hugging Face hub" if name == "wikitext_dir" else ""))
    run = [methods.get(m) for m in cfg.secure_eval.methods]
    pruned = [m.name for m in run if m.checkpoint == "selected"]
    if pruned and not cfg.finetune.lambdas and cfg.stage is Stage.all:
        raise ConfigError(f"secure_eval.methods contains {pruned} but finetune.lambdas=[] trains no pruned candidate; "
                          "set finetune.lambdas (e.g. [0.1]) or drop them")
    reducing = [m.name for m in run if m.reduce]
    if reducing and not methods.get(cfg.finetune.candidate_method).reduce and cfg.stage is Stage.all:
        raise ConfigError(f"secure_eval.methods contains {', '.join(map(repr, reducing))} but finetune.candidate_method="
                          f"{cfg.finetune.candidate_method} learns no β; set finetune.candidate_method={reducing[0]} "
                          "or drop them")
    if cfg.secure_eval.seq_len is not None and not 2 <= cfg.secure_eval.seq_len <= d.max_length - 1:
        raise ConfigError(f"secure_eval.seq_len={cfg.secure_eval.seq_len}: must be in 2..data.max_length-1={d.max_length - 1} "
                          "(a context and its next token)")
