"""Parties that hold only their own data: the server party loads the checkpoint, the client party
its tokenised dataset; over local processes, over daemons reached by an authenticated control
channel, and between two network namespaces. The coordinator opens neither file and receives only
metadata, profiles, the public part of each request and the shares of what it reveals."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from models import methods
from protocols import parties as parties_mod
from protocols.model_spec import PruningSpec, TransformerSpec
from protocols.plaintext import random_weights
from protocols.provision import ClientRequest, ServerRequest, release_embeddings
from protocols.remote import local_parties, new_authkey
from protocols.secure_model import forward, plaintext_batch
from protocols.session import SessionSpec, TwoPartySession
from protocols.spec import PartyFailure, parse_address, read_authkey

SPEC = TransformerSpec(vocab_size=64, hidden=16, layers=2, heads=2, intermediate=32, max_positions=16)
IDS = [np.array([1, 5, 9, 3, 7, 2, 0, 0]), np.array([4, 8, 6, 2, 9, 1, 3, 5])]
MASKS = [np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32), np.ones(8, np.float32)]
THETA, BETA = (0.1, 0.12), (0.14, 0.16)


@pytest.fixture(scope="module")
def owned(tmp_path_factory) -> dict:
    """A server checkpoint directory and a client dataset directory, with the plaintext reference."""
    from datasets import Dataset
    from safetensors.numpy import save_file

    root = tmp_path_factory.mktemp("owned")
    weights = random_weights(SPEC, seed=21, scale=1.0)
    ckpt = root / "server" / "checkpoint"
    ckpt.mkdir(parents=True)
    save_file(weights, str(ckpt / "model.safetensors"))
    (ckpt / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": SPEC.vocab_size, "hidden_size": SPEC.hidden, "num_hidden_layers": SPEC.layers,
        "num_attention_heads": SPEC.heads, "intermediate_size": SPEC.intermediate,
        "max_position_embeddings": SPEC.max_positions, "type_vocab_size": SPEC.type_vocab, "num_labels": 2}))
    (ckpt / "thresholds.json").write_text(json.dumps({"theta": THETA, "beta": BETA, "temperature": 1e-3, "lambda": 0.1,
                                                         "criterion": "absolute", "reduce_forms": "fast"}))
    data = root / "client" / "dev"
    Dataset.from_dict({"input_ids": [i.tolist() for i in IDS], "attention_mask": [m.astype(int).tolist() for m in MASKS],
                       "token_type_ids": [[0] * 8, [0] * 8], "label": [1, 0]}).save_to_disk(str(data))
    emb = release_embeddings(ckpt, root / "client" / "embeddings")
    reference = {m: plaintext_batch(SPEC, weights, [(i, k, None) for i, k in zip(IDS, MASKS)],
                                    PruningSpec(m, THETA, BETA) if m != "none" else PruningSpec(m))
                 for m in ("none", "prune", "prune_reduce")}
    return {"root": root, "ckpt": ckpt, "data": data, "emb": emb, "reference": reference}


def _run_owned(session, owned: dict, method: str) -> tuple[list, dict]:
    public = session.provide("client", ClientRequest(str(owned["data"]), (0, 1), str(owned["emb"])))
    session.provide("server", ServerRequest(str(owned["ckpt"]), methods.get(method).thresholds))
    return forward(session, SPEC, tuple(public["sizes"]), method), public


def _check_against_reference(results: list, owned: dict, method: str) -> None:
    for got, ref in zip(results, owned["reference"][method]):
        assert got.kept_per_layer == ref.kept_per_layer and got.high_per_layer == ref.high_per_layer
        span = float(np.ptp(ref.logits)) or 1.0
        assert np.max(np.abs(got.logits - ref.logits)) < 0.02 * span + 1e-3


class _Audit:
    """Every reply the coordinator receives, and every file it opens, during a session."""

    def __init__(self, monkeypatch, watched: list[Path]) -> None:
        self.exchanges: list[tuple[dict, list]] = []     # (messages sent by rank, replies)
        self.opened: list[str] = []
        self.active = True
        original = parties_mod.ConnectedParties._send

        def send(this, messages):
            got = original(this, messages)
            self.exchanges.append((messages, got))
            return got

        monkeypatch.setattr(parties_mod.ConnectedParties, "_send", send)
        prefixes = [str(p.resolve()) for p in watched]

        def hook(event: str, args: tuple) -> None:
            if self.active and event == "open" and isinstance(args[0], (str, Path)):
                path = str(Path(args[0]).resolve()) if str(args[0]).startswith("/") else str(args[0])
                if any(path.startswith(p) for p in prefixes):
                    self.opened.append(path)

        sys.addaudithook(hook)


def _plain_types(value) -> bool:
    """Metadata only: no array, no share, nothing but names, numbers and containers of them."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain_types(v) for v in value)
    if isinstance(value, dict):
        return all(_plain_types(k) and _plain_types(v) for k, v in value.items())
    return False


