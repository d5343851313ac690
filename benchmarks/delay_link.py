"""A TCP relay that delays every byte by a fixed one-way latency, for a real delayed link where
the kernel has no ``tc netem`` (this one: "Specified qdisc kind is unknown") and no delaying proxy
is packaged in the registries reachable here (toxiproxy is in neither Debian's, PyPI's nor npm's).

    with delayed_links([("127.0.0.1:9400", "127.0.0.1:9200")], delay_s=0.02): ...

Each direction of each connection has a reader thread that stamps what arrives and a writer
thread that sends it ``delay`` later, in order (TCP_NODELAY both sides; ``time.sleep`` has
sub-millisecond resolution): a propagation delay, no bandwidth limit (use ``tc tbf`` for that).
Scheduling on a loaded machine adds jitter: measure the RTT the relay really adds
(``probe_rtt``) and use that figure, not the configured one.
"""
from __future__ import annotations

import multiprocessing as mp
import queue
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

from protocols.spec import parse_address


def _connect(address: str) -> socket.socket:
    sock = socket.create_connection(parse_address(address))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _pump(src: socket.socket, dst: socket.socket, delay_s: float) -> None:
    """Copy ``src`` → ``dst``, each chunk written ``delay_s`` after it was read; shut down at EOF."""
    pending: queue.Queue[tuple[float, bytes]] = queue.Queue()

    def write() -> None:
        while True:
            due, data = pending.get()
            if not data:
                break
            if (wait := due - time.perf_counter()) > 0:
                time.sleep(wait)
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (dst, src):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    while True:
        try:
            data = src.recv(1 << 16)
        except OSError:
            data = b""
        pending.put((time.perf_counter() + delay_s, data))
        if not data:
            break
    writer.join()


def _serve(listen: str, target: Optional[str], delay_s: float) -> None:
    """Accept on ``listen``: relay each connection to ``target`` (or echo it, ``target`` None)."""
    server = socket.create_server(parse_address(listen))
    while True:
        client, _ = server.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if target is None:
            threading.Thread(target=_pump, args=(client, client, 0.0), daemon=True).start()
            continue
        try:
            upstream = _connect(target)
        except OSError:          # target not up (yet): drop the client, as a refused connection would
            client.close()
            continue
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(a, b, delay_s), daemon=True).start()


def _run(pairs: Sequence[tuple[str, str]], delay_s: float, echo: Optional[str]) -> None:
    servers = [threading.Thread(target=_serve, args=(listen, target, delay_s), daemon=True) for listen, target in pairs]
    if echo:
        servers.append(threading.Thread(target=_serve, args=(echo, None, 0.0), daemon=True))
    for t in servers:
        t.start()
    for t in servers:
        t.join()


def probe_rtt(address: str, count: int = 20) -> float:
    """Median round trip (seconds) of one byte through a relay to an echo server at its target."""
    samples = []
    with _connect(address) as sock:
        for _ in range(count):
            t0 = time.perf_counter()
            sock.sendall(b"x")
            sock.recv(1)
            samples.append(time.perf_counter() - t0)
    return sorted(samples)[len(samples) // 2]


@contextmanager
def delayed_links(pairs: Sequence[tuple[str, str]], delay_s: float, echo: Optional[str] = None) -> Iterator[None]:
    """Relays ``listen → target`` for each pair, each direction delayed by ``delay_s``, in one
    helper process (and an echo server at ``echo`` to probe them); stopped on exit."""
    proc = mp.get_context("spawn").Process(target=_run, args=(list(pairs), delay_s, echo), daemon=True)
    proc.start()
    try:
        for listen in [listen for listen, _ in pairs] + ([echo] if echo else []):
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(parse_address(listen), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or not proc.is_alive():
                        raise RuntimeError(f"delay relay on {listen} did not start") from None
                    time.sleep(0.1)
        yield
    finally:
        proc.kill()
        proc.join(timeout=10)
