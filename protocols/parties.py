"""The parties of a secure session: SPU runtimes in threads or in separate OS processes.

Both expose ``set_var(name, shares)``, ``get_var(name) -> shares``, ``delete(names)``,
``run(executable) -> party 0's SPU profile text`` and ``close()``. Party 0 runs with
``enable_pphlo_profile`` so the meter can read SPU's own per-op byte counts.

Processes: one spawned process per party, linked by brpc on free 127.0.0.1 ports, driven
over pipes. A party that dies, raises or exceeds ``recv_timeout_s`` makes every call
raise ``PartyFailure`` at once; both processes are then killed and reaped.
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

    def close(self) -> None:
        self._rts = []
        self._pool.shutdown(wait=True)


def _worker(rank: int, spec: SessionSpec, hosts: list[str], conn: Connection) -> None:
    """Party process main loop: build the runtime, then serve commands until 'stop'."""
    try:
        import spu.libspu as libspu
        from spu import api

        tail = LogTail(process_log())
        link = libspu.link.create_brpc(_link_desc(spec, hosts), rank)
        rt = api.Runtime(link, spec.runtime_config(rank == 0))
        conn.send(("ok", None))
        while True:
            cmd, arg = conn.recv()
            if cmd == "set":
                rt.set_var(arg[0], arg[1])
                reply: Any = None
            elif cmd == "get":
                reply = rt.get_var(arg)
            elif cmd == "del":
                for name in arg:
                    rt.del_var(name)
                reply = None
            elif cmd == "run":
                tail.read_new()
                rt.run(arg)
                reply = tail.read_new() if rank == 0 else ""
            elif cmd == "stop":
                link.stop_link()
                conn.send(("ok", None))
                return
            else:
                raise ValueError(f"unknown command {cmd!r}")
            conn.send(("ok", reply))
    except BaseException as err:  # noqa: BLE001 - reported to the driver, then exit
        try:
            conn.send(("error", f"party {rank}: {err!r}\n{traceback.format_exc()}"))
        except OSError:
            pass


class ProcessParties:
    """One OS process per party, brpc over loopback TCP."""

    def __init__(self, spec: SessionSpec) -> None:
        self.spec = spec
        ctx = mp.get_context("spawn")
        hosts = [f"127.0.0.1:{p}" for p in free_ports(spec.world_size)]
        self._conns: list[Connection] = []
        self._procs: list[mp.process.BaseProcess] = []
        self._failed: Optional[str] = None
        for rank in range(spec.world_size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(rank, spec, hosts, child), daemon=True, name=f"spu-party{rank}")
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        self._collect(spec.connect_timeout_s + 60.0)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def _collect(self, timeout_s: float) -> list[Any]:
        """Every party's reply, or PartyFailure (dead process, error, timeout) after killing all."""
        deadline = time.monotonic() + timeout_s
        replies: list[Any] = [None] * len(self._conns)
        pending = set(range(len(self._conns)))
        while pending:
            for rank in sorted(pending):
                conn, proc = self._conns[rank], self._procs[rank]
                if conn.poll(0.05):
                    try:
                        status, value = conn.recv()
                    except (EOFError, OSError):
                        self._fail(f"party {rank} closed its connection (exit code {proc.exitcode})")
                    if status == "error":
                        self._fail(value)
                    replies[rank] = value
                    pending.discard(rank)
                elif not proc.is_alive():
                    self._fail(f"party {rank} (pid {proc.pid}) died with exit code {proc.exitcode}")
            if pending and time.monotonic() > deadline:
                self._fail(f"parties {sorted(pending)} did not answer within {timeout_s:.0f} s")
        return replies

    def _fail(self, reason: str) -> None:
        self._failed = reason
        self._kill()
        raise PartyFailure(reason)

    def _send_all(self, messages: list[tuple[str, Any]]) -> list[Any]:
        if self._failed:
            raise PartyFailure(f"session already failed: {self._failed}")
        for rank, (conn, msg) in enumerate(zip(self._conns, messages)):
            try:
                conn.send(msg)
            except OSError:
                self._fail(f"party {rank} is gone (pipe closed)")
        return self._collect(self.spec.recv_timeout_s + 30.0)

    def set_var(self, name: str, shares: list[Any]) -> None:
        self._send_all([("set", (name, s)) for s in shares])

    def get_var(self, name: str) -> list[Any]:
        return self._send_all([("get", name)] * len(self._conns))

    def delete(self, names: list[str]) -> None:
        self._send_all([("del", names)] * len(self._conns))

    def run(self, exe: Any) -> str:
        return self._send_all([("run", exe)] * len(self._conns))[0]

    def _kill(self) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
        for proc in self._procs:
            proc.join(timeout=10)
        for conn in self._conns:
            conn.close()

    def close(self) -> None:
        if not self._failed and all(p.is_alive() for p in self._procs):
            try:
                self._send_all([("stop", None)] * len(self._conns))
            except PartyFailure:
                pass
        self._kill()
