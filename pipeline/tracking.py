"""MLflow tracking: the only module of the project that imports MLflow (reports read runs
through ``Tracker`` too).

One MLflow run per stage, each a child of a parent run per chain (``stage=all``) and per
Hydra multirun. Every run is created and logged to by its id (``MlflowClient``, no global
active run) inside a ``with`` block that marks it FAILED when the body raises, FINISHED
otherwise. Every run carries the ``host`` and ``pid`` of the process that created it: a
process killed outright (SIGKILL, power loss) cannot close its runs, so a new ``Tracker``
marks RUNNING runs of this host whose process is gone as KILLED, and resume and reports,
which read FINISHED runs only, never take them for live ones. Stages hand artifacts
downstream by run id; downloads go to one temporary directory per tracker, removed with it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import mlflow
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from pipeline.config import PipelineConfig, Stage
from pipeline.identity import code_version, identity_key, plain
from pipeline.store_lock import check_store_unlocked

PARENT_RUN_FILE = "mlflow_parent_run_id"
RECORDED = "recorded_run_id"     # tag of a run brought in from a results record (pipeline.record): its id there

class UpstreamMissing(RuntimeError):
    """No FINISHED upstream run matches; the message names what to launch."""


@contextlib.contextmanager
def quiet_store_setup() -> Iterator[None]:
    """Keep MLflow's database migrations of a new store off the terminal and out of the way:
    alembic's ``fileConfig`` replaces the root handlers (Hydra's console and job log file) with
    its own and sets its loggers to INFO (~30 lines on a first run). INFO and below are disabled
    while the store is set up, and the logging configuration is put back afterwards."""
    root, manager = logging.getLogger(), logging.Logger.manager
    handlers, level = root.handlers[:], root.level
    levels = {name: lg.level for name, lg in manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, logger in list(manager.loggerDict.items()):
            if isinstance(logger, logging.Logger):
                logger.setLevel(levels.get(name, logging.NOTSET))


def tracking_uri(cfg: PipelineConfig) -> str:
    """Config value, else ``$MLFLOW_TRACKING_URI``, else an absolute sqlite file in outputs/."""
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    db = Path(cfg.paths.outputs).resolve() / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    check_store_unlocked(db)
    return f"sqlite:///{db}"


def process_tags() -> dict[str, str]:
    """``host`` and ``pid`` of this process (who can close a RUNNING run, ``Tracker.reap_dead_runs``),
    and ``load_1m``, the machine's 1-minute load average as the run starts: a run's times are
    measured under that load (bytes and rounds are not affected)."""
    return {"host": socket.gethostname(), "pid": str(os.getpid()), "load_1m": f"{os.getloadavg()[0]:.2f}"}


@contextmanager
def client_run(client: MlflowClient, experiment_id: str, name: str, tags: Mapping[str, Any]) -> Iterator[str]:
    """A run created by id, FAILED if the body raises (even ``KeyboardInterrupt``), else FINISHED."""
    run = client.create_run(experiment_id, run_name=name, tags={**{k: str(v) for k, v in tags.items()},
                                                                 **process_tags()})
    try:
        yield run.info.run_id
    except BaseException:
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run.info.run_id, "FINISHED")


@dataclass
class StageRun:
    """Handle given to a stage: log to its run (by id), read its id, open child runs.

    ``inherited_tags`` (the stage's ``git_sha`` and ``git_dirty``) go on every nested run too, so a
    method, input or candidate run found alone in the MLflow UI still names the code that made it.
    """

    run_id: str
    client: MlflowClient
    experiment_id: str
    inherited_tags: Mapping[str, str] = field(default_factory=dict)

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step or 0) for k, v in metrics.items()])

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, params=[Param(k, _param(v)) for k, v in params.items()])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, plain(data), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: Optional[str] = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    @contextmanager
    def child(self, name: str, tags: Mapping[str, Any]) -> Iterator["StageRun"]:
        """A nested run (e.g. one fine-tuning candidate, one secure-eval method)."""
        run_tags = {**tags, **self.inherited_tags, MLFLOW_PARENT_RUN_ID: self.run_id}
        with client_run(self.client, self.experiment_id, name, run_tags) as run_id:
            yield StageRun(run_id, self.client, self.experiment_id, self.inherited_tags)


def _param(value: Any) -> str:
    text = json.dumps(plain(value)) if not isinstance(value, str) else value
    return text[:500]


class Tracker:
    """Creates parent and stage runs in one experiment at one tracking location."""

    def __init__(self, cfg: PipelineConfig, parent_run_id: Optional[str] = None) -> None:
        self.cfg = cfg
        self.uri = tracking_uri(cfg)
        mlflow.set_tracking_uri(self.uri)
        with quiet_store_setup():
            self.client = MlflowClient(self.uri)   # a new sqlite store runs its migrations here
            self.experiment_id = self._experiment(cfg.tracking.experiment)
        self.code = code_version(cfg.paths.root)
        self.parent_run_id = parent_run_id
        self._downloads = tempfile.TemporaryDirectory(prefix="cipherprune-downloads-")
        self.reap_dead_runs()

    def reap_dead_runs(self) -> list[str]:
        """Mark KILLED every RUNNING run of this experiment created on this host by a process
        that no longer exists (killed before it could close its runs); returns their ids."""
        host = socket.gethostname()
        running = self.client.search_runs([self.experiment_id], filter_string="attributes.status = 'RUNNING'",
                                          max_results=10_000)
        reaped = []
        for run in running:
            tags = run.data.tags
            if tags.get("host") != host or not tags.get("pid", "").isdigit() or _alive(int(tags["pid"])):
                continue
            self.client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            self.client.set_tag(run.info.run_id, "killed_reason", f"process {tags['pid']} on {host} is gone")
            reaped.append(run.info.run_id)
        if reaped:
            logging.getLogger(__name__).warning(f"marked {len(reaped)} run(s) of dead processes KILLED: {reaped}")
        return reaped

    def runs_frame(self, experiment_ids: list[str], filter_string: str) -> Any:
        """``mlflow.search_runs`` as a pandas DataFrame (every match)."""
        return mlflow.search_runs(experiment_ids=experiment_ids, filter_string=filter_string,
                                  output_format="pandas", max_results=100_000)

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
        run_tags.update(self.code.tags)
        if self.parent_run_id:
            run_tags[MLFLOW_PARENT_RUN_ID] = self.parent_run_id
        with client_run(self.client, self.experiment_id, name, run_tags) as run_id:
            previous, self.parent_run_id = self.parent_run_id, run_id
            try:
                yield run_id
            finally:
                self.parent_run_id = previous

    def finished_match(self, stage: Stage, config_hash: str) -> Optional[str]:
        """Run id of a FINISHED run of ``stage`` with the same config hash and code, if any (a run
        brought in from a results record is not: its artifacts stayed on the machine that made it)."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.stage = '{stage.value}' and tags.config_hash = '{config_hash}' "
                "and attributes.status = 'FINISHED'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=100,
        )
        return next((r.info.run_id for r in runs if RECORDED not in r.data.tags), None)

    def lineage(self, upstream: Mapping[str, str]) -> dict[str, str]:
        """The identities (tag ``config_hash``) of the ``upstream`` runs, by stage: what a result depends
        on, equal on every machine that runs the same config and code (run ids are not)."""
        return {stage: self.run_tags(run_id).get("config_hash", run_id) for stage, run_id in upstream.items()}

    def latest_finished(self, stage: Stage, filters: Mapping[str, str]) -> str:
        """Newest FINISHED run of ``stage`` whose tags equal ``filters`` (not one brought in from a
        results record: its artifacts are not here); clear error if none."""
        clauses = [f"tags.stage = '{stage.value}'", "attributes.status = 'FINISHED'"]
        clauses += [f"tags.{k} = '{v}'" for k, v in filters.items()]
        runs = [r for r in self.client.search_runs([self.experiment_id], filter_string=" and ".join(clauses),
                                                   order_by=["attributes.start_time DESC"], max_results=100)
                if RECORDED not in r.data.tags]
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

    def candidate_runs(self, prepare_id: str) -> Any:
        """FINISHED ``kind=candidate`` runs (a DataFrame, as ``mlflow.search_runs``) of every FINISHED
        finetune run on the prepare run ``prepare_id`` (so a multirun over λ/T accumulates)."""
        experiment = [self.experiment_id]
        parents = mlflow.search_runs(experiment, filter_string=(
            f"tags.stage = 'finetune' and tags.upstream_prepare = '{prepare_id}' and attributes.status = 'FINISHED'"))
        runs = mlflow.search_runs(experiment, filter_string="tags.kind = 'candidate' and attributes.status = 'FINISHED'")
        if not runs.empty:
            runs = runs[runs["tags.mlflow.parentRunId"].isin(set(parents["run_id"]))]
        if runs.empty:
            raise RuntimeError(f"no FINISHED fine-tuning candidates on prepare run {prepare_id}; run stage=finetune first")
        return runs

    def download(self, run_id: str, artifact_path: str) -> Path:
        """Local copy of an artifact (file or folder) of a run, under this tracker's download
        directory (removed when the tracker is)."""
        dst = Path(tempfile.mkdtemp(prefix="artifact-", dir=self._downloads.name))
        return Path(self.client.download_artifacts(run_id, artifact_path, str(dst)))

    def artifact_location(self, run_id: str, artifact_path: str) -> Path:
        """Where an artifact lies when the artifact store is a local directory (no copy: a party
        daemon reads it there itself); otherwise a downloaded copy (``download``)."""
        from urllib.parse import unquote, urlparse

        uri = self.client.get_run(run_id).info.artifact_uri
        parsed = urlparse(uri)
        if parsed.scheme in ("", "file"):
            return Path(unquote(parsed.path)) / artifact_path
        return self.download(run_id, artifact_path)

    def finished_units(self, tags: Mapping[str, str]) -> list[Any]:
        """FINISHED runs of this experiment whose tags equal ``tags`` (e.g. ``kind=input`` and a
        ``resume_key``), newest first, whatever the state of their parents."""
        clauses = ["attributes.status = 'FINISHED'"] + [f"tags.{k} = '{v}'" for k, v in tags.items()]
        return list(self.client.search_runs([self.experiment_id], filter_string=" and ".join(clauses),
                                            order_by=["attributes.start_time DESC"], max_results=10_000))

    def run_tags(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.tags)

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return dict(self.client.get_run(run_id).data.metrics)

    def reusable(self, stage: Stage, upstream: Mapping[str, str]) -> Optional[str]:
        """Id of a FINISHED run of ``stage`` with identical config, upstream runs and code.

        Reports are always regenerated and benchmarks always measured again; ``tracking.resume=false``
        disables reuse.
        """
        if not self.cfg.tracking.resume or stage in (Stage.report, Stage.benchmark):
            return None
        return self.finished_match(stage, identity_key(self.cfg, stage, upstream=self.lineage(upstream),
                                                       code=self.code.tree))

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
            **self.code.tags,
            "sections_hash": identity_key(self.cfg, stage),
            "config_hash": identity_key(self.cfg, stage, upstream=self.lineage(upstream), code=self.code.tree),
        }
        tags.update({f"upstream_{k}": v for k, v in upstream.items()})
        if self.parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = self.parent_run_id
        with client_run(self.client, self.experiment_id, stage.value, tags) as run_id:
            handle = StageRun(run_id, self.client, self.experiment_id, self.code.tags)
            handle.log_params(params)
            handle.log_dict(plain(self.cfg), "config/resolved.json")
            handle.log_dict({"overrides": overrides}, "config/overrides.json")
            yield handle


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
