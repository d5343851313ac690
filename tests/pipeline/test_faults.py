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


@pytest.mark.parametrize(("kill_at", "sig"), [(1, signal.SIGKILL), (12, signal.SIGKILL), (12, signal.SIGSTOP)],
                         ids=["killed-at-1", "killed-at-12", "stopped-at-12"])
def test_party_death_fails_the_stage_cleanly(compose_cfg, monkeypatch, kill_at, sig):
    """The server's party killed, or stopped (SIGSTOP: it hangs without dying, so only the silence
    limit, 8 s here, can tell), mid-protocol: the stage fails naming party 1, within a minute."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose_cfg(*SMALL, "protocol.silence_timeout_s=8")
    tracker = Tracker(cfg)
    runner.run_stages(cfg, tracker, (Stage.prepare, Stage.finetune, Stage.search), [])
    calls = {"n": 0}
    original = ProcessParties.run

    def run_then_kill(self, exe):
        calls["n"] += 1
        if calls["n"] == kill_at:
            os.kill(self.pids[1], sig)  # the server dies (or hangs) mid-protocol
        return original(self, exe)

    monkeypatch.setattr(ProcessParties, "run", run_then_kill)
    start = time.monotonic()
    with pytest.raises(PartyFailure, match=r"party 1|parties \[1\] did not answer within 8 s"):
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


def test_secure_eval_with_party_daemons_then_one_killed(compose_cfg, monkeypatch, tmp_path):
    """secure_eval against two party daemons (each loading its own data; SEMI2K, so the peer's
    shares are relayed): FINISHED with the same schedule as in-process parties, the coordinator
    opening neither the checkpoint nor the dev rows during the two-party run; a wrong key and a
    killed server daemon each fail the stage within 60 s, the party named, the run FAILED."""
    import sys
    from pathlib import Path

    from pipeline.tasks import glue_secure as glue
    from protocols.parties import free_ports
    from protocols.remote import local_parties, new_authkey

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    key = new_authkey(tmp_path / "authkey")
    c0, c1, l0, l1 = (f"127.0.0.1:{p}" for p in free_ports(4))
    base = [s for s in SMALL if not s.startswith("protocol.transport")]
    local = compose_cfg(*base, "protocol.transport=threads")
    tracker = Tracker(local)
    runner.run_stages(local, tracker, (Stage.prepare, Stage.finetune, Stage.search, Stage.secure_eval), [])
    remote = [*base, "protocol.transport=remote", f"protocol.parties=[{c0},{c1}]", "protocol.connect_timeout_s=5",
              "tracking.resume=false"]
    opened: list[str] = []
    watching: list[str] = []
    original = glue._secure_step

    def audited(ctx, method_run, method, checkpoint, manifest, n, criterion):
        watching[:] = [str(Path(checkpoint).resolve()), str(Path(manifest.splits["dev"]).resolve())]
        try:
            return original(ctx, method_run, method, checkpoint, manifest, n, criterion)
        finally:
            watching.clear()

    def hook(event, args):
        if watching and event == "open" and isinstance(args[0], (str, Path)):
            path = str(Path(args[0]).resolve())
            opened.extend(path for w in watching if path.startswith(w))

    sys.addaudithook(hook)
    monkeypatch.setattr(glue, "_secure_step", audited)
    with local_parties(key, [c0, c1], [l0, l1], log_dir=tmp_path) as procs:
        cfg = compose_cfg(*remote, f"protocol.authkey_file={key}")
        runner.run_stages(cfg, Tracker(cfg), (Stage.secure_eval,), [])
        assert opened == []
        wrong = compose_cfg(*remote, f"protocol.authkey_file={new_authkey(tmp_path / 'wrong')}")
        start = time.monotonic()
        with pytest.raises(PartyFailure, match="refused the control-channel key"):
            runner.run_stages(wrong, Tracker(wrong), (Stage.secure_eval,), [])
        assert time.monotonic() - start < 60
        procs[1].kill()
        procs[1].wait()
        start = time.monotonic()
        with pytest.raises(PartyFailure, match=f"party at {c1} unreachable"):
            runner.run_stages(cfg, Tracker(cfg), (Stage.secure_eval,), [])
        assert time.monotonic() - start < 60
    runs = tracker.client.search_runs([tracker.experiment_id], "tags.stage = 'secure_eval'", order_by=["attributes.start_time"])
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED", "FAILED", "FAILED"]
    methods = tracker.client.search_runs([tracker.experiment_id], "tags.kind = 'method'", order_by=["attributes.start_time"])
    threads, daemons = methods[0].data, methods[1].data
    assert "daemon loads its own data" in daemons.tags["data_held_by"]
    assert daemons.metrics["agree/secure"] == 100.0
    for name in ("tokens_entering/layer_1", "acc/secure", "comm_mb/total"):
        assert daemons.metrics[name] == pytest.approx(threads.metrics[name], rel=1e-6), name
