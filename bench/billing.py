"""Benchmark a month's statements for every member on a PostgreSQL ledger.

Usage: .venv/bin/python bench/billing.py [--members N] [--days D] [--runs R] [--check K]

A scratch database (dropped at the end, on Ctrl-C and on failure too) is
migrated by quotad and loaded with COPY: MEMBERS members, each with 4
resources (tree, maildir, postgres_database, mysql_database, one per source)
measured every 6 hours for the first DAYS days of 2026-10, plus one carry-in
sample per resource late in September; one scan row per source per slot. A
few members join or leave during the month, one was created in quotad during
it without a join date, a few resources vanish for a while (present = false,
0 bytes), and two members' trees are near 2**53 bytes, where bytes x
microseconds no longer fits a bigint.

Timed, alternating, R runs each, medians compared: quotad's
BillingService.statements() for 2026-10 (every member's draft, in a read
session), against one SQL aggregate over the same samples (the period's
bytes summed per member and kind, every row fetched). Goal: quotad takes at
most 2 times the aggregate.

Checked once: K members' statements (those with the edge cases above, and
some at random) against a plain Python integration of their own samples,
with the benchmark's single plan and again with a plan change mid-month.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg
from sqlalchemy import Engine, text

# bench/ is not an installed package: the timing is shared with the other benchmarks.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.api import without_secondary_indexes
from bench.common import format_runs, scratch_database
from quotad import migrate
from quotad.billing.arithmetic import Period, charge, decimal_text, round_money, segments
from quotad.billing.repository import BillingRepository
from quotad.billing.service import BillingService, StatementDoc
from quotad.config import BillingSettings, RatePlan
from quotad.db import make_engine, session_scope
from quotad.retention.repository import PartitionRepository

GOAL = 2.0
PERIOD = Period(2026, 10)
NOW = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)
SLOT = dt.timedelta(hours=6)
SLOTS_PER_DAY = 4
GIB = 2**30
MIB = 2**20
# (name, source kind, resource kind, size factor): one resource per member each.
SOURCES = (
    ("homes", "tree", "tree", 4),
    ("mail", "maildir", "maildir", 2),
    ("pg", "postgres", "postgres_database", 1),
    ("mysql", "mysql", "mysql_database", 1),
)
CREATED = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
CARRY_IN = dt.datetime(2026, 9, 28, 3, tzinfo=dt.UTC)
JOINED = dt.datetime(2026, 10, 5, 13, 0, 0, 250000, tzinfo=dt.UTC)
LEFT = dt.datetime(2026, 10, 17, 9, 30, tzinfo=dt.UTC)
CREATED_LATE = dt.datetime(2026, 10, 10, 8, tzinfo=dt.UTC)
HUGE = 2**53 - 12345
BILLING = BillingSettings(currency="USD", free_bytes=10 * GIB, price_per_gib_month=Decimal("0.10"))
# The same, with a second plan from mid-month with a price per kind: the
# check covers usage cut at a plan's start too.
BILLING_CHANGED = BillingSettings(
    currency="USD",
    free_bytes=10 * GIB,
    price_per_gib_month=Decimal("0.10"),
    changes=(
        RatePlan(
            dt.datetime(2026, 10, 16, 12, tzinfo=dt.UTC),
            20 * GIB,
            Decimal("0.08"),
            {"maildir": Decimal("0.25")},
        ),
    ),
)
BASELINE = """
SELECT s.member_id, r.kind, sum(s.bytes)
FROM usage_samples s JOIN resources r ON r.id = s.resource_id
WHERE s.measured_at >= :p0 AND s.measured_at < :p1
GROUP BY 1, 2
"""


# (slot, source id, scan id, finished_at): slot -1 is the carry-in.
ScanRow = tuple[int, int, uuid.UUID, dt.datetime]


@dataclass(frozen=True)
class Sizes:
    members: int
    days: int
    runs: int
    check: int


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=10_000, help="members (default 10,000)")
    parser.add_argument("--days", type=int, default=31, help="days of 2026-10 measured (1-31)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each (default 5)")
    parser.add_argument("--check", type=int, default=12, help="members checked (default 12)")
    args = parser.parse_args()
    if not 1 <= args.days <= 31 or args.members < 1 or args.runs < 1:
        parser.error("--days must be 1 to 31, --members and --runs at least 1")
    sizes = Sizes(args.members, args.days, args.runs, max(0, args.check))
    with scratch_database("billing") as url:
        return run(sizes, url)


def run(sizes: Sizes, url: str) -> int:
    engine = make_engine(url)
    try:
        migrate.upgrade_engine(engine)
        # The benchmark's months get their partitions, as in a ledger filled
        # as time went by (a no-op where usage_samples is not partitioned).
        with session_scope(engine, write=True) as session:
            PartitionRepository(session).ensure_partitions(CARRY_IN, ahead=1)
        dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        load(dsn, sizes)
        docs = measure(engine, sizes)
        ok = check(dsn, sizes, docs, BILLING)
        changed = statements(engine, BILLING_CHANGED)
        ok &= check(dsn, sizes, changed, BILLING_CHANGED)
    finally:
        engine.dispose()
    return 0 if ok else 1


# Loading


def bytes_of(member: int, source: int, slot: int) -> int:
    """A resource's size at SLOT (-1: the carry-in): varied, growing, now and then gone."""
    if source == 1 and member <= 2:
        return HUGE - slot * 7919 - member
    if source == 4 and member % 37 == 0 and 40 <= slot < 60:
        return 0
    base = ((member * 2654435761 + source * 40503) % 2000 + 1) * MIB * SOURCES[source - 1][3]
    return base + base * slot // 500 + ((member * 31 + slot * 17) % 1000) * 1024 + member % 7