def _assert_coordinator_saw_only_declared(audit: _Audit, session) -> None:
    gets = []
    for messages, replies in audit.exchanges:
        for (cmd, arg), reply in zip(messages.values(), replies):
            if cmd == "get":
                gets.append(arg)            # a share of a value the coordinator then reveals
            else:
                assert _plain_types(reply), (cmd, type(reply))
    # both parties' shares of each revealed value (in order), of nothing else
    assert gets == [name for r in session.reveals for name in (r.name, r.name)]
    assert {r.name for r in session.reveals} <= {"k", "kh", "logits"}
    assert audit.opened == []


def test_process_parties_load_their_own_data(owned, monkeypatch) -> None:
    audit = _Audit(monkeypatch, [owned["ckpt"], owned["data"]])
    with TwoPartySession(SessionSpec("CHEETAH", transport="processes", recv_timeout_s=120.0)) as session:
        results, public = _run_owned(session, owned, "prune_reduce")
        audit.active = False
        _assert_coordinator_saw_only_declared(audit, session)
        assert "private to the server" in session.ownership["l0.wq"]
        assert "private to the client" in session.ownership["h"]
    assert public == {"sizes": (8, 8), "labels": [1.0, 0.0]}
    _check_against_reference(results, owned, "prune_reduce")


def test_remote_daemons_authenticated_and_own_data(owned, tmp_path, monkeypatch) -> None:
    key = new_authkey(tmp_path / "key")
    c0, c1, l0, l1 = (f"127.0.0.1:{p}" for p in parties_mod.free_ports(4))
    spec = SessionSpec("CHEETAH", transport="remote", parties=(c0, c1), authkey_file=str(key), recv_timeout_s=120.0)
    with local_parties(key, [c0, c1], [l0, l1], log_dir=tmp_path) as procs:
        audit = _Audit(monkeypatch, [owned["ckpt"], owned["data"]])
        with TwoPartySession(spec) as session:
            results, _ = _run_owned(session, owned, "prune")
            audit.active = False
            _assert_coordinator_saw_only_declared(audit, session)
        _check_against_reference(results, owned, "prune")
        # a wrong key is refused at once with a clear error, and the daemons keep serving
        bad = new_authkey(tmp_path / "bad")
        t0 = time.monotonic()
        with pytest.raises(PartyFailure, match="refused the control-channel key"):
            TwoPartySession(SessionSpec("CHEETAH", transport="remote", parties=(c0, c1), authkey_file=str(bad)))
        assert time.monotonic() - t0 < 10
        with TwoPartySession(spec) as session:
            results, _ = _run_owned(session, owned, "none")
        _check_against_reference(results, owned, "none")
        # a party killed mid-session fails the next call within seconds, not at the receive timeout
        with TwoPartySession(spec) as session:
            session.provide("client", ClientRequest(str(owned["data"]), (0, 1), str(owned["emb"])))
            procs[1].kill()
            t0 = time.monotonic()
            with pytest.raises(PartyFailure, match="party 1"):
                session.provide("server", ServerRequest(str(owned["ckpt"]), thresholds=False))
            assert time.monotonic() - t0 < 60
    assert "refused a coordinator with a wrong key" in (tmp_path / "party0.log").read_text()


