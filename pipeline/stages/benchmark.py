"""benchmark: one of ``benchmarks/`` as a tracked run, outside the stage chain.

    python -m pipeline stage=benchmark benchmark=<engine|ops|prune|e2e|e2e_quick> [benchmark.<key>=...]

The benchmark's typed settings (``benchmarks.configs``) are the run's params; each measurement
is logged as a metric the moment it completes (a run that fails later keeps them and is marked
FAILED); at the end the report (Markdown tables and the ratios measured side by side) is
logged as ``results.md``, the raw records as ``rows.json``, and printed. The report's header
names the command, the machine and the wall time, so a table quoted elsewhere carries what
regenerates it and the run id it came from.
"""
from __future__ import annotations

import importlib
import logging
import time
from dataclasses import asdict
from datetime import date
from typing import Any

from pipeline.config import PipelineConfig
from pipeline.context import StageContext

log = logging.getLogger(__name__)


def params(cfg: PipelineConfig) -> dict[str, Any]:
    """The benchmark's settings, flattened, with its name."""
    return {"kind": "benchmark", **asdict(cfg.benchmark)}


def _command(overrides: list[str]) -> str:
    return "python -m pipeline " + " ".join(overrides) if overrides else "python -m pipeline stage=benchmark"


def run(ctx: StageContext) -> None:
    """Run the benchmark, logging measurements as they come, then the report."""
    from hydra.core.hydra_config import HydraConfig

    from benchmarks.common import machine

    bench = ctx.cfg.benchmark
    module = importlib.import_module(f"benchmarks.{bench.name}")
    ctx.run.set_tags({"kind": "benchmark", "benchmark": bench.name})
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    started = time.time()
    result = module.run(bench, ctx.run.log_metrics)
    header = (f"## {date.today()}: `{_command(overrides)}`\n\nMLflow run `{ctx.run.run_id}` (experiment "
              f"'{ctx.cfg.tracking.experiment}'); machine {machine()}; {time.time() - started:.0f} s.\n\n")
    report = header + result.report
    ctx.run.log_metrics(result.metrics)
    ctx.run.log_text(report, "results.md")
    ctx.run.log_dict(result.rows, "rows.json")
    log.info(f"benchmark {bench.name}:\n{report}")