def slot_times(days: int) -> list[dt.datetime]:
    return [PERIOD.start + k * SLOT for k in range(days * SLOTS_PER_DAY)]


def naive(at: dt.datetime | None) -> Any:
    """The ledger's columns hold naive UTC (quotad.db.UTCDateTime)."""
    return None if at is None else at.astimezone(dt.UTC).replace(tzinfo=None)


def load(dsn: str, sizes: Sizes) -> None:
    """Write the ledger with COPY, the samples with their indexes and keys built afterwards."""
    started = time.perf_counter()
    members = sizes.members
    # Slot -1 is the carry-in. Source s's scan starts 7 minutes after source
    # s - 1's and runs for a while, so that no two spans are alike (as in a
    # real ledger, where a scan ends when it is done).
    rng = random.Random(2026)
    slots = [(-1, CARRY_IN), *enumerate(slot_times(sizes.days))]
    scans: list[ScanRow] = [
        (
            slot,
            s,
            uuid.UUID(int=rng.getrandbits(128), version=4),
            naive(at + dt.timedelta(minutes=7 * s, microseconds=rng.randrange(900_000_000))),
        )
        for slot, at in slots
        for s in range(1, len(SOURCES) + 1)
    ]
    with psycopg.connect(dsn) as conn, conn.cursor() as cursor:
        with cursor.copy(
            "COPY members (id, name, email, joined_at, left_at, created_at) FROM STDIN"
        ) as copy:
            for m in range(1, members + 1):
                joined = JOINED if m % 100 == 50 else None
                left = LEFT if m % 100 == 0 else None
                created = CREATED_LATE if m % 1000 == 7 else CREATED
                copy.write_row((m, f"u{m:06d}", None, naive(joined), naive(left), naive(created)))
        with cursor.copy("COPY sources (id, name, kind, created_at) FROM STDIN") as copy:
            for s, (name, kind, _, _) in enumerate(SOURCES, start=1):
                copy.write_row((s, name, kind, naive(CREATED)))
        # Resource id (s - 1) * members + m is member m's resource in source s.
        with cursor.copy(
            "COPY resources (id, source_id, kind, name, created_at) FROM STDIN"
        ) as copy:
            for s, (_, _, kind, _) in enumerate(SOURCES, start=1):
                for m in range(1, members + 1):
                    copy.write_row(((s - 1) * members + m, s, kind, f"u{m:06d}", naive(CREATED)))
        with cursor.copy(
            "COPY scans (id, source_id, started_at, finished_at, status, error, digest, "
            "measurements, failures, recorded_at) FROM STDIN"
        ) as copy:
            for _, s, scan_id, at in scans:
                copy.write_row(
                    (
                        scan_id,
                        s,
                        at - dt.timedelta(minutes=5),
                        at,
                        "complete",
                        None,
                        uuid.uuid5(scan_id, "digest").hex * 2,
                        members,
                        0,
                        at + dt.timedelta(seconds=2),
                    )
                )
        copied = time.perf_counter()
        with without_secondary_indexes(conn, "usage_samples"):
            with cursor.copy(
                "COPY usage_samples (id, scan_id, resource_id, member_id, measured_at, bytes, "
                "files, present, detail) FROM STDIN"
            ) as copy:
                next_id = 1
                for scan in scans:
                    copy.write(sample_lines(next_id, scan, members))
                    next_id += members
            copied = time.perf_counter() - copied
            indexed = time.perf_counter()
        indexed = time.perf_counter() - indexed
        for table in ("members", "resources", "usage_samples"):
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT max(id) FROM {table}))"
            )
        conn.commit()
    analyzed = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        # VACUUM as autovacuum would by billing time: the visibility map lets
        # the covering indexes answer without the table.
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")
        count = conn.execute("SELECT count(*) FROM usage_samples").fetchone()
        size = conn.execute(
            "SELECT pg_size_pretty(sum(pg_total_relation_size(relid)))"
            " FROM pg_partition_tree('usage_samples')"
        )
        pretty = size.fetchone()
    analyzed = time.perf_counter() - analyzed
    total = time.perf_counter() - started
    print(
        f"ledger: {members} members x {len(SOURCES)} resources x "
        f"{sizes.days * SLOTS_PER_DAY} samples in {PERIOD} + 1 carry-in = "
        f"{count[0] if count else 0} usage samples ({pretty[0] if pretty else '?'} with indexes), "
        f"{len(scans)} scans; loaded in {total:.1f}s (samples COPY {copied:.1f}s, "
        f"indexes and keys {indexed:.1f}s, VACUUM ANALYZE {analyzed:.1f}s)",
        flush=True,
    )