def test_unreachable_party_fails_within_the_connect_timeout(tmp_path) -> None:
    key = new_authkey(tmp_path / "key")
    c0, c1 = (f"127.0.0.1:{p}" for p in parties_mod.free_ports(2))
    t0 = time.monotonic()
    with pytest.raises(PartyFailure, match=f"party at {c0} unreachable"):
        TwoPartySession(SessionSpec("CHEETAH", transport="remote", parties=(c0, c1), authkey_file=str(key),
                                    connect_timeout_s=2.0))
    assert time.monotonic() - t0 < 30


def test_remote_spec_and_key_are_checked(tmp_path) -> None:
    with pytest.raises(ValueError, match="needs 2 party addresses"):
        SessionSpec("CHEETAH", transport="remote", parties=("127.0.0.1:1",))
    with pytest.raises(ValueError, match="expected host:port"):
        parse_address("localhost")
    short = tmp_path / "short"
    short.write_text("abc")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        read_authkey(str(short))
    with pytest.raises(ValueError, match="No such file"):
        read_authkey(str(tmp_path / "missing"))


NETNS = ("cp_client", "cp_server")


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def two_hosts():
    """Two network namespaces linked by a veth pair (10.77.0.1 client, 10.77.0.2 server), each also
    reachable from this namespace (10.78.r.2) for the control channel."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is not installed")
    try:
        _sh("ip", "netns", "add", NETNS[0])
    except (subprocess.CalledProcessError, PermissionError) as err:
        pytest.skip(f"cannot create network namespaces here ({err})")
    try:
        _sh("ip", "netns", "add", NETNS[1])
        _sh("ip", "link", "add", "cp_a", "type", "veth", "peer", "name", "cp_b")
        _sh("ip", "link", "set", "cp_a", "netns", NETNS[0])
        _sh("ip", "link", "set", "cp_b", "netns", NETNS[1])
        for r, (ns, dev) in enumerate(zip(NETNS, ("cp_a", "cp_b"))):
            _sh("ip", "-n", ns, "addr", "add", f"10.77.0.{r + 1}/24", "dev", dev)
            _sh("ip", "-n", ns, "link", "set", dev, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            _sh("ip", "link", "add", f"cp_h{r}", "type", "veth", "peer", "name", f"cp_n{r}")
            _sh("ip", "link", "set", f"cp_n{r}", "netns", ns)
            _sh("ip", "addr", "add", f"10.78.{r}.1/24", "dev", f"cp_h{r}")
            _sh("ip", "link", "set", f"cp_h{r}", "up")
            _sh("ip", "-n", ns, "addr", "add", f"10.78.{r}.2/24", "dev", f"cp_n{r}")
            _sh("ip", "-n", ns, "link", "set", f"cp_n{r}", "up")
        yield
    finally:
        for r in range(2):
            subprocess.run(["ip", "link", "del", f"cp_h{r}"], capture_output=True)
        for ns in NETNS:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_two_parties_in_two_network_namespaces(owned, two_hosts, tmp_path, monkeypatch) -> None:
    key = new_authkey(tmp_path / "key")
    control = ["10.78.0.2:9100", "10.78.1.2:9100"]
    link = ["10.77.0.1:9200", "10.77.0.2:9200"]
    spec = SessionSpec("CHEETAH", transport="remote", parties=tuple(control), authkey_file=str(key), recv_timeout_s=120.0)
    with local_parties(key, control, link, netns=NETNS, log_dir=tmp_path):
        audit = _Audit(monkeypatch, [owned["ckpt"], owned["data"]])
        with TwoPartySession(spec) as session:
            results, _ = _run_owned(session, owned, "prune_reduce")
            audit.active = False
            _assert_coordinator_saw_only_declared(audit, session)
            assert session.meter.report().bytes_total > 0
    _check_against_reference(results, owned, "prune_reduce")


def test_context_request_slides_its_window_over_generated_tokens() -> None:
    """A context of ``seq_len`` tokens of a block; with tokens the client generated appended, the last
    ``seq_len`` of the context and them (the same length and positions at every generation step)."""
    from protocols.provision import ContextRequest

    block = np.arange(10, 16)
    window = lambda *appended: ContextRequest("blocks.npy", (0,), 4, "release", appended).context(block).tolist()  # noqa: E731
    assert window() == [10, 11, 12, 13]
    assert window(7) == [11, 12, 13, 7]
    assert window(7, 8, 9, 5, 6) == [8, 9, 5, 6]
