"""What the benchmarks share: timing, and GNU find's totals as the oracle."""

from __future__ import annotations

import os
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path


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
