"""MLflow tracking: the only module of the project that imports MLflow.

One MLflow run per stage, each a child of a parent run per chain (``stage=all``) and per
Hydra multirun. A stage runs inside ``with mlflow.start_run()``, so an exception leaves
the run FAILED, never FINISHED. Stages hand artifacts downstream by run id.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import mlflow
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from pipeline.config import PipelineConfig, Stage

PARENT_RUN_FILE = "mlflow_parent_run_id"
logging.getLogger("alembic").setLevel(logging.WARNING)  # schema migrations of a new sqlite store

# Config sections whose values decide a stage's result (its resume identity).
STAGE_SECTIONS: dict[Stage, tuple[str, ...]] = {
    Stage.prepare: ("model", "data"),
    Stage.finetune: ("model", "data", "finetune"),
    Stage.search: ("model", "data", "finetune", "search"),
    Stage.secure_eval: ("model", "data", "finetune", "search", "protocol", "secure_eval"),
    Stage.report: ("report",),
}


class UpstreamMissing(RuntimeError):
    """No FINISHED upstream run matches; the message names what to launch."""


def plain(obj: Any) -> Any:
    """Dataclasses / enums / paths to JSON-friendly builtins."""
    if is_dataclass(obj):
        return {k: plain(v) for k, v in asdict(obj).items()}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def tracking_uri(cfg: PipelineConfig) -> str:
    """Config value, else ``$MLFLOW_TRACKING_URI``, else an absolute sqlite file in outputs/."""
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    db = Path(cfg.paths.outputs).resolve() / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


CODE_DIRS = ("protocols", "models", "pipeline", "conf", "pyproject.toml")


def code_version(root: str) -> tuple[str, bool]:
    """Git sha of the project and whether its code (``CODE_DIRS``) differs from it.

    A dirty tree gets ``<sha>+<hash of the diff>``, so resumed sweeps never mix code versions.
    """
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        diff = subprocess.run(
            ["git", "diff", "HEAD", "--", *CODE_DIRS],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True
    if diff:
        return f"{sha}+{hashlib.sha256(diff.encode()).hexdigest()[:10]}", True
    return sha, False


def sections_hash(cfg: PipelineConfig, stage: Stage) -> str:
    """Hash of the config sections that decide ``stage``'s result (tag ``sections_hash``)."""
    sections = {name: plain(getattr(cfg, name)) for name in STAGE_SECTIONS[stage]}
    return hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest()[:16]


def _config_hash(cfg: PipelineConfig, stage: Stage, upstream: Mapping[str, str], code: str) -> str:
    blob = json.dumps({"sections": sections_hash(cfg, stage), "upstream": dict(upstream), "code": code}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class StageRun:
    """Handle given to a stage: log to its run, read its id."""

    run_id: str
    client: MlflowClient

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        mlflow.log_params({k: _param(v) for k, v in params.items()})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_dict(self, data: Any, artifact_file: str) -> None:
        mlflow.log_dict(plain(data), artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: Optional[str] = None) -> None:
        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path)

    @contextmanager
    def child(self, name: str, tags: Mapping[str, Any]) -> Iterator["StageRun"]:
        """A nested run (e.g. one fine-tuning candidate, one secure-eval method)."""
        with mlflow.start_run(run_name=name, nested=True, tags={k: str(v) for k, v in tags.items()}) as run:
            yield StageRun(run.info.run_id, self.client)


def _param(value: Any) -> str:
    text = json.dumps(plain(value)) if not isinstance(value, str) else value
    return text[:500]


