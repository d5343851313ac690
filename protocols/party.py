"""A party daemon: one SPU party on its own host, driven by a coordinator over an authenticated
control channel, holding only its own data.

    python -m protocols.party --rank 1 --listen 0.0.0.0:9101 --link 10.0.0.2:9201 --authkey-file key

``--listen``: where the coordinator connects (``multiprocessing.connection`` with the shared key
of ``--authkey-file`` or ``$CIPHERPRUNE_AUTHKEY``: HMAC challenge-response both ways; a wrong key is
refused and logged, the daemon goes on listening). ``--link``: this party's address for SPU's
own brpc link, as the other party reaches it (``--link-bind``: where it listens, when that differs:
NAT, a relay). ``--rank``: 0 the client, 1 the server.

Per session the coordinator sends ``hello`` (answered with this party's rank and link address),
``init`` (the ``SessionSpec`` and both link addresses: the SPU runtime is built), then the commands
of ``protocols.parties.PartyRuntime``; ``provide`` names files on this host (a checkpoint, a
tokenised dataset), which this process loads and shares itself. After a session ends (``stop``,
the coordinator gone, or an error) the daemon serves the next one; ``--once`` exits instead.
"""
from __future__ import annotations

import argparse
import logging
import traceback
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, Listener

from protocols.parties import PartyRuntime, serve_commands
from protocols.spec import parse_address, read_authkey

log = logging.getLogger("protocols.party")


def _session(rank: int, link: str, bind: str, conn: Connection) -> None:
    """One coordinator's session on ``conn``: hello, init, commands until stop or disconnect."""
    cmd, _ = conn.recv()
    if cmd != "hello":
        raise ValueError(f"expected hello, got {cmd!r}")
    conn.send(("ok", {"rank": rank, "link": link, "bind": bind}))
    cmd, arg = conn.recv()
    if cmd != "init":
        raise ValueError(f"expected init, got {cmd!r}")
    spec, hosts = arg
    try:
        party = PartyRuntime(rank, spec, hosts)
    except BaseException as err:  # noqa: BLE001 - reported to the coordinator
        conn.send(("error", f"party {rank}: {err!r}\n{traceback.format_exc()}"))
        return
    conn.send(("ok", None))
    serve_commands(party, conn)


def serve(rank: int, listen: str, link: str, authkey: bytes, once: bool = False, bind: str | None = None) -> None:
    """Accept coordinators on ``listen`` (one session at a time) until killed, or one with ``once``.
    ``link``: the SPU link address the peer connects to; ``bind``: where this party listens for it
    (default ``link``; differs behind NAT, or with a relay between the parties)."""
    bind = bind or link
    with Listener(parse_address(listen), authkey=authkey) as listener:
        log.info(f"party {rank}: control on {listen}, SPU link on {bind} (reached as {link})")
        while True:
            try:
                conn = listener.accept()
            except AuthenticationError as err:
                log.warning(f"party {rank}: refused a coordinator with a wrong key ({err})")
                continue
            with conn:
                try:
                    _session(rank, link, bind, conn)
                except (EOFError, OSError) as err:
                    log.warning(f"party {rank}: coordinator gone ({err!r}); waiting for the next one")
                except Exception as err:  # noqa: BLE001 - a bad session must not end the daemon
                    log.error(f"party {rank}: session failed: {err!r}")
            if once:
                return


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m protocols.party", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rank", type=int, choices=(0, 1), required=True, help="0: the client, 1: the server")
    ap.add_argument("--listen", required=True, help="host:port of the control channel")
    ap.add_argument("--link", required=True, help="host:port of this party's SPU link, as the peer reaches it")
    ap.add_argument("--link-bind", default=None, help="host:port this party's SPU link listens on (default: --link)")
    ap.add_argument("--authkey-file", default=None, help="file with the shared key (else $CIPHERPRUNE_AUTHKEY)")
    ap.add_argument("--once", action="store_true", help="exit after one session")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        for address in (args.listen, args.link, args.link_bind or args.link):
            parse_address(address)
        key = read_authkey(args.authkey_file)
    except ValueError as err:
        ap.error(str(err))
    serve(args.rank, args.listen, args.link, key, args.once, args.link_bind)


if __name__ == "__main__":
    main()
