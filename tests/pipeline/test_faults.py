"""A party dying mid-protocol: clear error fast, FAILED runs, no partial metrics in reports, no leftovers."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import pytest

from pipeline import runner
from pipeline.config import Stage
from pipeline.tracking import Tracker
from protocols.parties import ProcessParties
from protocols.session import PartyFailure

SMALL = ["data.synthetic.n_train=300", "data.synthetic.n_dev=40", "finetune.epochs=2", "finetune.lambdas=[0.2]",
         "secure_eval.num_examples=1", "protocol=semi2k", "protocol.transport=processes",
         "protocol.recv_timeout_s=20", "secure_eval.methods=[prune]"]


@pytest.mark.parametrize("kill_at", [1, 12])
def test_party_death_fails_the_stage_cleanly(compose_cfg, monkeypatch, kill_at):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose_cfg(*SMALL)
    tracker = Tracker(cfg)
    runner.run_stages(cfg, tracker, (Stage.prepare, Stage.finetune, Stage.search), [])
    calls = {"n": 0}
    original = ProcessParties.run

    def run_then_kill(self, exe):
        calls["n"] += 1
        if calls["n"] == kill_at:
            os.kill(self.pids[1], signal.SIGKILL)  # the server dies mid-protocol
        return original(self, exe)

    monkeypatch.setattr(ProcessParties, "run", run_then_kill)
    start = time.monotonic()
    with pytest.raises(PartyFailure, match="party 1"):
        runner.run_stages(cfg, tracker, (Stage.secure_eval,), [])
    assert time.monotonic() - start < 60
    assert mp.active_children() == []  # both party processes reaped
    runs = tracker.client.search_runs([tracker.experiment_id], filter_string="tags.stage = 'secure_eval'")
    assert [r.info.status for r in runs] == ["FAILED"]
    children = tracker.client.search_runs([tracker.experiment_id], filter_string="tags.kind = 'method'")
    assert [r.info.status for r in children] == ["FAILED"]
    assert "comm_mb/total" not in children[0].data.metrics  # no partial cost figures
    with pytest.raises(RuntimeError, match="needs FINISHED secure_eval runs"):
        runner.run_stages(cfg, tracker, (Stage.report,), [])
