"""The parties of a secure session: SPU runtimes in threads or in separate OS processes.

Both expose ``set_var(name, shares)``, ``get_var(name) -> shares``, ``delete(names)``,
``run(executable) -> party 0's SPU profile text`` and ``close()``. Party 0 runs with
``enable_pphlo_profile`` so the meter can read SPU's own per-op byte counts.

Threads hold both parties in this process. ``ConnectedParties`` drive each party's
``PartyRuntime`` over one ``Connection``: ``ProcessParties`` spawn them locally (brpc on free
127.0.0.1 ports, pipes), ``protocols.remote.RemoteParties`` reach daemons on any hosts; both
also let each party load and share its own data (``provide``). A party that dies, raises or
stays silent (no reply and no heartbeat) past ``SessionSpec.silence_limit_s`` makes every call
raise ``PartyFailure`` at once; local processes are then killed and reaped. A busy
party is not silent: it sends a heartbeat while a program runs, however long the program.
"""
from __future__ import annotations

import multiprocessing as mp
import socket
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Optional

from protocols.meter import LogTail
from protocols.spec import PartyFailure, SessionSpec


def free_ports(count: int) -> list[int]:
    """Ports the OS reports free on 127.0.0.1 (bound then released)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


_LOG_LOCK = threading.Lock()
_PROCESS_LOG: Optional[Path] = None


def process_log() -> Path:
    """SPU's log of this process (set up once: SPU's logging is process-global)."""
    global _PROCESS_LOG
    with _LOG_LOCK:
        if _PROCESS_LOG is None:
            import spu.libspu as libspu

            path = Path(tempfile.mkdtemp(prefix="cipherprune-spu-")) / "spu.log"
            opts = libspu.logging.LogOptions()
            opts.system_log_path = str(path)
            opts.enable_console_logger = False
            libspu.logging.setup_logging(opts)
            _PROCESS_LOG = path
        return _PROCESS_LOG


def make_shares(io: Any, value: Any, owner_rank: Optional[int]) -> tuple[Any, list[Any]]:
    """``value`` as an array fit for SPU (float64 → float32) and its shares from ``io``: private to
    party ``owner_rank`` (``Priv2k``, where the runtime config enables it) or, with None, secret-shared."""
    import numpy as np
    import spu.libspu as libspu

    arr = np.asarray(value)
    arr = arr.astype(np.float32) if arr.dtype == np.float64 else arr
    if owner_rank is None:
        return arr, io.make_shares(arr, libspu.Visibility.VIS_SECRET)
    return arr, io.make_shares(arr, libspu.Visibility.VIS_SECRET, owner_rank=owner_rank)


def _link_desc(spec: SessionSpec, hosts: list[str]) -> Any:
    import spu.libspu as libspu

    desc = libspu.link.Desc()
    for rank, host in enumerate(hosts):
        desc.add_party(f"party{rank}", host)
    desc.connect_retry_interval_ms = 200
    desc.connect_retry_times = max(1, int(spec.connect_timeout_s * 1000 / 200))
    desc.recv_timeout_ms = int(spec.recv_timeout_s * 1000)
    desc.http_timeout_ms = int(spec.recv_timeout_s * 1000)
    return desc


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (bytes; ``getrusage``, Linux reports KiB)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class ThreadParties:
    """All parties in this process, one thread each, on an in-memory link."""

    def __init__(self, spec: SessionSpec) -> None:
        import spu.libspu as libspu
        from spu import api

        self.spec = spec
        self._tail = LogTail(process_log())
        n = spec.world_size
        desc = _link_desc(spec, [f"thread_{r}" for r in range(n)])
        self._pool = ThreadPoolExecutor(max_workers=n)

        def make(rank: int) -> Any:
            return api.Runtime(libspu.link.create_mem(desc, rank), spec.runtime_config(rank == 0))

        self._rts = list(self._pool.map(make, range(n)))  # constructors all-gather: concurrently

    def set_var(self, name: str, shares: list[Any]) -> None:
        for rt, share in zip(self._rts, shares):
            rt.set_var(name, share)

    def get_var(self, name: str) -> list[Any]:
        return [rt.get_var(name) for rt in self._rts]

    def delete(self, names: list[str]) -> None:
        for rt in self._rts:
            for name in names:
                rt.del_var(name)

    def run(self, exe: Any) -> str:
        self._tail.read_new()
        futures = [self._pool.submit(rt.run, exe) for rt in self._rts]
        for fut in futures:
            fut.result()
        return self._tail.read_new()

    def peak_rss(self) -> list[int]:
        """Peak RSS per party (bytes): both parties are this process."""
        return [peak_rss_bytes()] * 2

    def close(self) -> None:
        self._rts = []
        self._pool.shutdown(wait=True)


class PartyRuntime:
    """One party's SPU runtime and the commands a coordinator sends it (``(cmd, arg)`` → reply).

    ``set``/``get``/``del``/``run``/``stop`` as the transports' methods; ``provide`` loads the
    party's own inputs from a request naming files on its host (``protocols.provision``) and
    builds its share of each locally (private: the owner's share holds the plaintext, and the
    peer's is built by ``placeholder`` from zeros of the same shape, so no other process sees
    the values; secret-shared: the peer's shares are returned for relay, ``set_many``). The
    reply of ``provide`` is each value's name, shape and dtype and the request's public part.
    """

    def __init__(self, rank: int, spec: SessionSpec, hosts: list[str]) -> None:
        import spu.libspu as libspu
        from spu import api

        self.rank = rank
        self.heartbeat_s = spec.heartbeat_every_s
        self._tail = LogTail(process_log())
        self.link = libspu.link.create_brpc(_link_desc(spec, hosts), rank)
        self.rt = api.Runtime(self.link, spec.runtime_config(rank == 0))
        self._io = api.Io(spec.world_size, spec.runtime_config(False))

    def handle(self, cmd: str, arg: Any) -> Any:
        """Execute one command; raises on an unknown one."""
        import numpy as np

        if cmd == "set":
            self.rt.set_var(arg[0], arg[1])
        elif cmd == "set_many":
            for name, share in arg.items():
                self.rt.set_var(name, share)
        elif cmd == "get":
            return self.rt.get_var(arg)
        elif cmd == "del":
            for name in arg:
                self.rt.del_var(name)
        elif cmd == "run":
            self._tail.read_new()
            self.rt.run(arg)
            return self._tail.read_new() if self.rank == 0 else ""
        elif cmd == "provide":
            request, private = arg
            provided = request.load()
            metas, peer = [], {}
            for name, raw in provided.values.items():
                value, shares = make_shares(self._io, raw, self.rank if private else None)
                self.rt.set_var(name, shares[self.rank])
                metas.append((name, tuple(value.shape), str(value.dtype)))
                if not private:
                    peer[name] = shares[1 - self.rank]
            return metas, peer, provided.public
        elif cmd == "job":
            arg.run()
        elif cmd == "peak_rss":
            return peak_rss_bytes()
        elif cmd == "placeholder":
            metas, owner_rank = arg
            for name, shape, dtype in metas:
                self.rt.set_var(name, make_shares(self._io, np.zeros(shape, dtype), owner_rank)[1][self.rank])
        else:
            raise ValueError(f"unknown command {cmd!r}")
        return None


def _beat(send: Any, done: threading.Event, every_s: float) -> None:
    while not done.wait(every_s):
        send(("alive", None))


def serve_commands(party: PartyRuntime, conn: Connection) -> None:
    """Answer ``(cmd, arg)`` messages with ``("ok", reply)`` until ``stop``; an error is sent back
    as ``("error", text)`` and ends the loop (the coordinator then fails the session). While a
    command runs, ``("alive", None)`` is sent every ``party.heartbeat_s``: a program may take far longer
    than the coordinator's silence limit (``SessionSpec.silence_limit_s``) without being failed,
    and a party that stops answering altogether still is."""
    lock = threading.Lock()

    def send(message: tuple[str, Any]) -> None:
        with lock:
            conn.send(message)

    while True:
        cmd, arg = conn.recv()
        if cmd == "stop":
            party.link.stop_link()
            send(("ok", None))
            return
        done = threading.Event()
        beat = threading.Thread(target=_beat, args=(send, done, party.heartbeat_s), daemon=True)
        beat.start()
        try:
            reply = party.handle(cmd, arg)
        except BaseException as err:  # noqa: BLE001 - reported to the coordinator, which fails the session
            done.set()
            beat.join()
            send(("error", f"party {party.rank}: {err!r}\n{traceback.format_exc()}"))
            return
        done.set()
        beat.join()
        send(("ok", reply))


def _worker(rank: int, spec: SessionSpec, hosts: list[str], conn: Connection) -> None:
    """Party process main loop: build the runtime, then serve commands until 'stop'."""
    try:
        party = PartyRuntime(rank, spec, hosts)
        conn.send(("ok", None))
    except BaseException as err:  # noqa: BLE001 - reported to the driver, then exit
        conn.send(("error", f"party {rank}: {err!r}\n{traceback.format_exc()}"))
        return
    try:
        serve_commands(party, conn)
    except (EOFError, OSError):
        pass


class ConnectedParties:
    """Parties behind one ``Connection`` each (a pipe to a local process, or an authenticated
    socket to a party on another host): every call fails the whole session with ``PartyFailure``
    when a party errs, goes away or sends nothing (reply or heartbeat) for ``spec.silence_limit_s``."""

    def __init__(self, spec: SessionSpec) -> None:
        self.spec = spec
        self._conns: list[Connection] = []
        self._failed: Optional[str] = None

    def _gone(self, rank: int) -> Optional[str]:
        """Why party ``rank`` can no longer answer, or None (subclasses know their processes)."""
        return None

    def _collect(self, ranks: list[int], timeout_s: float) -> list[Any]:
        """The replies of ``ranks``, or PartyFailure (gone, error, or silent: no reply and no
        heartbeat for ``timeout_s``) after closing all."""
        deadlines = {rank: time.monotonic() + timeout_s for rank in ranks}
        replies: dict[int, Any] = {}
        pending = set(ranks)
        while pending:
            for rank in sorted(pending):
                conn = self._conns[rank]
                if conn.poll(0.05):
                    try:
                        status, value = conn.recv()
                    except (EOFError, OSError):
                        self._fail(f"party {rank} closed its connection ({self._gone(rank) or 'no reason given'})")
                    if status == "alive":
                        deadlines[rank] = time.monotonic() + timeout_s
                        continue
                    if status == "error":
                        self._fail(value)
                    replies[rank] = value
                    pending.discard(rank)
                elif (why := self._gone(rank)) is not None:
                    self._fail(f"party {rank} {why}")
            silent = sorted(r for r in pending if time.monotonic() > deadlines[r])
            if silent:
                self._fail(f"parties {silent} did not answer within {timeout_s:.0f} s (no reply, no heartbeat)")
        return [replies[r] for r in ranks]

    def _fail(self, reason: str) -> None:
        self._failed = reason
        self._kill()
        raise PartyFailure(reason)

    def _send(self, messages: dict[int, tuple[str, Any]]) -> list[Any]:
        if self._failed:
            raise PartyFailure(f"session already failed: {self._failed}")
        for rank, msg in messages.items():
            try:
                self._conns[rank].send(msg)
            except OSError:
                self._fail(f"party {rank} is gone (connection closed)")
        return self._collect(list(messages), self.spec.silence_limit_s)

    def _send_all(self, messages: list[tuple[str, Any]]) -> list[Any]:
        return self._send(dict(enumerate(messages)))

    def set_var(self, name: str, shares: list[Any]) -> None:
        self._send_all([("set", (name, s)) for s in shares])

    def get_var(self, name: str) -> list[Any]:
        return self._send_all([("get", name)] * len(self._conns))

    def delete(self, names: list[str]) -> None:
        self._send_all([("del", names)] * len(self._conns))

    def run(self, exe: Any) -> str:
        return self._send_all([("run", exe)] * len(self._conns))[0]

    def provide(self, owner_rank: int, request: Any, private: bool) -> tuple[list[tuple[str, tuple[int, ...], str]], Any]:
        """Party ``owner_rank`` loads ``request`` and shares it (``PartyRuntime``); the peer builds its
        placeholder shares (private) or receives its shares (relayed, secret-shared). Returns the
        values' metadata and the request's public part; the coordinator never sees a value."""
        metas, peer, public = self._send({owner_rank: ("provide", (request, private))})[0]
        other = 1 - owner_rank
        self._send({other: ("placeholder", (metas, owner_rank)) if private else ("set_many", peer)})
        return metas, public

    def job(self, rank: int, job: Any) -> None:
        """Party ``rank`` runs ``job.run()`` on its own host (e.g. the server's embeddings release)."""
        self._send({rank: ("job", job)})

    def peak_rss(self) -> list[int]:
        """Peak RSS of each party's process so far (bytes, rank order)."""
        return [int(v) for v in self._send_all([("peak_rss", None)] * len(self._conns))]

    def _kill(self) -> None:
        for conn in self._conns:
            conn.close()

    def close(self) -> None:
        if not self._failed:
            try:
                self._send_all([("stop", None)] * len(self._conns))
            except PartyFailure:
                pass
        self._kill()


class ProcessParties(ConnectedParties):
    """One spawned OS process per party, brpc over loopback TCP, driven over pipes."""

    def __init__(self, spec: SessionSpec) -> None:
        super().__init__(spec)
        ctx = mp.get_context("spawn")
        hosts = [f"127.0.0.1:{p}" for p in free_ports(spec.world_size)]
        self._procs: list[mp.process.BaseProcess] = []
        for rank in range(spec.world_size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(rank, spec, hosts, child), daemon=True, name=f"spu-party{rank}")
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        self._collect(list(range(spec.world_size)), spec.connect_timeout_s + 60.0)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def _gone(self, rank: int) -> Optional[str]:
        proc = self._procs[rank]
        return None if proc.is_alive() else f"(pid {proc.pid}) died with exit code {proc.exitcode}"

    def _kill(self) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
        for proc in self._procs:
            proc.join(timeout=10)
        super()._kill()
