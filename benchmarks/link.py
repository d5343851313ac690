"""The LAN/WAN time model against a real delayed link: the same secure forward pass with the
two parties' SPU link relayed through ``benchmarks.delay_link`` at several round-trip times.

    python -m pipeline stage=benchmark benchmark=link benchmark.rtts_ms=[0.8,40]

The parties are two daemons (``protocols.party``, transport ``remote``) whose link to each other
goes through one relay per direction: at RTT 0 the relays add no delay (the reference run), then
each configured RTT (half of it per direction). For each op class: the time measured at each RTT,
the meter's rounds estimate, the time the model predicts (measured at RTT 0 + rounds × RTT, the
RTT as probed through the relay; no bandwidth limit is set, so the bandwidth term is left out on
both sides), and the rounds the measurement implies ((t(RTT) − t(0)) / RTT). Random weights.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import BenchResult, LogMetrics, markdown, shape_spec, warm_up
from benchmarks.configs import LinkBench
from benchmarks.delay_link import delayed_links, probe_rtt
from models import methods
from protocols.meter import OP_CLASSES, ROUNDS_PER_SEND_ACTION
from protocols.model_spec import PruningSpec
from protocols.parties import free_ports
from protocols.plaintext import random_weights
from protocols.remote import local_parties, new_authkey
from protocols.secure_model import run_batch
from protocols.session import SessionSpec, TwoPartySession

log = logging.getLogger(__name__)


def run(cfg: LinkBench, log_metrics: LogMetrics) -> BenchResult:
    """One forward pass per RTT (0 first); per op class measured vs modelled seconds and rounds."""
    shape = shape_spec(cfg.shape, cfg.layers)
    weights = random_weights(shape, seed=0, scale=1.0)
    n = cfg.tokens
    # θ below the mean importance 1/n keeps part of the tokens; β above it splits them for Π_reduce
    pruning = PruningSpec(cfg.method, (0.8 / n,) * shape.layers, (1.1 / n,) * shape.layers) \
        if methods.get(cfg.method).thresholds else PruningSpec(cfg.method)
    example = (np.random.default_rng(0).integers(1, shape.vocab_size, n), np.ones(n, np.float32), None)
    control = [f"127.0.0.1:{p}" for p in free_ports(2)]
    bind, relayed, echo = ([f"127.0.0.1:{p}" for p in free_ports(2)], [f"127.0.0.1:{p}" for p in free_ports(2)],
                           [f"127.0.0.1:{p}" for p in free_ports(2)])
    pairs = [(relayed[0], bind[0]), (relayed[1], bind[1]), (echo[0], echo[1])]
    measured: dict[float, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        key = new_authkey(Path(tmp) / "authkey")
        spec = SessionSpec(cfg.protocol, transport="remote", parties=tuple(control), authkey_file=str(key),
                           recv_timeout_s=1200.0)
        with local_parties(key, control, relayed, bind=bind):
            for rtt_ms in [0.0, *cfg.rtts_ms]:
                with delayed_links(pairs, delay_s=rtt_ms / 2000.0, echo=echo[1]):
                    rtt_s = probe_rtt(echo[0])
                    with TwoPartySession(spec) as s:
                        warm_up(s)
                        with s.meter.measure() as m:
                            run_batch(s, shape, weights, [example], pruning)
                by_op = m.report.by_op()
                measured[rtt_ms] = {"rtt_s": rtt_s, "s": {op: by_op[op].wall_s for op in OP_CLASSES},
                                    "programs": [p.wall_s for p in m.report.programs],
                                    "messages": [(p.op, p.program, p.messages) for p in m.report.programs],
                                    "rounds": {op: by_op[op].rounds for op in OP_CLASSES}, "total_s": m.report.wall_s,
                                    "total_rounds": m.report.rounds}
                log_metrics({f"rtt_{rtt_ms:g}/probed_rtt_ms": rtt_s * 1e3, f"rtt_{rtt_ms:g}/total_s": m.report.wall_s,
                             **{f"rtt_{rtt_ms:g}/{op}/s": by_op[op].wall_s for op in OP_CLASSES}})
                log.info(f"RTT {rtt_ms:g} ms (probed {rtt_s * 1e3:.2f} ms): {m.report.wall_s:.1f} s, "
                         f"{m.report.rounds} rounds estimated")
    return _report(cfg, measured)


def _calibration(cfg: LinkBench, measured: dict[float, dict[str, Any]]) -> tuple[str, dict[str, float]]:
    """Rounds implied per program at the largest RTT against party 0's send actions: the factor
    ``protocols.meter.ROUNDS_PER_SEND_ACTION`` estimates (least squares through 0, R²), per op class too."""
    rtt_ms = max(cfg.rtts_ms)
    base, got = measured[0.0], measured[rtt_ms]
    rtt = got["rtt_s"] - base["rtt_s"]
    if [m[1] for m in base["messages"]] != [m[1] for m in got["messages"]]:
        raise ValueError("the runs at RTT 0 and at the largest RTT executed different programs")
    implied = (np.array(got["programs"]) - np.array(base["programs"])) / rtt
    sends = np.array([float(m[2][0]) for m in base["messages"]])
    classes = [m[0] for m in base["messages"]]
    scale = float(sends @ implied / (sends @ sends))
    resid = implied - scale * sends
    r2 = 1.0 - float(resid @ resid) / float(((implied - implied.mean()) ** 2).sum())
    rows = [[op, f"{sends[[c == op for c in classes]].sum():.0f}", f"{implied[[c == op for c in classes]].sum():.0f}",
             f"{implied[[c == op for c in classes]].sum() / max(sends[[c == op for c in classes]].sum(), 1):.2f}"]
            for op in OP_CLASSES if op in classes]
    text = (f"Rounds per send action at {rtt_ms:g} ms over the {len(classes)} programs: **{scale:.3f}** (R² {r2:.3f}; "
            f"the meter uses {ROUNDS_PER_SEND_ACTION}):\n\n"
            + markdown(rows, ["op class", "party-0 send actions", "implied rounds", "rounds per send action"]) + "\n")
    return text, {"calibration/rounds_per_send_action": scale, "calibration/r2": r2}


def _report(cfg: LinkBench, measured: dict[float, dict[str, Any]]) -> BenchResult:
    base = measured[0.0]
    rows, metrics = [], {}
    for op in [*OP_CLASSES, "total"]:
        t0 = base["total_s"] if op == "total" else base["s"][op]
        est = base["total_rounds"] if op == "total" else base["rounds"][op]
        if op != "total" and t0 == 0:
            continue
        row = [op, f"{t0:.2f}", f"{est}"]
        for rtt_ms in cfg.rtts_ms:
            got = measured[rtt_ms]
            rtt = got["rtt_s"] - base["rtt_s"]          # what the delay added to a round trip
            t = got["total_s"] if op == "total" else got["s"][op]
            modelled, implied = t0 + est * rtt, (t - t0) / rtt
            row += [f"{t:.2f}", f"{modelled:.2f}", f"{implied:.0f}"]
            metrics.update({f"{op}/rtt_{rtt_ms:g}/measured_s": t, f"{op}/rtt_{rtt_ms:g}/modelled_s": modelled,
                            f"{op}/rtt_{rtt_ms:g}/implied_rounds": implied})
        metrics[f"{op}/rounds_estimated"] = float(est)
        rows.append(row)
    headers = ["op class", "s at RTT 0", "rounds (estimate)"]
    for rtt_ms in cfg.rtts_ms:
        headers += [f"measured s @{rtt_ms:g} ms", f"modelled s @{rtt_ms:g} ms", f"implied rounds @{rtt_ms:g} ms"]
    rounds_text, fitted = _calibration(cfg, measured)
    metrics.update(fitted)
    probes = ", ".join(f"{r:g} ms → {m['rtt_s'] * 1e3:.2f} ms" for r, m in measured.items())
    text = (f"{cfg.protocol}, {cfg.shape.value} shape × {cfg.layers} layers, {cfg.tokens} tokens, method {cfg.method}; "
            f"parties as daemons, their link through a delaying relay per direction (configured RTT → probed: {probes}); "
            "measured end to end at each RTT, modelled = measured at RTT 0 + estimated rounds × added RTT\n\n"
            + markdown(rows, headers) + "\n\n" + rounds_text)
    records = [{"rtt_ms": r, **m} for r, m in measured.items()]
    return BenchResult(text, metrics, records)
