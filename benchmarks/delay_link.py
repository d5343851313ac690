"""A TCP relay that delays every byte by a fixed one-way latency, for a real delayed link where
the kernel has no ``tc netem`` (this one: "Specified qdisc kind is unknown") and no delaying proxy
is packaged in the registries reachable here (toxiproxy is in neither Debian's, PyPI's nor npm's).

    with delayed_links([("127.0.0.1:9400", "127.0.0.1:9200")], delay_s=0.02): ...

Each direction of each connection is read as it arrives, stamped, and written ``delay`` later in
order (TCP_NODELAY both sides): a propagation delay, no bandwidth limit (use ``tc tbf`` for that).
Event-loop timers round short delays up to about a millisecond: measure the RTT the relay really
adds (``probe_rtt``) and use that figure, not the configured one.
"""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import socket
import time
from contextlib import contextmanager
from typing import Iterator, Sequence

from protocols.spec import parse_address


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        while data := await reader.read(1 << 16):
            queue.put_nowait((loop.time() + delay_s, data))
        queue.put_nowait((0.0, b""))

    async def write() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                writer.close()
                return
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    await asyncio.gather(read(), write())


async def relay(listen: str, target: str, delay_s: float) -> None:
    """Serve forever: each connection to ``listen`` is relayed to ``target`` with the delay."""
    host, port = parse_address(target)

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            target_r, target_w = await asyncio.open_connection(host, port)
        except OSError:          # target not up (yet): drop the client, as a refused connection would
            client_w.close()
            return
        for w in (client_w, target_w):
            _nodelay(w)
        try:
            await asyncio.gather(_pump(client_r, target_w, delay_s), _pump(target_r, client_w, delay_s))
        except (ConnectionError, OSError):
            for w in (client_w, target_w):
                w.close()

    server = await asyncio.start_server(handle, *parse_address(listen))
    async with server:
        await server.serve_forever()


def probe_rtt(address: str, count: int = 20) -> float:
    """Median round trip (seconds) of one byte through a relay to an echo server at its target."""
    samples = []
    with socket.create_connection(parse_address(address)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            t0 = time.perf_counter()
            sock.sendall(b"x")
            sock.recv(1)
            samples.append(time.perf_counter() - t0)
    return sorted(samples)[len(samples) // 2]


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    _nodelay(writer)
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _serve_all(pairs: Sequence[tuple[str, str]], delay_s: float, echo: str | None) -> None:
    tasks = [relay(listen, target, delay_s) for listen, target in pairs]
    if echo:
        server = await asyncio.start_server(_echo, *parse_address(echo))
        tasks.append(server.serve_forever())
    await asyncio.gather(*tasks)


def _run(pairs: Sequence[tuple[str, str]], delay_s: float, echo: str | None) -> None:
    asyncio.run(_serve_all(pairs, delay_s, echo))


@contextmanager
def delayed_links(pairs: Sequence[tuple[str, str]], delay_s: float, echo: str | None = None) -> Iterator[None]:
    """Relays ``listen → target`` for each pair, each direction delayed by ``delay_s``, in one
    helper process (and an echo server at ``echo`` to probe them); stopped on exit."""
    proc = mp.get_context("spawn").Process(target=_run, args=(list(pairs), delay_s, echo), daemon=True)
    proc.start()
    try:
        for listen, _ in pairs:
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
