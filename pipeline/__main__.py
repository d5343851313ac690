"""``python -m pipeline``: the one entry point (Hydra).

``stage=all`` (default) runs prepare → finetune → search → secure_eval → report under one
parent MLflow run; ``stage=<name>`` runs one stage, its upstream runs taken from
``upstream.<stage>=<run id>`` or the newest FINISHED run with matching config. With
``sweep.objectives`` set, a job returns those metrics of its ``sweep.stage`` run to the
sweeper (``pipeline.sweep``; e.g. ``-m hydra/sweeper=pareto``).
"""
from __future__ import annotations

import sys

if sys.version_info[:2] != (3, 11):  # spu 0.9.5 ships wheels for CPython < 3.12 only
    sys.exit(
        f"cipherprune needs Python 3.11 (spu==0.9.5 supports <3.12); this is "
        f"{sys.version.split()[0]}. Create the venv with python3.11 (see README.md)."
    )

import faulthandler
import logging
import os
from typing import Optional

import hydra
from omegaconf import DictConfig, OmegaConf

from pipeline.config import PipelineConfig, register_configs
from pipeline.reporting import ReportDataMissing
from pipeline.runner import run_pipeline
from pipeline.store_lock import StoreLocked
from pipeline.sweep import Objective, objective_values
from pipeline.tracking import UpstreamMissing
from pipeline.validate import ConfigError
from protocols.spec import PartyFailure

# Errors whose message names the bad input: shown alone, without a traceback from inside.
USER_ERRORS = (ConfigError, UpstreamMissing, StoreLocked, ReportDataMissing, PartyFailure, FileNotFoundError, ValueError,
               ImportError)

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(dcfg: DictConfig) -> Optional[Objective]:
    cfg = OmegaConf.to_object(dcfg)
    assert isinstance(cfg, PipelineConfig)
    try:
        return objective_values(cfg, run_pipeline(cfg))
    except USER_ERRORS as err:
        if os.environ.get("CIPHERPRUNE_DEBUG"):
            raise
        sys.exit(f"error: {err}\n(the stage's MLflow run, if one started, is marked FAILED; "
                 "CIPHERPRUNE_DEBUG=1 shows the traceback)")


if __name__ == "__main__":
    # a crash inside a native library (SPU, torch) prints the Python stacks of every thread to stderr
    # instead of a bare exit status -11
    faulthandler.enable()
    logging.getLogger("alembic").setLevel(logging.WARNING)  # schema migrations of a new sqlite store
    # one "Downloading artifacts" bar per upstream artifact says nothing a stage log needs
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    main()
