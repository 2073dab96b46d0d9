"""Benchmark the `tree` scanner against `du -sb` on a generated home-directory tree.

Usage: .venv/bin/python bench/tree_scan.py [--files N] [--dir D] [--repeat R]
           [--workers W] [--threaded]

The tree is generated once and reused while its parameters stay the same
(a marker file records them). Both tools get a warm-up run, then run
alternately so that neither benefits from the other's cache state.
The goal is a median ratio scanner/du of at most 1.0.

--threaded keeps an idle thread running, as quotad's server has: the scanner
then starts its workers from a fork server instead of forking directly.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

# bench/ is not an installed package: the timing and the oracle are shared
# with the other benchmark.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import find_totals, format_runs, timed
from scanners import tree
from scanners.base import Measurement, ResourceFailure
from scanners.tree import TreeScanner

MARKER = ".quotad-bench-tree.json"
LAYOUT_VERSION = 1
MEMBERS = (
    "alice",
    "bob",
    "carol",
    "dave",
    "erin",
    "frank",
    "grace",
    "heidi",
    "ivan",
    "judy",
    "mallory",
    "niaj",
    "olivia",
    "peggy",
    "rupert",
    "sybil",
    "trent",
    "uma",
    "victor",
    "wendy",
)
# Files at most this big get real bytes; bigger ones are sparse, which has
# the same st_size (all that is measured) without filling the disk.
WRITTEN_LIMIT = 16 * 1024
MAX_DEPTH = 8


def main() -> int:
    """Generate (or reuse) the tree, time both tools, check the totals."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200_000, help="files in the tree")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/quotad-bench-tree"))
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each tool")
    parser.add_argument("--workers", type=int, default=None, help="scanner workers")
    parser.add_argument("--seed", type=int, default=1, help="layout seed")
    parser.add_argument("--threaded", action="store_true", help="as in a threaded server")
    args = parser.parse_args()

    ensure_tree(args.dir, args.files, args.seed)
    options: dict[str, object] = {"path": f"{args.dir}/{{member}}"}
    if args.workers is not None:
        options["workers"] = args.workers
    scanner = TreeScanner.from_options("bench", options, Path.cwd())

    stop = threading.Event()
    if args.threaded:
        threading.Thread(target=stop.wait, daemon=True).start()
    try:
        # Private, but which code path was measured belongs in the report.
        method = tree._start_method()  # noqa: SLF001
        if scanner.workers == 1:
            method = "none (in-process)"
        print(
            f"tree: {args.dir} ({args.files} files); scanner workers: {scanner.workers}, "
            f"start method: {method}"
        )
        return compare(scanner, args.dir, args.repeat)
    finally:
        stop.set()


def compare(scanner: TreeScanner, root: Path, repeat: int) -> int:
    """Time the scanner and du alternately; 0 if the scanner's totals are right."""
    results: list[list[Measurement | ResourceFailure]] = []

    def run_scanner() -> None:
        results.append(list(scanner.scan()))

    def run_du() -> None:
        subprocess.run(["du", "-sb", str(root)], check=True, stdout=subprocess.DEVNULL)

    run_scanner()  # warm-up, for both: the cache, and the scanner's fork server if any
    run_du()
    scanner_times: list[float] = []
    du_times: list[float] = []
    for _ in range(repeat):
        scanner_times.append(timed(run_scanner))
        du_times.append(timed(run_du))
    scanner_median = statistics.median(scanner_times)
    du_median = statistics.median(du_times)
    print(f"scanner: median {scanner_median:.3f}s  runs {format_runs(scanner_times)}")
    print(f"du -sb:  median {du_median:.3f}s  runs {format_runs(du_times)}")
    print(f"ratio scanner/du: {scanner_median / du_median:.2f} (goal <= 1.00)")
    steady = all(result == results[0] for result in results)
    if not steady:
        print("MISMATCH: the scanner's runs disagree with each other")
    return 0 if check_totals(results[0], root) and steady else 1


def check_totals(items: list[Measurement | ResourceFailure], root: Path) -> bool:
    """Compare the scanner with GNU find's view of the same tree; print OK or MISMATCH."""
    failures = [item for item in items if isinstance(item, ResourceFailure)]
    for failure in failures:
        print(f"failure: {failure.name}: {failure.error}")
    scanned = {
        item.name: (item.bytes, item.files) for item in items if isinstance(item, Measurement)
    }
    expected = find_totals(root)
    got_bytes = sum(b for b, _ in scanned.values())
    want_bytes = sum(b for b, _ in expected.values())
    ok = not failures and scanned == expected
    print(
        f"total bytes: scanner {got_bytes}, find {want_bytes}; "
        f"files: scanner {sum(f for _, f in scanned.values())}, "
        f"find {sum(f for _, f in expected.values())}: {'OK' if ok else 'MISMATCH'}"
    )
    return ok


def ensure_tree(root: Path, files: int, seed: int) -> None:
    """Generate the tree under ROOT unless the marker says it already matches."""
    params = {"files": files, "seed": seed, "layout": LAYOUT_VERSION}
    marker = root / MARKER
    try:
        if json.loads(marker.read_text()) == params:
            return
    except (OSError, ValueError):
        pass
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    print(f"generating {files} files under {root} ...", flush=True)
    start = time.perf_counter()
    generate(root, files, random.Random(seed))
    marker.write_text(json.dumps(params))
    print(f"generated in {time.perf_counter() - start:.1f}s", flush=True)


def generate(root: Path, files: int, rng: random.Random) -> None:
    """Member homes of uneven sizes, nested to varying depths, with some hard links."""
    # Uneven like real members: a few hold most of the files.
    weights = [rng.paretovariate(1.2) for _ in MEMBERS]
    scale = files / sum(weights)
    counts = [max(1, int(w * scale)) for w in weights]
    counts[counts.index(max(counts))] += files - sum(counts)
    payload = b"x" * WRITTEN_LIMIT
    for member, count in zip(MEMBERS, counts, strict=True):
        generate_home(root / member, count, rng, payload)


def generate_home(home: Path, count: int, rng: random.Random, payload: bytes) -> None:
    """COUNT regular files below HOME, plus a few more names for some of them."""
    home.mkdir()
    dirs: list[tuple[Path, int]] = [(home, 0)]
    made: list[Path] = []
    for i in range(count):
        if rng.random() < 0.08:  # about 12 files a directory
            parent, depth = dirs[rng.randrange(len(dirs))]
            if depth < MAX_DEPTH:
                child = parent / f"d{len(dirs)}"
                child.mkdir()
                dirs.append((child, depth + 1))
        # Recent directories get most files, as in real trees.
        directory = dirs[max(0, len(dirs) - 1 - int(rng.expovariate(0.1)))][0]
        path = directory / f"f{i}.dat"
        size = min(int(rng.lognormvariate(8, 2.5)), 1 << 30)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            if size <= WRITTEN_LIMIT:
                os.write(fd, payload[:size])
            else:
                os.ftruncate(fd, size)
        finally:
            os.close(fd)
        made.append(path)
        # Extra names (not counted in COUNT) for about 1% of the files,
        # some in the same directory and some elsewhere in the home.
        if rng.random() < 0.01:
            target = made[rng.randrange(len(made))]
            os.link(target, dirs[rng.randrange(len(dirs))][0] / f"l{i}.dat")


if __name__ == "__main__":
    sys.exit(main())
