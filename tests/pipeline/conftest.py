"""Fixtures for the pipeline tests: composing configs, an isolated MLflow store, the CLI."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
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


def run_cli(outputs: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m pipeline paths.outputs=<outputs> *args`` as a user runs it (no tracking URI or debug
    flag inherited from the environment); the caller checks the return code."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "CIPHERPRUNE_DEBUG")}
    return subprocess.run([sys.executable, "-m", "pipeline", f"paths.outputs={outputs}", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=1500, env=env)


@contextmanager
def mlflow_server(backend_uri: str, *extra: str) -> Iterator[str]:
    """A real ``mlflow server`` on a free loopback port; yields its URL, stops its process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", backend_uri, "--workers", "1", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                MlflowClient(url).search_experiments()
                break
            except Exception:  # noqa: BLE001 - server still starting
                time.sleep(1)
        else:
            pytest.fail("mlflow server did not start within 90 s")
        yield url
    finally:  # the server forks gunicorn workers: stop its whole process group
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
