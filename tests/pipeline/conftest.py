"""Fixtures for the pipeline tests: composing configs and an isolated MLflow store."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipeline.config import PROJECT_ROOT, PipelineConfig, register_configs

CONF_DIR = PROJECT_ROOT / "conf"


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., PipelineConfig]:
    """Compose ``conf/config.yaml`` with overrides into a typed config writing under tmp_path."""
    register_configs()

    def _compose(*overrides: str) -> PipelineConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            dcfg = compose(config_name="config", overrides=[f"paths.outputs={tmp_path}", *overrides])
        cfg = OmegaConf.to_object(dcfg)
        assert isinstance(cfg, PipelineConfig)
        return cfg

    return _compose
