"""The MLflow UI shows our runs: a real ``mlflow server`` on loopback over a sqlite store
holding a secure_eval run (four method children) and a report run, rendered by headless
Chromium (the UI is a JavaScript app, so ``--virtual-time-budget`` lets it render).

Needs the Debian package ``chromium`` (``apt-get install -y chromium``); skipped without it.
Screenshots are kept under ``$CIPHERPRUNE_UI_SHOTS`` if set, else under pytest's tmp dir.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

from pipeline.config import PipelineConfig, Stage
from pipeline.runner import run_stages
from pipeline.tracking import Tracker
from tests.pipeline.conftest import mlflow_server

CHROMIUM = Path("/usr/bin/chromium")
METHODS = ("none", "bolt_we", "prune", "prune_reduce")
LAN = {"none": 412.625, "bolt_we": 207.375, "prune": 121.125, "prune_reduce": 83.875}

pytestmark = pytest.mark.slow




def _populate(tracker: Tracker) -> dict[str, str]:
    """A secure_eval stage run laid out as ARCHITECTURE.md says, then a report stage run."""
    params = {"model": "bert_base", "task": "sst2", "max_length": 128, "protocol": "CHEETAH", "field": "FM64",
              "fraction_bits": 18, "transport": "threads", "layers": 2, "hidden": 64, "heads": 4}
    ids: dict[str, str] = {}
    with tracker.stage_run(Stage.secure_eval, {}, params, []) as run:
        for method in METHODS:
            with run.child(method, {"kind": "method", "method": method}) as child:
                child.log_params({**params, "method": method})
                t = LAN[method]
                child.log_metrics({"time_s/lan": t, "time_s/wan": 6 * t, "comm_mb/total": 40 * t, "acc/dev": 90.0,
                                   "acc/secure": 100.0, "tokens_entering/layer_0": 128.0, "tokens_entering/layer_1": 64.0})
                ids[method] = child.run_id
    ids["report"] = run_stages(tracker.cfg, tracker, (Stage.report,), [])[Stage.report]
    return ids


@pytest.fixture
def server(compose_cfg: Callable[..., PipelineConfig], tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Tracker, dict[str, str]]]:
    """(UI base URL, tracker, run ids): the store is filled first, then served read-only."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} missing: install Debian's chromium (apt-get install -y chromium) for the UI test")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db = f"sqlite:///{tmp_path}/ui.db"
    cfg = compose_cfg(f"tracking.uri={db}", "tracking.experiment=ui_check", "stage=report",
                      "report.tables=[table1]", "report.figures=[kept_tokens]")
    tracker = Tracker(cfg)
    ids = _populate(tracker)
    with mlflow_server(db) as url:
        yield url, tracker, ids


def _chromium(url: str, profile: Path, *extra: str) -> str:
    """Headless Chromium on ``url``; returns stdout (the DOM with ``--dump-dom``)."""
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--virtual-time-budget=15000", "--window-size=1600,1000", *extra, url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _text(url: str, profile: Path) -> str:
    """The rendered page's visible text (whitespace collapsed)."""
    dom = _chromium(url, profile, "--dump-dom")
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def test_runs_appear_in_the_mlflow_ui(server: tuple[str, Tracker, dict[str, str]], tmp_path: Path) -> None:
    url, tracker, ids = server
    shots = Path(os.environ.get("CIPHERPRUNE_UI_SHOTS", tmp_path / "shots"))
    shots.mkdir(parents=True, exist_ok=True)
    exp = tracker.experiment_id
    page = f"{url}/#/experiments/{exp}"
    text = _text(page, tmp_path / "profile")
    assert "ui_check" in text, text[-1500:]
    assert "secure_eval" in text and "report" in text  # stage runs (method runs are nested, collapsed)
    _chromium(page, tmp_path / "profile", f"--screenshot={shots / 'experiment.png'}")
    assert (shots / "experiment.png").stat().st_size > 10_000

    run_page = f"{url}/#/experiments/{exp}/runs/{ids['prune_reduce']}"
    text = _text(run_page, tmp_path / "profile")
    assert "prune_reduce" in text and "Finished" in text
    assert re.search(r"time_s/lan\s+83\.875\b", text), text[-2000:]  # the logged metric, as shown
    assert "Parent run secure_eval" in text
    _chromium(run_page, tmp_path / "profile", f"--screenshot={shots / 'run_prune_reduce.png'}")

    report_page = f"{url}/#/experiments/{exp}/runs/{ids['report']}"
    text = _text(report_page, tmp_path / "profile")
    speedup = LAN["none"] / LAN["prune_reduce"]
    metric = tracker.run_metrics(ids["report"])["table1/speedup_vs_none/bert_base/sst2/CHEETAH/L128/prune_reduce"]
    assert metric == pytest.approx(speedup)
    assert "table1/speedup_vs_none/bert_base/sst2/CHEETAH/L128/prune_reduce" in text and f"{speedup:.4f}"[:5] in text
    if os.environ.get("CIPHERPRUNE_UI_SHOTS"):
        shutil.copy(Path(tracker.cfg.paths.outputs) / "reports" / "default" / "table1.md", shots / "table1.md")
