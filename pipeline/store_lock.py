"""The sqlite tracking store's write lock, checked before a launch opens any run."""
from __future__ import annotations

import sqlite3
from pathlib import Path


class StoreLocked(RuntimeError):
    """Another process holds the sqlite tracking store's write lock past the wait."""


def check_store_unlocked(db: Path, wait_s: float = 10.0) -> None:
    """``StoreLocked`` naming ``db`` unless its write lock can be taken within ``wait_s`` (a parallel
    job's short write waits; a process holding a transaction open fails the launch before any run)."""
    if not db.is_file():
        return
    con = sqlite3.connect(db, timeout=wait_s, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("ROLLBACK")
    except sqlite3.OperationalError as e:
        raise StoreLocked(f"tracking store {db} is locked by another process ({e}) for more than {wait_s:g} s; "
                          "retry when it is done, or give paths.outputs=<another directory>") from None
    finally:
        con.close()