class Tracker:
    """Creates parent and stage runs in one experiment at one tracking location."""

    def __init__(self, cfg: PipelineConfig, parent_run_id: Optional[str] = None) -> None:
        self.cfg = cfg
        self.uri = tracking_uri(cfg)
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        self.experiment_id = self._experiment(cfg.tracking.experiment)
        mlflow.set_experiment(experiment_id=self.experiment_id)  # nested runs land here too
        self.code, self.dirty = code_version(cfg.paths.root)
        self.parent_run_id = parent_run_id

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if self.uri.startswith("sqlite:"):
            location = (Path(self.cfg.paths.outputs).resolve() / "mlartifacts" / name).as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel job
            return self.client.get_experiment_by_name(name).experiment_id

    @contextmanager
    def parent(self, name: str, tags: Mapping[str, Any]) -> Iterator[str]:
        """A parent run grouping a chain; FAILED if the body raises."""
        run_tags = {k: str(v) for k, v in tags.items()}
        run_tags.update({"git_sha": self.code, "git_dirty": str(self.dirty)})
        if self.parent_run_id:
            run_tags[MLFLOW_PARENT_RUN_ID] = self.parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=run_tags)
        previous, self.parent_run_id = self.parent_run_id, run.info.run_id
        try:
            yield run.info.run_id
        except BaseException:
            self.client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
            raise
        else:
            self.client.set_terminated(run.info.run_id, "FINISHED")
        finally:
            self.parent_run_id = previous

    def finished_match(self, stage: Stage, config_hash: str) -> Optional[str]:
        """Run id of a FINISHED run of ``stage`` with the same config hash and code, if any."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.stage = '{stage.value}' and tags.config_hash = '{config_hash}' "
                "and attributes.status = 'FINISHED'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def latest_finished(self, stage: Stage, filters: Mapping[str, str]) -> str:
        """Newest FINISHED run of ``stage`` whose tags equal ``filters``; clear error if none."""
        clauses = [f"tags.stage = '{stage.value}'", "attributes.status = 'FINISHED'"]
        clauses += [f"tags.{k} = '{v}'" for k, v in filters.items()]
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=" and ".join(clauses),
            order_by=["attributes.start_time DESC"], max_results=1,
        )
        if not runs:
            wanted = ", ".join(f"{k}={v}" for k, v in filters.items())
            raise UpstreamMissing(
                f"no FINISHED '{stage.value}' run with {wanted or 'any settings'} in MLflow experiment "
                f"'{self.cfg.tracking.experiment}' at {self.uri}; launch it first, e.g. "
                f"`python -m pipeline stage={stage.value} tracking.experiment={self.cfg.tracking.experiment}`"
            )
        return runs[0].info.run_id

    def check_run(self, run_id: str, stage: Stage) -> None:
        """Fail early, naming the id, if ``run_id`` is unknown, of another stage or not FINISHED."""
        try:
            run = self.client.get_run(run_id)
        except mlflow.exceptions.MlflowException as err:
            raise UpstreamMissing(f"upstream {stage.value} run id '{run_id}' does not exist at {self.uri}") from err
        if run.data.tags.get("stage") != stage.value or run.info.status != "FINISHED":
            raise UpstreamMissing(
                f"upstream run '{run_id}' is a {run.data.tags.get('stage')!r} run with status "
                f"{run.info.status}; a FINISHED '{stage.value}' run is required"
            )

    def download(self, run_id: str, artifact_path: str) -> Path:
        """Local copy of an artifact (file or folder) of an upstream run."""
        dst = Path(tempfile.mkdtemp(prefix="cipherprune-artifact-"))
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dst)))

    def run_tags(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.tags)

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return dict(self.client.get_run(run_id).data.metrics)

    def reusable(self, stage: Stage, upstream: Mapping[str, str]) -> Optional[str]:
        """Id of a FINISHED run of ``stage`` with identical config, upstream runs and code.

        Reports are always regenerated; ``tracking.resume=false`` disables reuse.
        """
        if not self.cfg.tracking.resume or stage is Stage.report:
            return None
        return self.finished_match(stage, _config_hash(self.cfg, stage, upstream, self.code))

    @contextmanager
    def stage_run(
        self, stage: Stage, upstream: Mapping[str, str], params: Mapping[str, Any], overrides: list[str]
    ) -> Iterator[StageRun]:
        """Run one stage in its own MLflow run (FAILED if the body raises).

        Tags: stage, git_sha, git_dirty, sections_hash, config_hash, upstream ids. Params:
        the curated ``params``. Artifacts: the resolved config and the Hydra overrides.
        """
        tags = {
            "stage": stage.value,
            "git_sha": self.code,
            "git_dirty": str(self.dirty),
            "sections_hash": sections_hash(self.cfg, stage),
            "config_hash": _config_hash(self.cfg, stage, upstream, self.code),
        }
        tags.update({f"upstream_{k}": v for k, v in upstream.items()})
        if self.parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = self.parent_run_id
        with mlflow.start_run(experiment_id=self.experiment_id, run_name=stage.value, tags=tags) as run:
            handle = StageRun(run.info.run_id, self.client)
            handle.log_params(params)
            handle.log_dict(plain(self.cfg), "config/resolved.json")
            handle.log_dict({"overrides": overrides}, "config/overrides.json")
            yield handle


def log_standalone_run(experiment: str, run_name: str, params: Mapping[str, Any], metrics: Mapping[str, float],
                       artifacts: Mapping[str, str], outputs: Path, tags: Optional[Mapping[str, str]] = None) -> str:
    """One MLflow run outside the stage chain (benchmarks): params, metrics, text artifacts.

    Goes to ``$MLFLOW_TRACKING_URI`` or the sqlite store under ``outputs``; returns the run id.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(outputs / 'mlflow.db').resolve()}"
    outputs.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name, tags=dict(tags or {})) as run:
        mlflow.log_params({k: _param(v) for k, v in params.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        for name, text in artifacts.items():
            mlflow.log_text(text, name)
        return run.info.run_id