def sample_lines(first_id: int, scan: ScanRow, members: int) -> bytes:
    """One scan's usage_samples rows in COPY's text format."""
    slot, source, scan_id, at = scan
    resource = (source - 1) * members
    stamp = at.isoformat(sep=" ")
    lines = []
    for m in range(1, members + 1):
        size = bytes_of(m, source, slot)
        present = "t" if size else "f"
        lines.append(
            f"{first_id + m - 1}\t{scan_id}\t{resource + m}\t{m}\t{stamp}\t{size}\t"
            f"{size // 65536 + 1 if size else 0}\t{present}\t\\N\n"
        )
    return "".join(lines).encode()


# Timing


def statements(engine: Engine, billing: BillingSettings) -> list[StatementDoc]:
    with session_scope(engine) as session:
        return BillingService(session, billing, now=NOW).statements(PERIOD)


def baseline(engine: Engine) -> list[Any]:
    params = {"p0": PERIOD.start.replace(tzinfo=None), "p1": PERIOD.end.replace(tzinfo=None)}
    with session_scope(engine) as session:
        return list(session.execute(text(BASELINE), params).all())


def measure(engine: Engine, sizes: Sizes) -> list[StatementDoc]:
    """Time both in alternating order; returns quotad's last statements."""
    integration: list[float] = []
    original = BillingRepository.usage_in_database

    def usage_timed(repo: BillingRepository, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(repo, *args, **kwargs)
        finally:
            integration.append(time.perf_counter() - start)

    def quotad_run() -> list[StatementDoc]:
        with mock.patch.object(BillingRepository, "usage_in_database", usage_timed):
            return statements(engine, BILLING)

    docs = quotad_run()  # warm-up, for both: caches, plans, connections
    rows = baseline(engine)
    integration.clear()
    quotad_times: list[float] = []
    baseline_times: list[float] = []
    for run_ in range(sizes.runs):
        for which in ("quotad", "baseline") if run_ % 2 == 0 else ("baseline", "quotad"):
            start = time.perf_counter()
            if which == "quotad":
                docs = quotad_run()
                quotad_times.append(time.perf_counter() - start)
            else:
                rows = baseline(engine)
                baseline_times.append(time.perf_counter() - start)
    quotad_median = statistics.median(quotad_times)
    baseline_median = statistics.median(baseline_times)
    sql_median = statistics.median(integration)
    print(f"statements for {PERIOD}, {len(docs)} members; one aggregate: {len(rows)} rows")
    print(
        f"quotad statements():        median {quotad_median:.3f}s  runs {format_runs(quotad_times)}"
    )
    print(
        f"  of which usage_in_database: median {sql_median:.3f}s  runs {format_runs(integration)}"
    )
    print(
        f"baseline, one aggregate:    median {baseline_median:.3f}s  "
        f"runs {format_runs(baseline_times)}"
    )
    print(f"ratio quotad/baseline: {quotad_median / baseline_median:.2f} (goal <= {GOAL:.2f})")
    return docs


# Checking


def checked_members(sizes: Sizes) -> list[int]:
    """The edge cases first (huge trees, gaps, joined, left, created late), then at random."""
    n = sizes.members
    special = [1, 2, 37, 50, 100, 7, n]
    rest = random.Random(2026).sample(range(1, n + 1), min(n, sizes.check))
    chosen = list(dict.fromkeys(m for m in [*special, *rest] if m <= n))
    return chosen[: max(sizes.check, 0)]


def check(dsn: str, sizes: Sizes, docs: Sequence[StatementDoc], billing: BillingSettings) -> bool:
    """Each checked member's statement equals one from a plain integration of their samples."""
    by_name = {doc.member: doc for doc in docs}
    chosen = checked_members(sizes)
    bad = []
    with psycopg.connect(dsn) as conn:
        for m in chosen:
            name = f"u{m:06d}"
            want = expected(conn, m, billing)
            got = by_name.get(name)
            got_figures = None if got is None else figures_of(got.body)
            if got_figures != want:
                bad.append(name)
                print(f"MISMATCH {name}: statement {got_figures}, plain integration {want}")
    plans = len(billing.plans)
    print(
        f"check ({plans} plan{'s' if plans > 1 else ''}): {len(chosen) - len(bad)} of "
        f"{len(chosen)} members' statements equal a plain integration of their samples"
    )
    return not bad


def figures_of(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the check compares: every figure of the statement but its dates."""
    keys = ("average_bytes", "free_bytes", "billable_gib_months", "amount", "lines")
    figures = {k: body[k] for k in keys}
    figures["charges"] = [(c["kind"], c["average_bytes"], c["free_bytes"]) for c in body["charges"]]
    return figures


def expected(conn: psycopg.Connection[Any], member: int, billing: BillingSettings) -> Any:
    """MEMBER's figures from their samples, integrated step by step in Python."""
    p0 = PERIOD.start.replace(tzinfo=None)
    p1 = PERIOD.end.replace(tzinfo=None)
    row = conn.execute(
        "SELECT joined_at, left_at, created_at FROM members WHERE id = %s", (member,)
    ).fetchone()
    assert row is not None
    joined, left, created = row
    samples = conn.execute(
        """
        SELECT s.resource_id, s.member_id, r.kind, s.measured_at, s.bytes, s.id
        FROM usage_samples s JOIN resources r ON r.id = s.resource_id
        WHERE s.resource_id IN (SELECT resource_id FROM usage_samples WHERE member_id = %s)
        """,
        (member,),
    ).fetchall()
    if joined is None:
        first = min((at for _, who, _, at, _, _ in samples if who == member), default=created)
        joined = min(created, first)
    start = max(joined, p0)
    end = min(left or p1, p1)
    if start >= end:
        return None
    utc = dt.UTC
    cuts = segments(PERIOD, billing.plans, start.replace(tzinfo=utc), end.replace(tzinfo=utc))
    usage: dict[tuple[int, str], int] = {}
    by_resource: dict[int, list[tuple[Any, ...]]] = {}
    for sample in samples:
        by_resource.setdefault(sample[0], []).append(sample)
    for rows in by_resource.values():
        rows.sort(key=lambda r: (r[3], r[5]))
        for i, (_, who, kind, at, size, _) in enumerate(rows):
            until = rows[i + 1][3] if i + 1 < len(rows) else p1
            if who != member:
                continue
            for seg in cuts:
                lo = max(at, p0, seg.start.replace(tzinfo=None))
                hi = min(until, p1, seg.end.replace(tzinfo=None))
                if lo < hi:
                    key = (seg.plan_index, kind)
                    span = hi - lo
                    usage[key] = usage.get(key, 0) + size * (
                        (span.days * 86400 + span.seconds) * 1_000_000 + span.microseconds
                    )
    # The integration above is the check; the pricing is quotad's own.
    figures = charge(PERIOD, cuts, usage, billing.currency)
    return {
        "average_bytes": figures.average_bytes,
        "free_bytes": figures.free_bytes,
        "billable_gib_months": decimal_text(figures.billable_gib_months),
        "amount": format(round_money(figures.usage_amount, billing.currency), "f"),
        "lines": [{"kind": k, "average_bytes": v} for k, v in figures.lines.items()],
        "charges": [(c.kind, c.average_bytes, c.free_bytes) for c in figures.charges],
    }


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; the scratch database is gone", file=sys.stderr)
        sys.exit(130)
