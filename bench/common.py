"""What the benchmarks share: timing, and GNU find's totals as the oracle."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import psycopg

# Where the PostgreSQL benchmarks create (and drop) their scratch databases.
ADMIN_DSN = os.environ.get("PG_BENCH_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")


def timed(run: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of RUN."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def format_runs(times: list[float]) -> str:
    """The individual timings, for eyeballing the spread."""
    return " ".join(f"{t:.3f}" for t in times)


def find_totals(root: Path) -> dict[str, tuple[int, int]]:
    """(bytes, files) per member from `find -printf`, hard links once per member."""
    output = subprocess.run(
        ["find", str(root), "-mindepth", "2", "-xdev", "-type", "f", "-printf", "%i %s %P\\0"],
        check=True,
        capture_output=True,
    ).stdout
    inodes: dict[str, dict[int, int]] = defaultdict(dict)
    for record in output.split(b"\0"):
        if not record:
            continue
        inode, size, relative = record.split(b" ", 2)
        member = os.fsdecode(relative.split(b"/", 1)[0])
        inodes[member][int(inode)] = int(size)
    return {member: (sum(sizes.values()), len(sizes)) for member, sizes in inodes.items()}


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def scratch_database(label: str) -> Iterator[str]:
    """A new database's SQLAlchemy URL; dropped on the way out, whatever happened.

    SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C meanwhile, so the
    database is dropped then too.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    name = f"quotad_bench_{label}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            info = admin.info
            yield f"postgresql+psycopg://{info.user}@{info.host}:{info.port}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
