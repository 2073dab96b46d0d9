"""Locks that keep two runs of one job (enforcement, say) from acting at once.

On PostgreSQL a session-level advisory lock, held on a connection of its own
for the whole run: every quotad process sharing the ledger sees it, and the
server drops it when the process dies. On SQLite, whose ledger lives on one
host, an exclusive `flock` on a file beside the database, which the kernel
drops when the process dies. Neither can be left behind by a crash.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for the job NAME."""
    digest = hashlib.sha256(f"quotad:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def job_lock(engine: Engine, name: str) -> Iterator[bool]:
    """Try to take the lock of job NAME; yields whether this process holds it."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            key = lock_key(name)
            held = bool(conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}))
            # Commit the implicit transaction: the lock belongs to the session,
            # and an idle-in-transaction connection would hold back vacuum.
            conn.commit()
            try:
                yield held
            finally:
                if held:
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    conn.commit()
        return
    database = engine.url.database
    if not database:  # pragma: no cover - config refuses an SQLite ledger without a file
        raise ValueError("an SQLite ledger needs a file path")
    path = Path(f"{database}.{name}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        # Closing the descriptor releases the lock.
        os.close(fd)
