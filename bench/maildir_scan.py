"""Benchmark the `maildir` scanner against `du -sb` on generated Maildir++ mailboxes.

Usage: .venv/bin/python bench/maildir_scan.py [--members N] [--messages N] [--dir D]
           [--repeat R] [--workers W] [--seed S]

The mailboxes (tests/maildirs.py: sizes lognormal around 5 KB, a few 1-5 MiB
attachments, 2% of names without `,S=`) are generated once and reused while
the parameters stay the same (a marker file records them). Each measurement
alternates with `du -sb` on the same tree, after a warm-up of both, so that
neither benefits from the other's cache state. Three measurements, with goals
for the median ratio scanner/du:

  full         the exact full scan (stat of every file)          <= 1.0
  incremental  a rescan after 1% of the cur/ and new/ folders
               got a new message, with the cache of earlier scans  <= 0.2
  trusted      the full scan with trust_filename_sizes = true     <= 0.7

Totals are checked on every round: each incremental scan against a full scan
of the same tree, and the full scan's bytes and files against GNU find.
Messages delivered by the benchmark are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# Neither tests/ nor bench/ is an installed package: the generator is shared
# with the tests, the timing and the oracle with the other benchmark.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import find_totals, format_runs, timed
from scanners.base import Measurement, ScanContext, ScanItem
from scanners.maildir import MaildirScanner
from tests.maildirs import deliver, generate_tree, member_names, message_dirs

MARKER = ".quotad-bench-maildir.json"
LAYOUT_VERSION = 1
CHANGED_FRACTION = 0.01

Result = dict[str, Measurement]


def main() -> int:
    """Generate (or reuse) the mailboxes, time the three scans against du, check the totals."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=200, help="mailboxes in the tree")
    parser.add_argument("--messages", type=int, default=200_000, help="messages in all")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/quotad-bench-maildir"))
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each scan")
    parser.add_argument("--workers", type=int, default=None, help="scanner workers")
    parser.add_argument("--seed", type=int, default=1, help="layout seed")
    args = parser.parse_args()

    per_member = max(1, args.messages // args.members)
    ensure_tree(args.dir, args.members, per_member, args.seed)
    options: dict[str, object] = {"path": f"{args.dir}/{{member}}/Maildir"}
    if args.workers is not None:
        options["workers"] = args.workers
    exact = MaildirScanner.from_options("bench", options, Path.cwd())
    trusted = MaildirScanner.from_options(
        "bench", {**options, "trust_filename_sizes": True}, Path.cwd()
    )
    print(
        f"maildirs: {args.dir} ({args.members} members x {per_member} messages); "
        f"scanner workers: {exact.workers}"
    )
    ok = True
    with tempfile.TemporaryDirectory(prefix="quotad-bench-state-") as state:
        du = du_runner(args.dir)
        full_result = scan(exact, ScanContext(full=True, state_dir=Path(state)))  # warm-up
        du()
        ok &= check_totals(full_result, args.dir)

        def full_scan() -> None:
            scan(exact, ScanContext(full=True, state_dir=Path(state)))

        report("full", compare(full_scan, du, args.repeat), goal=1.0)

        times, incremental_ok = incremental(exact, Path(state), args, du)
        report("incremental", times, goal=0.2)
        ok &= incremental_ok

        trusted_results: list[Result] = []

        def trusted_scan() -> None:
            trusted_results.append(scan(trusted, ScanContext(full=True)))

        report("trusted", compare(trusted_scan, du, args.repeat), goal=0.7)
        ok &= same_messages(trusted_results[-1], scan(exact, ScanContext(full=True)), "trusted")
    return 0 if ok else 1


def scan(scanner: MaildirScanner, context: ScanContext) -> Result:
    """Every mailbox's measurement; a failed one stops the benchmark."""
    items: list[ScanItem] = list(scanner.scan(None, context))
    result = {}
    for item in items:
        if not isinstance(item, Measurement):
            raise SystemExit(f"failure: {item.name}: {item.error}")
        result[item.name] = item
    return result


def du_runner(root: Path) -> Callable[[], None]:
    def run_du() -> None:
        subprocess.run(["du", "-sb", str(root)], check=True, stdout=subprocess.DEVNULL)

    return run_du


def compare(
    run: Callable[[], None], du: Callable[[], None], repeat: int
) -> tuple[list[float], list[float]]:
    """RUN and du timed alternately, REPEAT times each."""
    run_times: list[float] = []
    du_times: list[float] = []
    for _ in range(repeat):
        run_times.append(timed(run))
        du_times.append(timed(du))
    return run_times, du_times


def incremental(
    scanner: MaildirScanner, state: Path, args: argparse.Namespace, du: Callable[[], None]
) -> tuple[tuple[list[float], list[float]], bool]:
    """Rounds of: 1% of the message folders get a message, then a timed rescan with the cache."""
    roots = [args.dir / member / "Maildir" for member in member_names(args.members)]
    folders = [folder for root in roots for folder in message_dirs(root)]
    changed = max(1, round(len(folders) * CHANGED_FRACTION))
    rng = random.Random(time.time_ns())  # a crash's leftovers never collide with new names
    scan_times: list[float] = []
    du_times: list[float] = []
    ok = True
    relisted: list[int] = []
    with delivered_messages() as delivered:
        for round_number in range(args.repeat):
            # What changed before is remembered only once older than the settle
            # time, as between real scans hours apart; this rescan is not timed.
            time.sleep(scanner.settle_ns / 1e9 + 0.1)
            scan(scanner, ScanContext(full=False, state_dir=state))
            for folder in rng.sample(folders, changed):
                delivered.append(deliver(folder, rng, serial=len(delivered)))
            start = time.perf_counter()
            result = scan(scanner, ScanContext(full=False, state_dir=state))
            scan_times.append(time.perf_counter() - start)
            du_times.append(timed(du))
            relisted.append(scanner.last_relisted)
            if scanner.last_full:
                print(f"round {round_number}: the scanner did a full scan, not an incremental one")
                ok = False
            full = scan(scanner, ScanContext(full=True))
            if result != full:
                print(f"MISMATCH: round {round_number}: incremental differs from a full scan")
                ok = False
            ok &= check_totals(full, args.dir)
        print(
            f"incremental: {changed} of {len(folders)} message folders changed per round; "
            f"folders listed again: {' '.join(map(str, relisted))}"
        )
    return (scan_times, du_times), ok


@contextmanager
def delivered_messages() -> Iterator[list[Path]]:
    """A list to record deliveries in; they are removed again at the end, whatever happens."""
    paths: list[Path] = []
    try:
        yield paths
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


def report(name: str, times: tuple[list[float], list[float]], goal: float) -> None:
    scanner_times, du_times = times
    scanner_median = statistics.median(scanner_times)
    du_median = statistics.median(du_times)
    print(f"{name}: median {scanner_median:.3f}s  runs {format_runs(scanner_times)}")
    print(f"{' ' * len(name)}  du -sb median {du_median:.3f}s  runs {format_runs(du_times)}")
    print(
        f"{' ' * len(name)}  ratio scanner/du: {scanner_median / du_median:.2f} "
        f"(goal <= {goal:.2f})"
    )


def same_messages(got: Result, want: Result, label: str) -> bool:
    """Whether GOT reports the same messages as WANT for every mailbox; print if not."""
    mismatched = [name for name in want if name not in got or got[name].detail != want[name].detail]
    if mismatched or set(got) != set(want):
        print(f"MISMATCH: {label} messages differ for {', '.join(mismatched[:5])}")
        return False
    return True


def check_totals(result: Result, root: Path) -> bool:
    """Compare a full scan with GNU find's view of the same tree; print OK or MISMATCH."""
    scanned = {name: (m.bytes, m.files) for name, m in result.items()}
    expected = find_totals(root)
    ok = scanned == expected
    messages = sum(int(m.detail["messages"]) for m in result.values())
    print(
        f"total bytes: scanner {sum(b for b, _ in scanned.values())}, "
        f"find {sum(b for b, _ in expected.values())}; "
        f"files: scanner {sum(f for _, f in scanned.values())}, "
        f"find {sum(f for _, f in expected.values())}; "
        f"messages {messages}: {'OK' if ok else 'MISMATCH'}"
    )
    return ok


def ensure_tree(root: Path, members: int, per_member: int, seed: int) -> None:
    """Generate the mailboxes under ROOT unless the marker says they already match."""
    params = {"members": members, "per_member": per_member, "seed": seed, "layout": LAYOUT_VERSION}
    marker = root / MARKER
    try:
        if json.loads(marker.read_text()) == params:
            return
    except (OSError, ValueError):
        pass
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    print(f"generating {members} x {per_member} messages under {root} ...", flush=True)
    start = time.perf_counter()
    generate_tree(root, members, per_member, seed)
    marker.write_text(json.dumps(params))
    print(f"generated in {time.perf_counter() - start:.1f}s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
